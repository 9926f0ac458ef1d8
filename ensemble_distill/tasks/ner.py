"""NER as a task: corpora → encoder windows → frozen states → batches → distributions; tagger folders; NerTask.

    data = load_tagging_data(cfg)                       # train/dev/test, tokenised, frozen states computed once
    model = new_tagger(data, cfg, seed=0)               # a fresh member: pretrained top layers + a new head
    train_tagger(model, data, train_windows, ("train", held_out_windows), cfg.train, run_dir)
    per_sentence = predict_distributions([model], data.splits["test"])    # an ensemble is a list of models
    tagger = load_model("runs/conll-iid/students/student-3")    # a TaggerFolder: tags lists of words on its own
"""

import copy
import dataclasses
import functools
import hashlib
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..calibration.task_metrics import span_counts, span_scores
from ..config import N_TENTHS, DistillConfig, TaggingConfig, Training, require_data_files, require_device
from ..data.conll import TaggedCorpus, label_vocab, read_conll, tag_corpus
from ..data.subwords import Window, bucketed_batches, encode_sentences, load_tokenizer, merge_windows
from ..distill.losses import distillation_loss
from ..distill.memoize import Truncation
from ..distributed import on_main
from ..encoders import (
    EncoderTop,
    FrozenStates,
    compute_frozen_states,
    encoder_fingerprint,
    encoder_layers,
    load_pretrained,
    resolve_encoder,
    split_encoder,
    token_ids_fingerprint,
)
from ..ensemble import (
    MemberPlan,
    distillation_sentences,
    member_sentences,
    record_snapshots,
    snapshot_dirs,
    warm_start_config,
)
from ..errors import UserError, counted
from ..io_utils import atomic_torch_save, cache_root, read_json, sha256_file
from ..models.tagger import Tagger
from ..predictions import Predictions, predicted_labels
from ..runs import RESULT, finished, load_state, load_weights, read_model_spec, save_model, write_result
from ..tables import Column
from ..teacher_store import TeacherStore, fingerprint_dataset
from ..training import (
    StochasticWeightAveraging,
    TrainResult,
    make_optimizer,
    make_scheduler,
    train,
    train_cycles,
)
from .ner_batches import is_single_crf, tagger_emissions, tagging_predictions, window_batch


@dataclass
class TaggingSplit:
    """A split ready for a tagger: its corpus (gold tag ids; None for unlabelled text), its encoder windows and
    the frozen layers' outputs of every window."""
    corpus: TaggedCorpus | None
    windows: list[Window]
    frozen: FrozenStates

    def windows_of(self, sentences) -> np.ndarray:
        """Indices of the windows that belong to the given sentences."""
        owner = np.array([w.sentence for w in self.windows])
        return np.flatnonzero(np.isin(owner, np.asarray(sentences)))


@dataclass
class TaggingData:
    """The splits of a config's files ready for taggers that tune the encoder's top `cfg.encoder.finetune_layers`
    layers over the frozen states of the layers below; `with_layers` gives the same data for another cut."""
    labels: list[str]
    splits: dict[str, TaggingSplit]
    top: EncoderTop  # the pretrained top layers; each member fine-tunes its own copy
    pad_id: int
    encoder_path: Path
    cfg: TaggingConfig
    _other_cuts: dict = dataclasses.field(default_factory=dict, repr=False)

    def with_layers(self, finetune_layers: int) -> "TaggingData":
        """This data for taggers that tune `finetune_layers` top layers (a student may tune more than its
        teachers): the same sentences, windows and labels, the frozen states of the other cut (computed once, and
        cached on disk as any run's). Raises UserError for more layers than the encoder has."""
        if finetune_layers == self.cfg.encoder.finetune_layers:
            return self
        if finetune_layers not in self._other_cuts:
            cfg = dataclasses.replace(self.cfg, encoder=dataclasses.replace(self.cfg.encoder,
                                                                            finetune_layers=finetune_layers))
            # the config's splits this data holds (a file added for `predict` is not the config's)
            other = load_tagging_data(cfg, tuple(n for n in self.splits if n in ("train", "dev", "test")),
                                      progress=False)
            if other.labels != self.labels:  # the same files: only a change on disk since could differ
                raise UserError(f"{cfg.data.train}: its label set changed while the run was open")
            self._other_cuts[finetune_layers] = other
        return self._other_cuts[finetune_layers]

    def for_models(self, models: list[Tagger]) -> "TaggingData":
        """`with_layers` of the models' cut. Raises ValueError for models of different cuts (their frozen states
        differ, so they cannot share a batch)."""
        cuts = {len(m.top.layers) for m in models}
        if len(cuts) != 1:
            raise ValueError(f"models tuning different numbers of encoder layers ({sorted(cuts)}) cannot share "
                             "frozen states; predict them apart")
        return self.with_layers(cuts.pop())


