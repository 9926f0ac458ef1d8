"""The NER pipeline's data side and model calls: corpora → encoder windows → frozen states → batches → distributions.

    data = load_tagging_data(cfg)                       # train/dev/test, tokenised, frozen states computed once
    model = new_tagger(data, cfg)                       # a fresh member: pretrained top layers + a new head
    train_tagger(model, data.splits["train"], train_windows, held_out_windows, cfg.train, run_dir)
    per_sentence = predict_distributions([model], data.splits["test"])    # an ensemble is a list of models
"""

import copy
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration.task_metrics import span_counts, span_scores
from .config import TaggingConfig, Training
from .data.conll import TaggedCorpus, label_vocab, read_conll, tag_corpus
from .data.subwords import Window, bucketed_batches, collate, encode_sentences, load_tokenizer, merge_windows
from .encoders import (
    EncoderTop,
    FrozenStates,
    compute_frozen_states,
    encoder_fingerprint,
    load_pretrained,
    resolve_encoder,
    split_encoder,
    token_ids_fingerprint,
)
from .models.tagger import Tagger
from .predictions import Predictions
from .training import TrainResult, train


@dataclass
class TaggingSplit:
    corpus: TaggedCorpus
    windows: list[Window]
    frozen: FrozenStates

    def windows_of(self, sentences) -> np.ndarray:
        """Indices of the windows that belong to the given sentences."""
        owner = np.array([w.sentence for w in self.windows])
        return np.flatnonzero(np.isin(owner, np.asarray(sentences)))


@dataclass
class TaggingData:
    labels: list[str]
    splits: dict[str, TaggingSplit]
    top: EncoderTop  # the pretrained top layers; each member fine-tunes its own copy
    pad_id: int
    encoder_path: Path


def load_tagging_data(cfg: TaggingConfig, splits=("train", "dev", "test"), progress: bool = True,
                      extra_files: dict | None = None) -> TaggingData:
    """Read, tokenise and run the frozen encoder layers over the configured files, once for all members.

    extra_files: {name: path} of further files (same column layout) to prepare as splits, e.g. for `predict`.
    """
    d = cfg.data
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
    return TaggingData(labels, out, encoder.top, encoder.tokenizer.pad_token_id, encoder.path)


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
        corpus = tag_corpus(path, sentences, labels, self.cfg.data.unknown_tag)
        windows = encode_sentences(self.tokenizer, [s.tokens for s in sentences], self.max_length, corpus.tag_ids)
        ids = [w.input_ids for w in windows]
        cache = Path(self.cfg.encoder.cache_dir) / f"frozen-{self.fingerprint}-{token_ids_fingerprint(ids)}.pt"
        return TaggingSplit(corpus, windows, compute_frozen_states(self.bottom, ids, cache_file=cache,
                                                                   progress=progress))


def _sample(sentences: list, limit: int) -> list:
    """A seeded sample of `limit` sentences in file order (0: all), for CPU-scale runs."""
    if not limit or limit >= len(sentences):
        return sentences
    keep = sorted(random.Random(0).sample(range(len(sentences)), limit))
    return [sentences[i] for i in keep]


def new_tagger(data: TaggingData, cfg: TaggingConfig, seed: int) -> Tagger:
    torch.manual_seed(seed)
    return Tagger(copy.deepcopy(data.top), len(data.labels), cfg.model.head, cfg.model.lstm_hidden,
                  cfg.model.dropout)


def _batch(split: TaggingSplit, window_ids, pad_id: int) -> dict:
    batch = collate([split.windows[i] for i in window_ids], pad_id)
    batch["states"], batch["attention_mask"] = split.frozen.batch(window_ids)
    return batch


def _emissions(model: Tagger, batch: dict) -> torch.Tensor:
    return model.emissions(batch["states"], batch["attention_mask"], batch["word_starts"], batch["word_mask"])


def tagger_loss(model: Tagger, batch: dict):
    emissions = _emissions(model, batch)
    return model.loss(emissions, batch["word_labels"], batch["word_mask"]), int(batch["word_mask"].sum())


def predict_distributions(models: list[Tagger], split: TaggingSplit, window_ids=None, pad_id: int = 0,
                          batch_size: int = 64, progress: bool = False) -> list[np.ndarray]:
    """Per-sentence [words, labels] distributions: the uniform mean of the models' per-word distributions.

    Each batch's frozen states are read once and shared by every member; an ensemble of one is a single model.
    """
    window_ids = np.arange(len(split.windows)) if window_ids is None else np.asarray(window_ids)
    lengths = [len(split.windows[i].input_ids) for i in window_ids]
    outputs = [None] * len(window_ids)
    for model in models:
        model.eval()
    with torch.no_grad():
        for chunk in tqdm(bucketed_batches(lengths, batch_size), desc="predict", unit="batch", disable=not progress,
                          leave=False):
            batch = _batch(split, window_ids[chunk], pad_id)
            mean = sum(m.distributions(_emissions(m, batch), batch["word_mask"]) for m in models) / len(models)
            n_words = batch["word_mask"].sum(1).tolist()
            for row, position in enumerate(chunk):
                outputs[position] = mean[row, : n_words[row]].numpy()
    return merge_windows([split.windows[i] for i in window_ids], outputs)


def held_out_f1(models: list[Tagger], split: TaggingSplit, window_ids, pad_id: int, labels: list[str]) -> float:
    """Span F1 (seqeval, strict IOB2) of the argmax labels on the given windows' sentences."""
    distributions = predict_distributions(models, split, window_ids, pad_id)
    sentences = sorted({split.windows[i].sentence for i in window_ids})
    names = np.asarray(labels)
    gold = [names[split.corpus.tag_ids[s]].tolist() for s in sentences]
    pred = [names[d.argmax(1)].tolist() for d in distributions]
    return span_scores(span_counts(gold, pred))["f1"]


def train_tagger(model: Tagger, data: TaggingData, train_windows, held_out: tuple[str, np.ndarray], cfg: Training,
                 run_dir, progress: bool = True, after_epoch=None, loss_fn=tagger_loss) -> TrainResult:
    """Train one tagger on `train_windows` of the training split, early-stopping on span F1 of `held_out`
    (a split name and window ids in it). Batches carry their window ids ("windows") for losses that need them,
    such as distillation's."""
    split = data.splits["train"]
    train_windows = np.asarray(train_windows)
    lengths = np.array([len(split.windows[i].input_ids) for i in train_windows])
    held_split, held_windows = data.splits[held_out[0]], held_out[1]

    def batches(epoch):
        for chunk in bucketed_batches(lengths, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch):
            yield {**_batch(split, train_windows[chunk], data.pad_id), "windows": train_windows[chunk]}

    def score(m):
        return held_out_f1([m], held_split, held_windows, data.pad_id, data.labels)

    return train(model, batches, loss_fn, score, cfg, run_dir, progress, after_epoch)


def to_predictions(distributions: list[np.ndarray], split: TaggingSplit, labels: list[str], meta: dict) -> Predictions:
    """Per-sentence distributions of a split as the predictions format (gold from the corpus)."""
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in distributions])])
    sentences = sorted({w.sentence for w in split.windows})
    gold = np.concatenate([split.corpus.tag_ids[s] for s in sentences])
    probs = np.concatenate(distributions).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)  # float32 marginals can drift from 1 by more than rounding
    return Predictions.tagging(probs, gold, offsets, labels, meta=meta)