def load_tagging_data(cfg: TaggingConfig, splits=("train", "dev", "test"), progress: bool = True,
                      extra_files: dict | None = None) -> TaggingData:
    """Read, tokenise and run the frozen encoder layers over the configured files, once for all members.

    extra_files: {name: path} of further files (same column layout) to prepare as splits, e.g. for `predict`.
    """
    d = cfg.data
    require_data_files(d, dict.fromkeys(("train", *splits)))
    encoder = _EncoderParts(cfg)
    train_sentences = _sample(_read(d, d.train), d.max_train_sentences)
    labels = label_vocab(train_sentences)
    out = {}
    for name in splits:
        path = getattr(d, name)
        sentences = train_sentences if name == "train" else _sample(_read(d, path), d.max_eval_sentences)
        out[name] = encoder.prepare(path, sentences, labels, progress)
    for name, path in (extra_files or {}).items():
        out[name] = encoder.prepare(path, _read(d, path), labels, progress)
    return TaggingData(labels, out, encoder.top, encoder.tokenizer.pad_token_id, encoder.path, cfg)


def _read(d, path) -> list:
    """A CoNLL file read with the config's `data` settings (column layout, scheme, encoding, comments, prefix)."""
    return read_conll(path, d.token_col, d.tag_col, d.scheme, encoding=d.encoding, comment_prefix=d.comment_prefix,
                      token_prefix=d.token_prefix)


class _EncoderParts:
    def __init__(self, cfg: TaggingConfig):
        self.cfg = cfg
        self.path = resolve_encoder(cfg.encoder.name)
        self.tokenizer, self.max_length = load_tokenizer(self.path)
        self.bottom, self.top = split_encoder(load_pretrained(self.path), cfg.encoder.finetune_layers)
        self.fingerprint = encoder_fingerprint(self.path, cfg.encoder.finetune_layers)

    def prepare(self, path, sentences, labels, progress) -> TaggingSplit:
        limit = self.cfg.data.max_train_sentences  # a sample's labels can lack a tag the whole file has
        training = (f"the {counted(limit, 'training sentence')} that data.max_train_sentences samples" if limit
                    else "the training data")
        corpus = tag_corpus(path, sentences, labels, self.cfg.data.unknown_tag, training=training)
        windows = encode_sentences(self.tokenizer, [s.tokens for s in sentences], self.max_length, corpus.tag_ids)
        ids = [w.input_ids for w in windows]
        folder = Path(self.cfg.encoder.cache_dir) if self.cfg.encoder.cache_dir else cache_root() / "frozen"
        cache = folder / f"frozen-{self.fingerprint}-{token_ids_fingerprint(ids)}.pt"
        return TaggingSplit(corpus, windows, compute_frozen_states(self.bottom, ids, cache_file=cache,
                                                                   progress=progress))


def _sample(sentences: list, limit: int) -> list:
    """A seeded sample of `limit` sentences in file order (0: all), for CPU-scale runs."""
    if not limit or limit >= len(sentences):
        return sentences
    keep = sorted(random.Random(0).sample(range(len(sentences)), limit))
    return [sentences[i] for i in keep]


def new_tagger(data: TaggingData, cfg: TaggingConfig, seed: int) -> Tagger:
    """A fresh tagger on `train.device`: a copy of the pretrained top layers and a new head, initialised from
    `seed` (the global torch RNG is seeded). Raises UserError for train.device = "cuda" without a GPU."""
    device = _device(cfg)
    data = data.with_layers(cfg.encoder.finetune_layers)
    torch.manual_seed(seed)
    return Tagger(copy.deepcopy(data.top), len(data.labels), cfg.model.head, cfg.model.lstm_hidden,
                  cfg.model.dropout).to(device)


def tagger_loss(model: Tagger, batch: dict, label_smoothing: float = 0.0):
    """(the batch's mean loss, its words): Tagger.loss against the gold labels, smoothed by `label_smoothing`."""
    emissions = tagger_emissions(model, batch)
    loss = model.loss(emissions, batch["word_labels"], batch["word_mask"], label_smoothing)
    return loss, int(batch["word_mask"].sum())


def predict_distributions(models: list[Tagger], split: TaggingSplit, window_ids=None, pad_id: int = 0,
                          batch_size: int = 64, progress: bool = False) -> list[np.ndarray]:
    """Per-sentence [words, labels] distributions: the uniform mean of the models' per-word distributions.

    Each batch's frozen states are read once and shared by every member; an ensemble of one is a single model.
    """
    return _predict(models, split, window_ids, pad_id, batch_size, progress, viterbi=False)[0]


def predict_scored(models: list[Tagger], split: TaggingSplit, window_ids=None, pad_id: int = 0,
                   batch_size: int = 64, progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """What the models are scored by, in one pass: per sentence the [words, labels] float32 distributions
    (`predict_distributions`) and, for a single CRF model, its int64 [words] Viterbi path, else None.

    Decoding rule (paper §3.1 and its reference code): a single CRF tags with its best path (Viterbi), while its
    confidences stay its marginals; an ensemble, of CRFs too, tags with the argmax of its mean marginals, and an IID
    model with its argmax (None: predictions.predicted_labels of the distributions). A sentence longer than one
    encoder window takes each word's label from the Viterbi path of the window that owns it, as its marginals."""
    return _predict(models, split, window_ids, pad_id, batch_size, progress, viterbi=is_single_crf(models))


def _predict(models, split, window_ids, pad_id, batch_size, progress, viterbi: bool):
    window_ids = np.arange(len(split.windows)) if window_ids is None else np.asarray(window_ids)
    lengths = [len(split.windows[i].input_ids) for i in window_ids]
    outputs = [None] * len(window_ids)
    paths = [None] * len(window_ids)
    device = next(models[0].parameters()).device
    for model in models:
        model.eval()
    with torch.no_grad():
        for chunk in tqdm(bucketed_batches(lengths, batch_size), desc="predict", unit="batch", disable=not progress,
                          leave=False):
            batch = window_batch(split, window_ids[chunk], pad_id, device)
            emissions = [tagger_emissions(m, batch) for m in models]
            mean = sum(m.distributions(e, batch["word_mask"]) for m, e in zip(models, emissions))
            mean = (mean / len(models)).cpu()
            best = models[0].crf.viterbi(emissions[0], batch["word_mask"]).cpu() if viterbi else None
            n_words = batch["word_mask"].sum(1).tolist()
            for row, position in enumerate(chunk):
                outputs[position] = mean[row, : n_words[row]].numpy()
                if viterbi:
                    paths[position] = best[row, : n_words[row]].numpy()
    windows = [split.windows[i] for i in window_ids]
    return merge_windows(windows, outputs), merge_windows(windows, paths) if viterbi else None


def held_out_f1(models: list[Tagger], split: TaggingSplit, window_ids, pad_id: int, labels: list[str]) -> float:
    """Span F1 (seqeval, strict IOB2) of the labels the models are scored by (`predict_scored`: a single CRF's
    Viterbi path, else the most probable labels, ties broken by name) on the given windows' sentences; 0 when it
    is undefined (no gold and no predicted span), as seqeval scores it."""
    distributions, paths = predict_scored(models, split, window_ids, pad_id)
    sentences = sorted({split.windows[i].sentence for i in window_ids})
    names = np.asarray(labels)
    gold = [names[split.corpus.tag_ids[s]].tolist() for s in sentences]
    pred = [names[p].tolist() for p in paths] if paths is not None else [
        names[predicted_labels(d, names)].tolist() for d in distributions]
    f1 = span_scores(span_counts(gold, pred))["f1"]
    return 0.0 if np.isnan(f1) else f1


def train_tagger(model: Tagger, data: TaggingData, train_windows, held_out: tuple[str, np.ndarray], cfg: Training,
                 run_dir, progress: bool = True, after_epoch=None, loss_fn=tagger_loss) -> TrainResult:
    """Train one tagger on `train_windows` of the training split, early-stopping on span F1 of `held_out`
    (a split name and window ids in it). Batches carry their window ids ("windows") for losses that need them,
    such as distillation's."""
    batches, updates_per_epoch = epoch_batches(data, train_windows, cfg.batch_size, cfg.seed,
                                               next(model.parameters()).device)
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg, updates_per_epoch)
    if cfg.averaging == "swa":
        scheduler = StochasticWeightAveraging(model, optimizer, updates_per_epoch, cfg.swa_start, cfg.swa_lr,
                                              cfg.swa_anneal_updates, base=scheduler)
    result = train(model, batches, loss_fn, held_out_score(data, held_out), cfg, run_dir, progress, after_epoch,
                   optimizer, scheduler, units=loss_units(model))
    if result.best_score == 0:  # its tables would read F1 0.00 beside calibration numbers that look like any other
        warnings.warn(f"{run_dir}: held-out span F1 0 in every epoch ({result.epochs_run} of them): the model finds no "
                      "entity; give it more epochs (train.max_epochs), data (data.max_train_sentences) or tuned "
                      "layers (encoder.finetune_layers)")
    if cfg.averaging == "swa" and scheduler.apply(model):  # else stopped before swa_start: the best epoch's
        on_main(atomic_torch_save, model.state_dict(), Path(run_dir) / SWA_WEIGHTS)
    return result


def epoch_batches(data: TaggingData, train_windows, batch_size: int, seed: int, device, epochs: int = 1,
                  skip: int = 0):
    """(batches, updates per data epoch): batches(e) for training.train, its epoch e (from 1) being data epochs
    skip + (e - 1) x epochs + 1 .. skip + e x epochs over `train_windows` of the training split, data epoch d's
    batches bucketed by length and shuffled with seed (seed x 1000 + d). So a training continued after `skip`
    epochs (a snapshot ensemble's cycles, `epochs` data epochs each) sees the order its start would have seen
    next. Each batch (ner_batches.window_batch on `device`) carries its window ids ("windows")."""
    split = data.splits["train"]
    train_windows = np.asarray(train_windows)
    lengths = np.array([len(split.windows[i].input_ids) for i in train_windows])

    def batches(epoch):
        for d in range(skip + (epoch - 1) * epochs + 1, skip + epoch * epochs + 1):
            for chunk in bucketed_batches(lengths, batch_size, shuffle=True, seed=seed * 1000 + d):
                yield {**window_batch(split, train_windows[chunk], data.pad_id, device),
                       "windows": train_windows[chunk]}

    return batches, len(bucketed_batches(lengths, batch_size))


def held_out_score(data: TaggingData, held_out: tuple[str, np.ndarray]):
    """score_fn(model) for training.train: span F1 (held_out_f1) of the windows `held_out` = (split, window ids)."""
    split, windows = data.splits[held_out[0]], held_out[1]
    return lambda model: held_out_f1([model], split, windows, data.pad_id, data.labels)


def loss_units(model: Tagger):
    """units(batch) for training.train: what a batch's loss is a mean over, its sentences (windows) for a CRF's
    per-sentence Tagger.loss, else its words (IID; students' per-word distillation loss)."""
    if model.head == "crf":
        return lambda batch: len(batch["windows"])
    return lambda batch: int(batch["word_mask"].sum())


def to_predictions(distributions: list[np.ndarray], split: TaggingSplit, labels: list[str], meta: dict,
                   paths: list[np.ndarray] | None = None) -> Predictions:
    """Per-sentence distributions of a split (of the sentences its windows cover) as the predictions format, gold
    from the corpus; `paths` (per sentence [words] label ids, a single CRF's Viterbi path: predict_scored) are
    stored as the predicted labels, else they are the distributions' argmax."""
    return tagging_predictions(distributions, _gold(split), labels, meta, paths)


# ----------------------------------------------------------------------------------------------------------------
# Model folders (runs.py): model.json and model.safetensors


@functools.cache
def encoder_weights_sha256(path: Path) -> str:
    """sha256 over the encoder folder's weights files (name and content): the encoder's identity in model.json,
    stable across installs (the frozen-cache fingerprint uses sizes and times, which are not)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")):
        h.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def model_spec(cfg: TaggingConfig, data: TaggingData, role: str, seed: int, **extra) -> dict:
    """What model.json records of a tagger: the head, the labels, and the encoder (name, folder, weights sha256,
    the number of fine-tuned top layers): enough to rebuild it with `load_model`."""
    m, e = cfg.model, cfg.encoder
    return {"task": "ner", "role": role, "seed": seed, "labels": list(data.labels),
            "model": {"head": m.head, "lstm_hidden": m.lstm_hidden, "dropout": m.dropout},
            "encoder": {"name": e.name, "path": str(data.encoder_path), "finetune_layers": e.finetune_layers,
                        "sha256": encoder_weights_sha256(Path(data.encoder_path))}, **extra}


@dataclass
class TaggerFolder:
    """A tagger rebuilt from its folder: the frozen encoder bottom, the tagger (top layers + head), the tokenizer
    and the label names. `distributions(sentences)` tags lists of words."""
    folder: Path
    spec: dict
    labels: list[str]
    tagger: Tagger
    bottom: torch.nn.Module
    tokenizer: object
    max_length: int
    encoder_path: Path

    def split(self, sentences: list[list[str]], tag_ids: list[np.ndarray] | None = None) -> TaggingSplit:
        """Windows and frozen states of `sentences` (nothing cached on disk); gold ids if given. Raises TypeError
        when `sentences` is not a list of lists of words (a sentence given as one string would be tagged
        character by character), ValueError for a blank word or a sentence without words."""
        _check_words(sentences)
        windows = encode_sentences(self.tokenizer, sentences, self.max_length, tag_ids)
        frozen = compute_frozen_states(self.bottom, [w.input_ids for w in windows], progress=False)
        return TaggingSplit(None, windows, frozen)

    def distributions(self, sentences: list[list[str]]) -> list[np.ndarray]:
        """Per sentence, [words, labels] float32 probabilities (CRF: marginals); [] for no sentences. Raises as
        `split`."""
        return predict_distributions([self.tagger], self.split(sentences)) if len(sentences) else []


def _check_words(sentences) -> None:
    if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)):
        raise TypeError(f"sentences must be a list of sentences, each a list of words; got {type(sentences).__name__}")
    for i, words in enumerate(sentences):
        if isinstance(words, str):
            raise TypeError(f"sentence {i} is a string, not a list of words: split it into words first (the "
                            "tagger labels words)")
        if not isinstance(words, (list, tuple)):
            raise TypeError(f"sentence {i} is of type {type(words).__name__}, not a list of words")
        for j, word in enumerate(words):
            if not isinstance(word, str):
                raise TypeError(f"sentence {i}, word {j} is {word!r}, not a string")
            if not word.strip():
                raise ValueError(f"sentence {i}, word {j} is blank: a word needs a character to be tagged")


def load_model(folder, spec: dict, device: str = "cpu") -> TaggerFolder:
    """Rebuild a tagger from model.json and model.safetensors: the encoder is found by its recorded name (a named
    encoder or a folder) and must have the recorded weights. Raises UserError when it cannot be found or differs."""
    folder, enc = Path(folder), spec["encoder"]
    try:
        path = resolve_encoder(enc["name"])
    except UserError:
        path = Path(enc["path"])
    if not path.is_dir() or encoder_weights_sha256(path) != enc["sha256"]:
        raise UserError(f"{folder}/model.json: the encoder {enc['name']!r} it was trained with (weights sha256 "
                        f"{enc['sha256'][:12]}…) is not installed here (looked in {path})")
    tokenizer, max_length = load_tokenizer(path)
    bottom, top = split_encoder(load_pretrained(path), enc["finetune_layers"])
    m = spec["model"]
    tagger = load_weights(folder, Tagger(top, len(spec["labels"]), m["head"], m["lstm_hidden"], m["dropout"]), device)
    return TaggerFolder(folder, spec, list(spec["labels"]), tagger, bottom.eval(), tokenizer, max_length, path)


def dataset_fingerprint(split: TaggingSplit) -> str:
    """What a teacher store is keyed to: the split's word-level gold ids and its encoder windows' subword ids."""
    return fingerprint_dataset(split.corpus.tag_ids, [w.input_ids for w in split.windows])


def member_seed(cfg: TaggingConfig, index: int, individual: bool = False) -> int:
    """Seed of member i (individual i): train.seed + 1000 i (+ 500 for individuals), far apart so that the
    seeds of members, individuals and students (train.seed) never meet."""
    return cfg.train.seed + 1000 * index + (500 if individual else 0)


# ----------------------------------------------------------------------------------------------------------------
SWA_WEIGHTS = "model.pt"  # a tagger trained with train.averaging = "swa": its averaged weights, beside best.pt


def member_weights(folder) -> Path:
    """The file of a member's (or individual's) weights: its SWA average (model.pt) when trained with
    train.averaging = "swa" and averaged, else its best epoch's (best.pt)."""
    folder = Path(folder)
    return folder / SWA_WEIGHTS if (folder / SWA_WEIGHTS).is_file() else folder / "best.pt"


# ----------------------------------------------------------------------------------------------------------------
# The task (tasks/base.py)


class NerTask:
    """Tagging for the shared stages: see tasks/base.py for each method's contract."""
    name = "ner"
    config_class = TaggingConfig
    score_name = "span_f1"
    run_overridable = ("train.device",)
    # "F1" is conlleval's span F1 (the paper's), "F1 strict" seqeval's strict IOB2 one, as the paper tables
    # (paper_report.HEADERS) head them
    columns = (Column("f1_conlleval", "F1"), Column("f1", "F1 strict"), Column("bs_plus", "BS+"),
               Column("bs_minus", "BS-"), Column("b_bs", "B-BS"), Column("b_ece", "B-ECE"))

    def load_data(self, cfg, run_dir=None, splits=("train", "dev", "test"), progress=True) -> TaggingData:
        return load_tagging_data(cfg, splits, progress)

    def member_seed(self, cfg, index, role="member") -> int:
        return member_seed(cfg, index, role == "individual")

    def check_runnable(self, cfg, source="config") -> TaggingConfig:
        """train.device, then encoder.finetune_layers against the encoder's config.json (encoder_layers)."""
        require_device(cfg.train.device, source)
        layers = encoder_layers(cfg.encoder.name)
        if layers is not None and cfg.encoder.finetune_layers > layers:
            raise UserError(f"{source}: 'encoder.finetune_layers' must be at most {layers}, the layers of the "
                            f"encoder {cfg.encoder.name!r}, got {cfg.encoder.finetune_layers}")
        return cfg

    def new_model(self, cfg, data, seed) -> Tagger:
        return new_tagger(data, cfg, seed)

    def model_spec(self, cfg, data, role, seed, **extra) -> dict:
        return model_spec(cfg, data, role, seed, **extra)

    def load_model(self, folder, spec, device="cpu") -> TaggerFolder:
        return load_model(folder, spec, device)

    def weights(self, folder) -> Path:
        return member_weights(folder)

    def load_run_model(self, cfg, data, folder) -> Tagger:
        """A tagger of the run on its own encoder top layers (no encoder reload), head and labels from model.json."""
        spec = read_model_spec(folder)
        if spec["labels"] != data.labels:
            raise UserError(f"{folder}: a model of other labels ({spec['labels']}) than the run's ({data.labels})")
        m, top = spec["model"], data.with_layers(spec["encoder"]["finetune_layers"]).top  # a student's may differ
        tagger = Tagger(copy.deepcopy(top), len(data.labels), m["head"], m["lstm_hidden"], m["dropout"])
        tagger.load_state_dict(load_state(folder, self.weights(folder).name, _device(cfg)))  # checked: result.json
        return tagger.to(_device(cfg)).eval()

    def distributions(self, models, data, split) -> list[np.ndarray]:
        return predict_distributions(models, data.for_models(models).splits[split], pad_id=data.pad_id)

    def member_probs(self, models, cfg, data, split):
        """The whole split in one chunk: label sets are small ([M, words, labels] of CoNLL test is a few MB). A
        CRF model's own labels are its Viterbi path (predict_scored)."""
        scored = [predict_scored([m], data.for_models([m]).splits[split], pad_id=data.pad_id) for m in models]
        yield (np.stack([np.concatenate(d) for d, _ in scored]), np.concatenate(_gold(data.splits[split])),
               [None if paths is None else np.concatenate(paths) for _, paths in scored])

    def n_positions(self, data, split) -> int:
        return sum(len(g) for g in _gold(data.splits[split]))

    def temperature_positions(self, cfg) -> int:
        return 0  # every dev word: [words, labels] is small

    def teacher_probs(self, models, cfg, data, sentences) -> list[np.ndarray]:
        split = data.for_models(models).splits["train"]
        return predict_distributions(models, split, split.windows_of(sentences), data.pad_id)

    caches_member_probs = True  # [words, labels] float32: ~7 MB a member on CoNLL-2003's training split

    def sentence_positions(self, data, split) -> np.ndarray:
        return np.array([len(s.tokens) for s in data.splits[split].corpus.sentences], dtype=np.int64)

    def output_names(self, data) -> list[str]:
        return list(data.labels)

    def batch_sentences(self, cfg) -> int:
        return 64

    def teacher_settings(self, cfg, members=None, top_k=None, epsilon=None, samples=None) -> tuple:
        """Every label is kept (a few bytes a word). A sampled store is refused: the NER student re-tempers its
        teacher (distill.temperature), which is biased for a sampled estimate."""
        if samples:
            raise UserError(f"--samples {samples}: only for translation runs (an NER store keeps every label, and "
                            "re-tempering a sampled store at distill.temperature != 1 would be biased)")
        for flag, value in (("--top-k", top_k), ("--epsilon", epsilon)):
            if value is not None:
                raise UserError(f"{flag}: only for nmt runs (an NER store keeps every label)")
        return members, Truncation()

    def hypotheses(self, models, cfg, data, split, progress=False) -> None:
        return None  # a tagger's output is its distributions' most probable labels

    def compact(self, probs, gold, labels=None) -> tuple:
        return probs, labels

    def predictions(self, pieces, data, split, hypotheses, meta) -> Predictions:
        cuts = np.cumsum([len(g) for g in _gold(data.splits[split])])[:-1]
        probs = np.split(np.concatenate([p for p, _ in pieces]), cuts)
        labels = None if pieces[0][1] is None else np.split(np.concatenate([p for _, p in pieces]), cuts)
        return to_predictions(probs, data.splits[split], data.labels, meta, labels)

    def dataset_fingerprint(self, data, split="train") -> str:
        return dataset_fingerprint(data.splits[split])

    def predict(self, model, input_path, out_dir, **options) -> list[Path]:
        from ..tag_text import predict

        return predict([model], input_path, out_dir, meta={"model": str(model.folder)}, **options)

    # Training a run's members (ensemble.train_members)
    # a run's members' output layers fit its label set, and all of them train on the same share of the data (runs
    # recorded before ensemble.member_data existed trained on eight tenths)
    must_match = {"labels": None, "member_data": "eight_tenths"}

    def training_data(self, cfg, run_dir, progress=True) -> TaggingData:
        return load_tagging_data(cfg, progress=progress)

    def check_data(self, cfg, data) -> None:
        n = len(data.splits["train"].corpus.sentences)
        if n < N_TENTHS:
            raise UserError(f"{cfg.data.train}: {n} training sentences; an ensemble needs at least {N_TENTHS} "
                            "(each member early-stops on its own tenth of them)")

    def run_facts(self, cfg, data) -> dict:
        return {"task": "ner", "labels": data.labels, "split_seed": cfg.ensemble.split_seed,
                "member_data": cfg.ensemble.member_data,
                "member_seeds": [member_seed(cfg, i) for i in range(cfg.ensemble.members)],
                "individual_seeds": [member_seed(cfg, i, True) for i in range(cfg.ensemble.individuals)]}

    def member_plans(self, cfg, data) -> list[MemberPlan]:
        return member_plans(cfg, data)

    def fit(self, model, cfg, data, plan: MemberPlan, folder, progress=True) -> dict:
        """Train one planned model (training.train via train_tagger), then its model folder and result.json."""
        return _fit(model, cfg, data, plan.role, plan.seed, *plan_windows(data, plan),
                    dataclasses.replace(cfg.train, seed=plan.seed), member_loss(cfg), folder, progress)

    def fit_snapshots(self, cfg, data, run_dir, progress=True) -> list[dict]:
        return train_snapshots(cfg, data, run_dir, progress)

    # Students (distill/student.py)
    def student_settings(self, run_dir, members=None, config=None, overrides=(), device=None) -> tuple:
        """A DistillConfig (the file `config`, or the defaults, with `overrides`), its teacher the ensemble of
        `members` of `run_dir`; the run itself is opened as trained: returns (settings, (), None). Raises UserError
        for `device` (the student's is its config's train.device) and for a bad config or override."""
        if device is not None:
            raise UserError("--device: only for nmt runs")
        return student_settings(run_dir, members, config, overrides), (), None

    def student_config(self, cfg, settings) -> TaggingConfig:
        """The run's data and encoder settings with an IID head and the student's training settings; the student
        tunes the encoder's top `settings.encoder.finetune_layers` layers (0: as many as the run's members)."""
        layers = settings.encoder.finetune_layers or cfg.encoder.finetune_layers
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head="iid"), train=settings.train,
                                   encoder=dataclasses.replace(cfg.encoder, finetune_layers=layers))

    def student_seed(self, cfg, settings) -> int:
        return settings.train.seed

    def student_loss(self, store: TeacherStore, settings, data):
        """(1 - beta) NLL + beta tau^2 KD at distill.temperature, per word, against each window's stored entries
        (`window_targets`)."""
        split, d = data.splits["train"], settings.distill
        sentence_of = np.array([w.sentence for w in split.windows])
        first_word_of = np.array([w.first_word for w in split.windows])

        def loss_fn(m, batch):
            mask = batch["word_mask"]
            ids, probs, remainder = window_targets(store, sentence_of[batch["windows"]],
                                                   first_word_of[batch["windows"]], mask.shape[1])
            logits = m.emissions(batch["states"], batch["attention_mask"], batch["word_starts"], mask)
            ids, probs, remainder = ids.to(mask.device), probs.to(mask.device), remainder.to(mask.device)
            loss = distillation_loss(logits, batch["word_labels"], mask, ids, probs, remainder, beta=d.beta,
                                     mode=d.remainder, temperature=d.temperature, label_smoothing=d.label_smoothing)
            return loss, int(mask.sum())

        return loss_fn

    def fit_student(self, model, cfg, data, loss_fn, seed, folder, progress=True, **spec_extra) -> dict:
        """The training sentences but the last tenth (which no member early-stopped on), early-stopped on span F1
        of that tenth (ensemble.distillation_sentences); with train.early_stopping = "dev", every training sentence,
        early-stopped on dev (which the run must have loaded)."""
        split = data.splits["train"]
        n = len(split.corpus.sentences)
        if cfg.train.early_stopping == "dev":
            train_windows, held_out = np.arange(len(split.windows)), ("dev", np.arange(len(data.splits["dev"].windows)))
        else:
            tenth = distillation_sentences(n, cfg.ensemble.split_seed)
            train_windows = split.windows_of(np.setdiff1d(np.arange(n), tenth))
            held_out = ("train", split.windows_of(tenth))
        return _fit(model, cfg, data, "student", seed, train_windows, held_out, cfg.train, loss_fn, folder, progress,
                    **spec_extra)

    def sweep_truncations(self, cfg, top_ks=None, epsilons=None, samples=None, source="config") -> list:
        raise UserError(f"{source}: an NER run; sweep is for translation runs (a student for each truncation V' of "
                        "the teacher's distributions), and an NER teacher store keeps every label: distill --run "
                        "trains its student")


def _fit(model, cfg, data, role, seed, train_windows, held_out, train_cfg, loss_fn, folder, progress,
         **spec_extra) -> dict:
    """train_tagger (on the frozen states of the model's cut: TaggingData.with_layers), then (rank 0) the model
    folder and, last, result.json."""
    data = data.with_layers(cfg.encoder.finetune_layers)
    result = train_tagger(model, data, train_windows, held_out, train_cfg, folder, progress, loss_fn=loss_fn)
    return on_main(write_tagger_folder, folder, model, cfg, data, role, seed, spec_extra,
                   best_epoch=result.best_epoch, epochs=result.epochs_run, best_score=result.best_score,
                   averaging=cfg.train.averaging)


def write_tagger_folder(folder, model: Tagger, cfg: TaggingConfig, data: TaggingData, role: str, seed: int,
                        spec_extra: dict | None = None, **result) -> dict:
    """A trained tagger's model folder: model.json (model_spec with `spec_extra`) and model.safetensors, then
    result.json last (runs.write_result with `result`, span F1 its score, `weights` the file member_weights
    picks, which the folder already holds). Returns what result.json holds."""
    save_model(folder, model, model_spec(cfg, data, role, seed, **(spec_extra or {})))
    return write_result(folder, task="ner", role=role, seed=seed, score="span_f1",
                        weights=member_weights(folder).name, **result)


def plan_windows(data: TaggingData, plan: MemberPlan) -> tuple[np.ndarray, tuple[str, np.ndarray]]:
    """(training-split window ids, (held-out split, its window ids)) of a planned model's sentences (all of a
    split's when the plan says None)."""
    def windows(split: str, sentences) -> np.ndarray:
        split_data = data.splits[split]
        return np.arange(len(split_data.windows)) if sentences is None else split_data.windows_of(sentences)

    held_split, held_ids = plan.held_out
    return windows("train", plan.train), (held_split, windows(held_split, held_ids))


def member_loss(cfg: TaggingConfig):
    """A member's (individual's) loss_fn: tagger_loss smoothed by train.label_smoothing."""
    return functools.partial(tagger_loss, label_smoothing=cfg.train.label_smoothing)


def train_snapshots(cfg: TaggingConfig, data: TaggingData, run_dir, progress: bool = True,
                    after_cycle=None) -> list[dict]:
    """A snapshot ensemble of taggers (SGDR, paper §6.1: the NER attempt, which the paper found no better than the
    individual models of its Table 1): one training trajectory whose K = ensemble.members snapshots are the run's
    members, members/member-<i>, model folders like a seed ensemble's (best.pt the snapshot's weights), which
    evaluate, memoize and distill read unchanged. The layout and the shared steps are ensemble.py's (translation's
    too: tasks/nmt.py train_snapshots). Resumes after a kill; returns what each member's result.json holds.

    1. Warm start (RUN/snapshots/warm-start): member 0's plan (its training tenths by ensemble.member_data,
       early stopping on span F1 of its own tenth, its seed and weight averaging), fitted as a member is (on the
       frozen encoder states of the run's data) to train.max_epochs less K x train.cycle_epochs epochs
       (ensemble.warm_start_config). Its weights (best.pt, or the SWA average) start the cycles.
    2. Cycles (RUN/snapshots/cycles, training.train_cycles): K cycles of train.cycle_epochs epochs over the same
       windows, the data order continued from where the warm start stopped (epoch_batches), with a fresh optimiser
       (train.optimizer) from train.cycle_lr whose rate follows cosine warm restarts down towards
       train.cycle_min_lr, stepped per update (one cycle = cycle_epochs x the updates of an epoch); scored on
       member 0's tenth after each cycle, never stopped early. The weights after cycle i are member i - 1
       (ensemble.record_snapshots), written once all K are done, so a kill loses no finished cycle's snapshot.

    after_cycle(i): called after cycle i is checkpointed (tests kill the training there)."""
    t, k = cfg.train, cfg.ensemble.members
    plan = member_plans(cfg, data)[0]
    warm_dir, cycles_dir = snapshot_dirs(run_dir)
    if not on_main(finished, warm_dir):
        TASK.fit(new_tagger(data, cfg, plan.seed), warm_start_config(cfg), data,
                 dataclasses.replace(plan, role="warm-start"), warm_dir, progress)
    warm = on_main(read_json, warm_dir / RESULT, f"delete {warm_dir} to train the warm start again")
    model = TASK.load_run_model(cfg, data, warm_dir)  # the warm start's weights, as recorded (resumed or not)
    windows, held_out = plan_windows(data, plan)
    batches, updates_per_epoch = epoch_batches(data, windows, t.batch_size, plan.seed, _device(cfg),
                                               epochs=t.cycle_epochs, skip=warm["epochs"])
    cycle_updates = t.cycle_epochs * updates_per_epoch
    optimizer = make_optimizer(model.parameters(), dataclasses.replace(t, lr=t.cycle_lr))
    result = train_cycles(model, batches, member_loss(cfg), held_out_score(data, held_out),
                          dataclasses.replace(t, seed=plan.seed), cycles_dir, k, cycle_updates, t.cycle_min_lr,
                          optimizer, progress, after_cycle, loss_units(model))

    def write(folder, i: int) -> dict:
        epochs = warm["epochs"] + (i + 1) * t.cycle_epochs
        atomic_torch_save(model.state_dict(), Path(folder) / "best.pt")
        return write_tagger_folder(folder, model, cfg, data, "member", plan.seed, {"snapshot": i + 1},
                                   best_epoch=epochs, epochs=epochs, best_score=result.history[i]["held_out_score"],
                                   averaging="snapshot", snapshot=i + 1, warm_start_epochs=warm["epochs"],
                                   cycle_updates=cycle_updates)

    return record_snapshots(model, run_dir, k, write)


def member_plans(cfg: TaggingConfig, data: TaggingData) -> list[MemberPlan]:
    """Members: all tenths but their own (and, with ensemble.member_data = "eight_tenths", the last),
    early-stopping on their own; individuals: everything, early-stopping on dev."""
    n, e = len(data.splits["train"].corpus.sentences), cfg.ensemble
    plans = [MemberPlan("member", i, member_seed(cfg, i), *_member_split(n, i, e.split_seed, e.member_data))
             for i in range(e.members)]
    return plans + [MemberPlan("individual", i, member_seed(cfg, i, True), None, ("dev", None))
                    for i in range(e.individuals)]


def student_settings(run_dir, members: int | None, config=None, overrides=()) -> DistillConfig:
    """The NER student's DistillConfig: the file `config` with `overrides`, or without a file the run's members'
    training settings (those a student has; the paper's students train as its single models do) with
    `overrides`; its teacher the ensemble of `members` of `run_dir` (a file need not name the run:
    distill.ensemble_run is `run_dir`)."""
    from ..config import Distillation, apply_overrides, from_dict, load_config, to_dict, trained_like, validate
    from ..ensemble import read_run_config

    run = os.path.abspath(run_dir)  # normalised, as load_config records paths
    cfg = load_config(config, DistillConfig, overrides, fixed={"distill": {"ensemble_run": run}}) if config \
        else DistillConfig(Distillation(ensemble_run=run), trained_like(read_run_config(run_dir).train))
    if overrides and not config:
        cfg = from_dict(DistillConfig, apply_overrides(DistillConfig, to_dict(cfg), overrides), "--set")
    distillation = dataclasses.replace(cfg.distill, ensemble_run=run,
                                       teacher_members=members or cfg.distill.teacher_members)
    return validate(dataclasses.replace(cfg, distill=distillation), "distill config")


def window_targets(store: TeacherStore, sentences: np.ndarray, first_words: np.ndarray, n_words: int):
    """Teacher entries at each window word: word j of a window is word first_word + j of its sentence.
    Returns ids, probs [B, n_words, K] and remainder [B, n_words]; positions past a window's end are padding."""
    teacher = store.batch(sentences)
    word = torch.from_numpy(first_words)[:, None] + torch.arange(n_words)[None, :]
    word = word.clamp(max=max(teacher.ids.shape[1] - 1, 0))  # past a sentence's end: masked out by word_mask
    at = word[..., None].expand(-1, -1, teacher.ids.shape[-1])
    return teacher.ids.gather(1, at), teacher.probs.gather(1, at), teacher.remainder.gather(1, word)


def _gold(split: TaggingSplit) -> list[np.ndarray]:
    """Gold tag ids of the sentences the split's windows cover, in order (to_predictions' sentences)."""
    return [split.corpus.tag_ids[s] for s in sorted({w.sentence for w in split.windows})]


def _device(cfg) -> str:
    return require_device(cfg.train.device)


def _member_split(n_sentences: int, member: int, split_seed: int, member_data: str):
    train, held = member_sentences(n_sentences, member, split_seed, member_data)
    return train, ("train", held)


TASK = NerTask()
