"""Translation as a task: parallel text → joint BPE vocabulary → Transformer; batches, loss, teacher-forced
distributions, beam search; translation model folders.

    data = load_translation_data(cfg, run_dir)             # the run's vocab.model is trained on first use
    model = new_model(cfg, len(data.vocab), seed=1)
    hypotheses = translate([model], data.splits["test"], data.vocab, beam_size=4, alpha=0.6, batch_sentences=64)
    model = load_model("runs/m30k/students/student-3-top64")   # a TranslationModelFolder: model, vocab, decode

Members (paper §5) all train on the whole (length-filtered) training set and differ by seed: initialisation,
dropout and data order. Batches: length-sorted sentences up to `batch_tokens` padded tokens, in seeded random
order; a "round" of `updates_per_round` updates is the training loop's epoch.
"""

import math
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import (
    Training,
    TranslationConfig,
    TranslationDistillation,
    load_config,
    require_data_files,
    require_device,
    setting_problem,
)
from ..data.parallel import FilterCounts, filter_by_length, read_parallel
from ..data.text import read_text_lines
from ..data.vocab import EOS_ID, PAD_ID, SubwordVocab, joint_sentences, train_vocab
from ..distill.losses import distillation_loss
from ..distill.memoize import Truncation
from ..distributed import on_main
from ..ensemble import MemberPlan, record_snapshots, snapshot_dirs, warm_start_config
from ..errors import UserError, counted
from ..io_utils import atomic_path, atomic_torch_save, atomic_write_text, read_json, strict_json
from ..models.beam_search import beam_search
from ..models.translation import (
    TransformerConfig,
    TranslationBatch,
    TranslationModel,
    collate,
    fit_to_positions,
    inverse_sqrt_schedule,
    label_smoothed_loss,
)
from ..predictions import Predictions, compact_distributions, save_predictions
from ..runs import RESULT, finished, load_state, load_weights, save_model, write_result
from ..tables import Column
from ..teacher_store import TeacherStore, fingerprint_dataset
from ..training import StochasticWeightAveraging, average_snapshots, train, train_cycles

SPLITS = ("train", "dev", "test")
STUDENT_SEED_INDEX = 100  # students' seeds come after any member's
TOP_K_STORED = 5  # predictions keep each position's top 5: enough for ECE-5


# ----------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class ParallelSplit:
    pairs: list[tuple[list[int], list[int]]]  # (source, target) subword ids, no specials
    references: list[str]  # the target side as read from the file: BLEU's references

    def lengths(self) -> np.ndarray:
        """Per pair, the longer side's length with its EOS: what a sentence costs in a padded batch."""
        return np.array([max(len(src), len(tgt)) + 1 for src, tgt in self.pairs], dtype=np.int64)

    def n_positions(self) -> int:
        return sum(len(tgt) + 1 for _, tgt in self.pairs)


@dataclass
class TranslationData:
    vocab: SubwordVocab
    splits: dict[str, ParallelSplit]
    filter_counts: FilterCounts | None = None  # of the training split


def load_translation_data(cfg: TranslationConfig, run_dir, splits: Sequence[str] = SPLITS,
                          progress: bool = True) -> TranslationData:
    """Read and encode the given splits with the run's vocabulary (trained on the training pairs on first use).
    Only the training split is length-filtered: evaluation sees every test sentence, cut (with a warning) where a
    side is longer than the model's positions take, so that no teacher-forced pass or search aborts on it."""
    d = cfg.data
    positions = TransformerConfig.preset(cfg.model.preset, vocab_size=1).max_positions  # whatever the vocabulary
    vocab_path = Path(run_dir) / "vocab.model"
    raw = {name: _read_split(cfg, name) for name in splits}
    if not vocab_path.is_file():
        train_pairs = raw["train"] if "train" in raw else _read_split(cfg, "train")
        if progress:
            tqdm.write(f"training a {d.vocab_size}-piece joint BPE vocabulary on {len(train_pairs)} pairs")
        train_vocab(joint_sentences(train_pairs), vocab_path, d.vocab_size, setting="data.vocab_size")
    vocab = SubwordVocab(vocab_path)
    data = TranslationData(vocab, {})
    for name, pairs in raw.items():
        encoded = list(zip(vocab.encode([s for s, _ in pairs]), vocab.encode([t for _, t in pairs])))
        references = [t for _, t in pairs]
        if name == "train":
            kept, data.filter_counts = filter_by_length(encoded, min_len=d.min_len, max_ratio=d.max_ratio,
                                                        max_len=min(d.max_len, positions - 1))
            encoded, references = [encoded[i] for i in kept], [references[i] for i in kept]
            if progress:
                tqdm.write(f"training pairs: {data.filter_counts}")
        else:
            encoded = _fit_eval_pairs(encoded, positions, f"{getattr(d, f'{name}_src')}", f"{name} pairs")
        data.splits[name] = ParallelSplit(encoded, references)
    return data


def read_pair(cfg: TranslationConfig, vocab: SubwordVocab, src_path, ref_path) -> ParallelSplit:
    """Any parallel test pair (two line-aligned files) as an evaluation split of a run (config `cfg`, vocabulary
    `vocab`): every pair, each side cut to the model's positions with a warning, as load_translation_data does
    for the config's dev and test. Raises UserError naming the file and line (read_parallel)."""
    positions = TransformerConfig.preset(cfg.model.preset, vocab_size=1).max_positions
    pairs = read_parallel(src_path, ref_path, cfg.data.encoding, "data.encoding")
    encoded = list(zip(vocab.encode([s for s, _ in pairs]), vocab.encode([t for _, t in pairs])))
    return ParallelSplit(_fit_eval_pairs(encoded, positions, str(src_path), "pairs"), [t for _, t in pairs])


def _fit_eval_pairs(encoded, positions: int, where: str, what: str):
    encoded, n_cut = fit_to_positions(encoded, positions)
    if n_cut:
        warnings.warn(f"{where}: {n_cut} of {len(encoded)} {what} have a side longer than the model's {positions} "
                      f"positions take; each side was cut to its first {positions - 1} subwords (translations and "
                      "teacher-forced scores are of the cut pairs; BLEU compares with the full references)")
    return encoded


def _read_split(cfg: TranslationConfig, name: str) -> list[tuple[str, str]]:
    d = cfg.data
    require_data_files(d, (f"{name}_src", f"{name}_tgt"))
    pairs = read_parallel(getattr(d, f"{name}_src"), getattr(d, f"{name}_tgt"), d.encoding, "data.encoding")
    limit = d.max_train_pairs if name == "train" else d.max_eval_pairs
    if 0 < limit < len(pairs):  # a seeded sample, in file order
        keep = np.sort(np.random.default_rng(d.sample_seed).choice(len(pairs), limit, replace=False))
        pairs = [pairs[i] for i in keep]
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# Batches


def token_batches(lengths: np.ndarray, max_tokens: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sentence indices cut into batches of similar length, each holding at most max_tokens padded tokens (its
    size times its longest length; a sentence longer than max_tokens goes alone), in random order. Equal lengths
    are ordered randomly, so the batches differ from epoch to epoch."""
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    sorted_lengths = lengths[order]
    batches, start = [], 0
    while start < len(order):
        # Lengths are sorted, so a batch ending at `end` costs (end - start) * sorted_lengths[end - 1], increasing.
        ends = np.arange(start + 1, min(len(order), start + max_tokens) + 1)
        cost = (ends - start) * sorted_lengths[ends - 1]
        end = int(ends[max(np.searchsorted(cost, max_tokens, side="right") - 1, 0)])
        batches.append(order[start:end])
        start = end
    return [batches[i] for i in rng.permutation(len(batches))]


def round_batches(lengths: np.ndarray, max_tokens: int, updates_per_round: int, seed: int,
                  round_index: int) -> list[np.ndarray]:
    """Batches of round `round_index` (from 1): updates (r - 1)·U .. r·U - 1 of the seeded stream
    (stream_batches)."""
    return stream_batches(lengths, max_tokens, seed, (round_index - 1) * updates_per_round,
                          round_index * updates_per_round)


def stream_batches(lengths: np.ndarray, max_tokens: int, seed: int, first: int, stop: int) -> list[np.ndarray]:
    """Batches of updates first .. stop - 1 (from 0) of a stream of epochs, epoch e's batches drawn with seed
    (seed, e). Deterministic, so a resumed run sees the batches an unbroken one did, and a training continued
    from update `first` (a snapshot ensemble's cycles after its warm start) sees the data the warm start would
    have seen next."""
    out, seen, epoch = [], 0, 0
    while seen < stop:
        epoch += 1
        epoch_batches = token_batches(lengths, max_tokens, np.random.default_rng((seed, epoch)))
        out += epoch_batches[max(first - seen, 0):max(stop - seen, 0)]
        seen += len(epoch_batches)
    return out


def update_batches(split: "ParallelSplit", max_tokens: int, seed: int, updates: int, first: int = 0):
    """batches(e) for the training loop: its epoch e (from 1) as `updates` updates of the seeded stream,
    from update `first` on, each batch (sentence indices, collated TranslationBatch)."""
    lengths = split.lengths()

    def batches(epoch):
        start = first + (epoch - 1) * updates
        for indices in stream_batches(lengths, max_tokens, seed, start, start + updates):
            yield indices, collate([split.pairs[i] for i in indices])
    return batches


def to_device(batch: TranslationBatch, device) -> TranslationBatch:
    return TranslationBatch(batch.src.to(device), batch.tgt_in.to(device), batch.tgt_out.to(device))


# ----------------------------------------------------------------------------------------------------------------
# Models


def member_seed(cfg: TranslationConfig, index: int) -> int:
    """Member i's seed (initialisation, dropout, data order); students use indices from 100 on."""
    return cfg.train.seed + index


def new_model(cfg: TranslationConfig, vocab_size: int, seed: int | None = None) -> TranslationModel:
    """The configured Transformer on the configured device, initialised from `seed` (None: from the current
    RNG state, for a model whose weights are loaded next)."""
    if seed is not None:
        torch.manual_seed(seed)
    require_device(cfg.train.device)
    model_cfg = TransformerConfig.preset(cfg.model.preset, vocab_size=vocab_size, dropout=cfg.model.dropout)
    return TranslationModel(model_cfg).to(cfg.train.device)


def nll_loss(smoothing: float):
    """The training loss of a member: label-smoothed cross-entropy per target token (λ = 0: plain NLL)."""
    def loss_fn(model, batch):
        _, b = batch
        b = to_device(b, model.embedding.weight.device)
        return label_smoothed_loss(model(b.src, b.tgt_in), b.tgt_out, smoothing), b.n_target_tokens
    return loss_fn


# ----------------------------------------------------------------------------------------------------------------
# Distributions and translations


@torch.no_grad()
def teacher_forced(models: Sequence[TranslationModel], split: ParallelSplit, batch_sentences: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of consecutive sentences: every model's next-token log-probabilities at the real target
    positions [M, P, V] (sentence after sentence, EOS last) and the gold ids [P], on the models' device."""
    device = models[0].embedding.weight.device
    for model in models:
        model.eval()
    for start in range(0, len(split.pairs), batch_sentences):
        batch = to_device(collate(split.pairs[start:start + batch_sentences]), device)
        real = batch.tgt_out != PAD_ID
        yield (torch.stack([m.log_probs_teacher_forced(batch.src, batch.tgt_in, real) for m in models]),
               batch.tgt_out[real])


def mean_of_members(member_log_probs: torch.Tensor) -> torch.Tensor:
    """log of the uniform mean of the members' probabilities, [M, ...] -> [...]: an ensemble's log-probabilities."""
    return member_log_probs.logsumexp(0) - math.log(len(member_log_probs))


def validation_nll(models: Sequence[TranslationModel], split: ParallelSplit, batch_sentences: int) -> float:
    """Mean negative log-likelihood per target token (EOS included) of the models' mean distribution."""
    total, count = 0.0, 0
    for log_probs, gold in teacher_forced(models, split, batch_sentences):
        total -= mean_of_members(log_probs).gather(1, gold[:, None]).sum().item()
        count += len(gold)
    return total / count


def translate(models: Sequence[TranslationModel], split: ParallelSplit, vocab: SubwordVocab, beam_size: int,
              alpha: float, batch_sentences: int, progress: bool = False) -> list[str]:
    """Detokenised beam-search translations of the split's sources, in order (decoded in length-sorted batches)."""
    return vocab.decode(translate_ids(models, split, beam_size, alpha, batch_sentences, progress))


@torch.no_grad()
def translate_ids(models: Sequence[TranslationModel], split: ParallelSplit, beam_size: int, alpha: float,
                  batch_sentences: int, progress: bool = False) -> list[list[int]]:
    """Beam-search translations of the split's sources as subword ids (no BOS, no EOS), in order. An empty source
    (a blank line of translated text) gets an empty translation without a search: the models would invent one."""
    device = models[0].embedding.weight.device
    order = np.array([i for i in np.argsort([len(src) for src, _ in split.pairs], kind="stable") if split.pairs[i][0]],
                     dtype=np.int64)
    tokens: list = [[] for _ in split.pairs]
    for start in tqdm(range(0, len(order), batch_sentences), desc="beam search", unit="batch", leave=False,
                      disable=not progress):
        chunk = order[start:start + batch_sentences]
        src = collate([(split.pairs[i][0], []) for i in chunk]).src.to(device)
        for i, hypothesis in zip(chunk, beam_search(models, src, beam_size=beam_size, alpha=alpha).tokens):
            tokens[i] = hypothesis
    return tokens


def hypothesis_token_log_probs(models: Sequence[TranslationModel], sources: list[list[int]],
                               hypotheses: list[list[int]], batch_sentences: int) -> list[np.ndarray]:
    """Per sentence, the log-probability (nats, float64 [len(hypothesis) + 1], EOS last, each <= 0) that the
    models' mean distribution gives each token of hypothesis + EOS after the source and the tokens before it,
    scored by teacher forcing (one batched forward pass a model). That mean is the distribution beam_search ranks
    extensions by (ensemble_log_probs, no temperature), so each value is the log-probability the token had when
    the search chose it, within float rounding (the search decodes incrementally); where the search forced EOS
    at a length cap, it is EOS's own log-probability, as in the search's score. No sentences: an empty list."""
    if not hypotheses:
        return []
    split = ParallelSplit(list(zip(sources, hypotheses)), [])
    chosen = torch.cat([mean_of_members(log_probs).gather(1, gold[:, None])[:, 0].double().cpu()
                        for log_probs, gold in teacher_forced(models, split, batch_sentences)])
    # logsumexp - log M of members all near certainty can round a hair above 0: keep every exp a probability.
    chosen = chosen.clamp(max=0.0).numpy()
    return np.split(chosen, np.cumsum([len(h) + 1 for h in hypotheses])[:-1])


def hypothesis_scores(models: Sequence[TranslationModel], sources: list[list[int]], hypotheses: list[list[int]],
                      batch_sentences: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sentence, how sure the models' mean distribution is of its translation, scored under teacher forcing
    on (source, hypothesis + EOS) (hypothesis_token_log_probs): the summed log-probability (nats, float64 [N]; no
    length penalty) and the mean token confidence, the mean over the output tokens, EOS included, of the
    probability the model gave each chosen token (float64 [N], in (0, 1]). No sentences (a text of blank lines
    only) give two empty arrays."""
    per_sentence = hypothesis_token_log_probs(models, sources, hypotheses, batch_sentences)
    return (np.array([lp.sum() for lp in per_sentence], dtype=np.float64),
            np.array([np.exp(lp).mean() for lp in per_sentence], dtype=np.float64))


def scored_translation(source: str, translation: str, hypothesis: list[int], log_probs: np.ndarray | None,
                       piece_names: list[str]) -> dict:
    """One line of translate --jsonl: the source, its translation, and how sure the models were of it, all over
    the same positions, the output subwords and EOS: `pieces` (str, the subwords' sentencepiece names, EOS's
    "</s>" last), `token_confidences` (the probability of each, exp of `log_probs`, float64 [len(pieces)], rounded
    to 6 significant digits: the models compute in float32), `tokens` (their number), `log_prob` (their summed
    log-probability, nats) and `mean_token_confidence` (the mean of their probabilities), both from the unrounded
    values and rounded to 4 decimals. A blank source (`log_probs` None: no search) gives log_prob and
    mean_token_confidence null, tokens 0 and pieces and token_confidences [] (so len(pieces) == tokens always)."""
    if log_probs is None:
        return {"source": source, "translation": translation, "log_prob": None, "mean_token_confidence": None,
                "tokens": 0, "pieces": [], "token_confidences": []}
    confidences = np.exp(log_probs)
    return {"source": source, "translation": translation, "log_prob": round(float(log_probs.sum()), 4),
            "mean_token_confidence": round(float(confidences.mean()), 4), "tokens": len(log_probs),
            "pieces": [piece_names[t] for t in hypothesis] + [piece_names[EOS_ID]],
            "token_confidences": [float(f"{p:.6g}") for p in confidences.tolist()]}


def translate_text(models: Sequence[TranslationModel], vocab: SubwordVocab, decode: dict, input_path="-",
                   output=None, beam_size: int | None = None, jsonl: bool = False, alpha: float | None = None,
                   encoding: str = "utf-8") -> int:
    """Translate text, one sentence a line (`input_path` "-": standard input; .gz read through gzip), with the mean
    of `models` (one model or an ensemble sharing `vocab`), and write the detokenised translations one a line to
    `output` (None: standard output; a file is written atomically, through gzip when its name ends in .gz). jsonl:
    one JSON object a line instead, {"source", "translation", "log_prob", "mean_token_confidence", "tokens",
    "pieces", "token_confidences"} (scored_translation: every score is over the output subwords and EOS).
    `decode`: beam_size, alpha (the GNMT length penalty, beam_search), batch_sentences; `beam_size` and `alpha`
    override it. An empty or blank line gets an empty translation, without a search (jsonl: translation "",
    log_prob and mean_token_confidence null, tokens 0, pieces and token_confidences []), and one warning counts
    them; sources longer than the models' positions are cut to fit with a warning; outputs are capped per sentence
    (beam_search.output_length_caps). Returns the number of sentences.

    Raises UserError naming an input that cannot be read (as `encoding`, default UTF-8). An input without a line
    is translated to nothing, with a warning (a file emptied by mistake)."""
    sources = read_text_lines(input_path, encoding, setting="--encoding")
    if not sources:
        warnings.warn(f"{input_path}: no sentences (one sentence a line): nothing to translate")
    pairs = source_pairs(vocab, models[0].config.max_positions, input_path, sources)
    split = ParallelSplit(pairs, [])
    ids = translate_ids(models, split, beam_size or decode["beam_size"], decode["alpha"] if alpha is None else alpha,
                        decode["batch_sentences"])
    translations = vocab.decode(ids)
    if jsonl:
        scored = [i for i, (src, _) in enumerate(pairs) if src]
        log_probs = dict(zip(scored, hypothesis_token_log_probs(models, [pairs[i][0] for i in scored],
                                                                [ids[i] for i in scored], decode["batch_sentences"])))
        names = vocab.piece_names()
        lines = [strict_json(scored_translation(source, translation, hyp, log_probs.get(i), names), ensure_ascii=False)
                 for i, (source, translation, hyp) in enumerate(zip(sources, translations, ids))]
    else:
        lines = translations
    text = "".join(line + "\n" for line in lines)
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(output, text)
    return len(lines)


# ----------------------------------------------------------------------------------------------------------------
# Training: members and students alike


def train_model(model: TranslationModel, data: TranslationData, cfg: TranslationConfig, run_dir, loss_fn,
                seed: int, progress: bool = True, after_round=None, role: str = "member",
                spec_extra: dict | None = None) -> dict:
    """Train `model` on the training split with `loss_fn(model, (indices, batch))` (resuming in run_dir), early-
    stopping on validation NLL; leave the averaged weights in the model, in run_dir/model.pt and as a model folder
    (runs.py: model.json with `spec_extra`, model.safetensors, vocab.model). Returns what result.json records."""
    run_dir, t = Path(run_dir), cfg.train
    batches = update_batches(data.splits["train"], t.batch_tokens, seed, t.updates_per_round)
    optimizer = adam(model, t.lr)
    scheduler = inverse_sqrt_schedule(optimizer, t.warmup_steps)
    swa = t.averaging == "swa"
    if swa:
        scheduler = StochasticWeightAveraging(model, optimizer, t.updates_per_round, t.swa_start, t.swa_lr,
                                              t.swa_anneal_updates, base=scheduler)
    loop = Training(max_epochs=t.max_rounds, patience=t.patience, seed=seed, precision=t.precision,
                    accumulate=t.accumulate)
    started = time.time()
    result = train(model, batches, loss_fn, dev_score(data, cfg), loop, run_dir, progress, after_round, optimizer,
                   scheduler, snapshots=0 if swa else t.average_last + t.patience, units=batch_units)
    if swa:
        scheduler.apply(model)  # nothing averaged (stopped before swa_start): the best round's weights
        averaged = model.state_dict()
    else:
        averaged = average_snapshots(run_dir, result.best_epoch, t.average_last)
        model.load_state_dict(averaged)
    tokens, seconds = sum(r["tokens"] for r in result.history), sum(r["seconds"] for r in result.history)
    return on_main(lambda: write_model_folder(  # under torchrun, rank 0 writes the model folder
        run_dir, model, cfg, data, role, seed, spec_extra, best_epoch=result.best_epoch, epochs=result.epochs_run,
        best_score=result.best_score, averaging=t.averaging,
        averaged_rounds=scheduler.epochs_averaged if swa else t.average_last,
        averaged_dev_nll=validation_nll([model], data.splits["dev"], cfg.decode.batch_sentences),
        train_tokens=tokens, tokens_per_second=tokens / max(seconds, 1e-9),
        seconds_this_call=round(time.time() - started, 1)))


def adam(model: TranslationModel, lr: float) -> torch.optim.Adam:
    """The Transformer's optimiser (Vaswani et al. 2017): Adam, betas (0.9, 0.98), eps 1e-9."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)


def dev_score(data: TranslationData, cfg: TranslationConfig):
    """The held-out score the training loop maximises: minus the validation NLL per target token."""
    return lambda model: -validation_nll([model], data.splits["dev"], cfg.decode.batch_sentences)


def batch_units(batch) -> int:
    """What a batch's loss is a mean over: its target tokens (training.train's `units`)."""
    return batch[1].n_target_tokens


def write_model_folder(folder, model: TranslationModel, cfg: TranslationConfig, data: TranslationData, role: str,
                       seed: int, spec_extra: dict | None = None, **result) -> dict:
    """The model's weights as model.pt and a model folder (model.json with `spec_extra`, model.safetensors,
    vocab.model), then result.json (runs.write_result with `result`) last. Returns what result.json holds."""
    folder = Path(folder)
    atomic_torch_save(model.state_dict(), folder / "model.pt")
    save_model(folder, model, model_spec(cfg, len(data.vocab), role, seed, **(spec_extra or {})))
    copy_vocab(data.vocab, folder)
    return write_result(folder, task="nmt", role=role, seed=seed, score="neg_dev_nll", **result)


def train_snapshots(cfg: TranslationConfig, data: TranslationData, run_dir, progress: bool = True,
                    after_cycle=None) -> list[dict]:
    """A snapshot ensemble (SGDR, paper §6.1 and Table 4): one training trajectory whose K = ensemble.members
    snapshots are the run's members, members/member-<i>, model folders like a seed ensemble's, which evaluate,
    memoize and distill read unchanged. Resumes after a kill (training.train's checkpoints); returns what each
    member's result.json holds. The layout and the shared steps: ensemble.py's snapshot functions.

    1. Warm start (RUN/snapshots/warm-start): member 0's training (seed, schedule, early stopping, weight
       averaging) to train.max_rounds less K x train.cycle_rounds rounds (ensemble.warm_start_config), as the
       paper's single models stopped earlier.
    2. Cycles (RUN/snapshots/cycles, training.train_cycles): its weights trained on with a fresh Adam from
       train.cycle_lr, the rate following cosine warm restarts (one cycle of cycle_rounds x updates_per_round
       updates per member, down towards train.cycle_min_lr), on the data stream from where the warm start
       stopped (stream_batches); K cycles, no early stopping. The weights after cycle i are member i - 1
       (ensemble.record_snapshots), written once all K are done, so a kill loses no finished cycle's snapshot."""
    t, k, run_dir = cfg.train, cfg.ensemble.members, Path(run_dir)
    seed = member_seed(cfg, 0)
    warm_dir, cycles_dir = snapshot_dirs(run_dir)
    loss_fn = nll_loss(t.label_smoothing)
    model = new_model(cfg, len(data.vocab), seed)
    if on_main(finished, warm_dir):
        warm = read_json(warm_dir / RESULT, f"delete {warm_dir} to train the warm start again")
        model.load_state_dict(load_state(warm_dir, "model.pt", t.device))
    else:
        warm = train_model(model, data, warm_start_config(cfg), warm_dir, loss_fn, seed, progress, role="warm-start")
    cycle_updates = t.cycle_rounds * t.updates_per_round
    optimizer = adam(model, t.cycle_lr)
    batches = update_batches(data.splits["train"], t.batch_tokens, seed, cycle_updates,
                             first=warm["epochs"] * t.updates_per_round)
    loop = Training(seed=seed, precision=t.precision, accumulate=t.accumulate)
    result = train_cycles(model, batches, loss_fn, dev_score(data, cfg), loop, cycles_dir, k, cycle_updates,
                          t.cycle_min_lr, optimizer, progress, after_cycle, batch_units)

    def write(folder, i: int) -> dict:
        rounds = warm["epochs"] + (i + 1) * t.cycle_rounds
        return write_model_folder(folder, model, cfg, data, "member", seed, {"snapshot": i + 1}, best_epoch=rounds,
                                  epochs=rounds, best_score=result.history[i]["held_out_score"],
                                  averaging="snapshot", snapshot=i + 1, warm_start_rounds=warm["epochs"],
                                  cycle_updates=cycle_updates)

    return record_snapshots(model, run_dir, k, write)


def run_facts(cfg: TranslationConfig, data: TranslationData) -> dict:
    """What run.json records of a translation run beside the versions (runs.record_run)."""
    return {"task": "nmt", "vocab_size": len(data.vocab),
            "member_seeds": [member_seed(cfg, i) for i in range(cfg.ensemble.members)],
            "train_filter": str(data.filter_counts) if data.filter_counts else None,
            "pairs": {name: len(split.pairs) for name, split in data.splits.items()}}


# ----------------------------------------------------------------------------------------------------------------
# Predictions files


@torch.no_grad()
def member_probs(models: Sequence[TranslationModel], split: ParallelSplit, batch_sentences: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per batch of consecutive sentences: each model's teacher-forced next-token probabilities at the real target
    positions, float32 [M, P, V] on the CPU, the gold ids, int64 [P] (teacher_forced), and per model None (a
    translation model's own output is its beam search, `translate`)."""
    for log_probs, gold in teacher_forced(models, split, batch_sentences):
        yield log_probs.exp().float().cpu().numpy(), gold.cpu().numpy(), [None] * len(models)


def compact(probs: np.ndarray, gold: np.ndarray, labels=None) -> tuple:
    """The compact predictions fields of dense [P, V] distributions (top-5 ids and probs, gold probability, sum of
    squares, ties beyond the top 5) and the gold ids: what a predictions file keeps of a large vocabulary."""
    return compact_distributions(probs, gold, TOP_K_STORED) + (gold,)


def to_predictions(pieces: list[tuple], split: ParallelSplit, vocab: SubwordVocab, hypotheses: list[str],
                   meta: dict) -> Predictions:
    """A translation predictions file from the `compact` pieces of consecutive batches of the split (never a dense
    [positions, V] array of the whole split)."""
    fields = [np.concatenate([piece[i] for piece in pieces]) for i in range(6)]
    top_ids, top_probs, gold_prob, sum_sq, tied_beyond, gold = fields
    offsets = np.concatenate([[0], np.cumsum([len(tgt) + 1 for _, tgt in split.pairs])])
    names = np.array(vocab.piece_names(), dtype=str)
    return Predictions(task="translation", label_names=names, sentence_offsets=offsets, gold=gold, meta=meta,
                       top_ids=top_ids, top_probs=top_probs, gold_prob=gold_prob, sum_sq=sum_sq,
                       tied_beyond=tied_beyond, hypotheses=np.asarray(hypotheses, dtype=str),
                       references=np.asarray(split.references, dtype=str))


# ----------------------------------------------------------------------------------------------------------------
# Model folders (runs.py): model.json, model.safetensors and the vocabulary beside them


def model_spec(cfg: TranslationConfig, vocab_size: int, role: str, seed: int, **extra) -> dict:
    """What model.json records of a translation model: enough to rebuild it with `load_model`."""
    return {"task": "nmt", "role": role, "seed": seed, "vocab": "vocab.model",
            "model": {"preset": cfg.model.preset, "dropout": cfg.model.dropout, "vocab_size": vocab_size},
            "decode": {"beam_size": cfg.decode.beam_size, "alpha": cfg.decode.alpha,
                       "batch_sentences": cfg.decode.batch_sentences}, **extra}


def copy_vocab(vocab: SubwordVocab, folder) -> None:
    """The run's sentencepiece model into a model folder, so the folder translates on its own."""
    with atomic_path(Path(folder) / "vocab.model") as tmp:
        shutil.copyfile(vocab.path, tmp)


@dataclass
class TranslationModelFolder:
    """A translation model rebuilt from its folder: the Transformer (eval mode), its vocabulary, model.json."""
    folder: Path
    spec: dict
    model: TranslationModel
    vocab: SubwordVocab


def load_model(folder, spec: dict, device: str = "cpu") -> TranslationModelFolder:
    """Rebuild a translation model from model.json, model.safetensors and vocab.model in `folder`.

    Raises UserError when the folder's files do not fit together."""
    folder = Path(folder)
    m = spec["model"]
    vocab = SubwordVocab(folder / spec["vocab"])
    if len(vocab) != m["vocab_size"]:
        raise UserError(f"{folder}/{spec['vocab']}: {len(vocab)} pieces, model.json says {m['vocab_size']}")
    config = TransformerConfig.preset(m["preset"], vocab_size=m["vocab_size"], dropout=m["dropout"])
    return TranslationModelFolder(folder, spec, load_weights(folder, TranslationModel(config), device), vocab)


def read_sources(model: TranslationModelFolder, src_path, ref_path=None) -> ParallelSplit:
    """A source file (one sentence a line; .gz read through gzip), with references if given, encoded with the
    model's vocabulary (source_pairs). Without references the targets are empty and a blank line is kept (an
    empty translation); with them the pair is read as evaluate --src/--ref and training read one (read_parallel):
    a score needs every line to hold a sentence on both sides.
    Raises UserError naming a file (and line) that cannot be read, a blank line beside references, or references
    of another length."""
    if ref_path is None:
        sources = read_text_lines(src_path)
        references = [""] * len(sources)
    else:
        sources, references = (list(side) for side in zip(*read_parallel(src_path, ref_path)))
    targets = model.vocab.encode(references) if ref_path is not None else None
    return ParallelSplit(source_pairs(model.vocab, model.model.config.max_positions, src_path, sources, targets),
                         references)


def source_pairs(vocab: SubwordVocab, positions: int, where, sources: list[str], targets=None) -> list[tuple]:
    """(source, target) subword ids of text to translate (targets: their references' ids, default none): an empty
    or blank source line has no ids, so that translate_ids gives it an empty translation, and one warning counts
    such lines; a side longer than `positions` takes is cut to fit, with a warning. `where` names the input."""
    blank = sum(not source.strip() for source in sources)
    if blank:
        warnings.warn(f"{where}: {blank} of {len(sources)} lines are empty or blank; each gets an empty translation")
    encoded = vocab.encode([source if source.strip() else "" for source in sources])
    pairs, n_cut = fit_to_positions(list(zip(encoded, targets if targets is not None else [[] for _ in sources])),
                                    positions)
    if n_cut:
        warnings.warn(f"{where}: {n_cut} of {len(pairs)} sentences are longer than the model's {positions} "
                      f"positions take; each was cut to its first {positions - 1} subwords")
    return pairs


def predict(model: TranslationModelFolder, input_path, out_dir, ref=None, beam_size: int | None = None,
            progress: bool = False) -> list[Path]:
    """Translate a source file: OUT/translations.txt (detokenised, one a line). With references (`ref`), also
    OUT/predictions.npz: the teacher-forced distributions on the references and the hypotheses, for `evaluate`."""
    out_dir, decode = Path(out_dir), model.spec["decode"]
    split = read_sources(model, input_path, ref)
    hypotheses = translate([model.model], split, model.vocab, beam_size or decode["beam_size"], decode["alpha"],
                           decode["batch_sentences"], progress)
    atomic_write_text(out_dir / "translations.txt", "".join(h + "\n" for h in hypotheses))
    written = [out_dir / "translations.txt"]
    if ref is not None:
        pieces = [compact(probs[0], gold) for probs, gold, _ in member_probs([model.model], split,
                                                                               decode["batch_sentences"])]
        meta = {"model": str(model.folder), "input": str(input_path), "references": str(ref)}
        save_predictions(out_dir / "predictions.npz", to_predictions(pieces, split, model.vocab, hypotheses, meta))
        written.append(out_dir / "predictions.npz")
    return written


# ----------------------------------------------------------------------------------------------------------------
# The task (tasks/base.py)


class NmtTask:
    """Translation for the shared stages: see tasks/base.py for each method's contract."""
    name = "nmt"
    config_class = TranslationConfig
    score_name = "neg_dev_nll"
    run_overridable = ("decode.", "distill.", "train.device")  # --set on a trained run: what its members don't fix
    columns = (Column("bleu", "BLEU", 1), Column("ece_1", "ECE-1"), Column("ece_5", "ECE-5"),
               Column("bs_plus", "BS+"), Column("conf_gap", "conf − acc"))

    def load_data(self, cfg, run_dir, splits=SPLITS, progress=True) -> TranslationData:
        return load_translation_data(cfg, run_dir, splits, progress)

    def member_seed(self, cfg, index, role="member") -> int:
        return member_seed(cfg, index)

    def check_runnable(self, cfg, source="config") -> TranslationConfig:
        require_device(cfg.train.device, source)
        return cfg

    def new_model(self, cfg, data, seed) -> TranslationModel:
        return new_model(cfg, len(data.vocab), seed)

    def model_spec(self, cfg, data, role, seed, **extra) -> dict:
        return model_spec(cfg, len(data.vocab), role, seed, **extra)

    def load_model(self, folder, spec, device="cpu") -> TranslationModelFolder:
        return load_model(folder, spec, device)

    def distributions(self, models, data, split) -> list[np.ndarray]:
        """Teacher-forced, per sentence [target subwords + EOS, V] float32: dense, for small splits only."""
        lengths = [len(tgt) + 1 for _, tgt in data.splits[split].pairs]
        probs = torch.cat([mean_of_members(log_probs).exp().float().cpu()
                           for log_probs, _ in teacher_forced(models, data.splits[split], 64)])
        return [p.numpy() for p in probs.split(lengths)]

    def weights(self, folder) -> Path:
        return Path(folder) / "model.pt"  # the averaged weights

    def load_run_model(self, cfg, data, folder) -> TranslationModel:
        model = new_model(cfg, len(data.vocab))
        model.load_state_dict(load_state(folder, "model.pt", cfg.train.device))  # checked: result.json
        return model.eval()

    def member_probs(self, models, cfg, data, split):
        return member_probs(models, data.splits[split], cfg.decode.batch_sentences)

    def n_positions(self, data, split) -> int:
        return data.splits[split].n_positions()

    def temperature_positions(self, cfg) -> int:
        return cfg.decode.temperature_positions  # a dense [positions, V] float64 array is what the fit holds

    @torch.no_grad()
    def teacher_probs(self, models, cfg, data, sentences) -> list[torch.Tensor]:
        """The mean of probabilities (not log-space) is what is stored, and exp-then-mean is twice as fast on a CPU
        as a logsumexp over the members. It stays on the models' device: the store truncates there."""
        pairs = [data.splits["train"].pairs[i] for i in sentences]
        batch = to_device(collate(pairs), models[0].embedding.weight.device)
        real = batch.tgt_out != PAD_ID
        probs = torch.stack([m.log_probs_teacher_forced(batch.src, batch.tgt_in, real) for m in models]).exp().mean(0)
        return list(probs.split([len(tgt) + 1 for _, tgt in pairs]))

    caches_member_probs = False  # float32 [target tokens, 8K vocabulary] a sentence: tens of GB a member over 29K pairs

    def sentence_positions(self, data, split) -> np.ndarray:
        return np.array([len(tgt) + 1 for _, tgt in data.splits[split].pairs], dtype=np.int64)

    def output_names(self, data) -> list[str]:
        return data.vocab.piece_names()

    def batch_sentences(self, cfg) -> int:
        return cfg.decode.batch_sentences

    def teacher_settings(self, cfg, members=None, top_k=None, epsilon=None, samples=None) -> tuple:
        """Defaults from the run's [distill] section; `samples` > 0 makes a sampled store (R draws a position,
        seeded by train.seed), 0 a top-V' one. Also raises UserError for top_k or epsilon given with samples > 0
        (a sampled store keeps draws, not the top entries)."""
        d = cfg.distill
        samples = d.samples if samples is None else samples
        if samples > 0 and (top_k is not None or epsilon is not None):
            given = "--top-k" if top_k is not None else "--epsilon"
            raise UserError(f"{given}: a sampled store (samples = {samples}) keeps draws, not the top entries; give "
                            "--samples 0 for a top-V' store")
        members = d.teacher_members if members is None else members
        top_k_flag = "--top-k" if top_k is not None else "distill.top_k"
        top_k = d.top_k if top_k is None else top_k
        epsilon = d.epsilon if epsilon is None else epsilon
        if not 1 <= members <= cfg.ensemble.members:
            raise UserError(f"--members {members}: the run has {counted(cfg.ensemble.members, 'member')}")
        for name, value in (("top_k", top_k), ("epsilon", epsilon), ("samples", samples)):
            if problem := setting_problem(TranslationDistillation, name, value):
                raise UserError(f"'{name}' {problem}")
        if samples == 0:
            _refuse_above_vocabulary(cfg, [top_k], top_k_flag)
        return members, Truncation(top_k, epsilon, samples, d.probs_dtype)

    def hypotheses(self, models, cfg, data, split, progress=False) -> list[str]:
        d = cfg.decode
        return translate(models, data.splits[split], data.vocab, d.beam_size, d.alpha, d.batch_sentences, progress)

    def compact(self, probs, gold, labels=None) -> tuple:
        return compact(probs, gold)

    def predictions(self, pieces, data, split, hypotheses, meta) -> Predictions:
        return to_predictions(pieces, data.splits[split], data.vocab, hypotheses, meta)

    def dataset_fingerprint(self, data, split="train") -> str:
        pairs = data.splits[split].pairs
        return fingerprint_dataset([src for src, _ in pairs], [tgt for _, tgt in pairs])

    def predict(self, model, input_path, out_dir, **reader) -> list[Path]:
        return predict(model, input_path, out_dir, **reader)

    # Training a run's members (ensemble.train_members)
    must_match = {}

    def training_data(self, cfg, run_dir, progress=True) -> TranslationData:
        """Every split; the run's vocabulary is trained on first use (one a failed first run left, before it
        recorded its config, is trained again)."""
        if not (Path(run_dir) / "config.toml").is_file():
            (Path(run_dir) / "vocab.model").unlink(missing_ok=True)
        return load_translation_data(cfg, run_dir, progress=progress)

    def check_data(self, cfg, data) -> None:
        pass  # read_parallel and the length filter have refused what cannot be trained on

    def run_facts(self, cfg, data) -> dict:
        return run_facts(cfg, data)

    def member_plans(self, cfg, data) -> list[MemberPlan]:
        """Every member on the whole (length-filtered) training set, early-stopping on dev; seeds differ."""
        return [MemberPlan("member", i, member_seed(cfg, i), None, ("dev", None)) for i in range(cfg.ensemble.members)]

    def fit(self, model, cfg, data, plan: MemberPlan, folder, progress=True) -> dict:
        return train_model(model, data, cfg, folder, nll_loss(cfg.train.label_smoothing), plan.seed, progress,
                           role=plan.role)

    def fit_snapshots(self, cfg, data, run_dir, progress=True) -> list[dict]:
        return train_snapshots(cfg, data, run_dir, progress)

    # Students (distill/student.py): the members' architecture, schedule, batches and early stopping, or a [train]
    # of the student's own (student_overrides)
    def student_settings(self, run_dir, members=None, config=None, overrides=(), device=None) -> tuple:
        """Split `overrides` (student_overrides): without train settings of its own the student trains under the
        run's config, read with `overrides` and `device`: returns (None, overrides, device). With them, settings
        is the run's config.toml with those and the command's distill.* overrides (its loss reads settings.distill),
        validated as any config; the run is opened with the rest: returns (settings, the run's overrides, device).
        Raises UserError for `config` (a distillation config is NER's) and for a bad train.* or distill.* value,
        naming the key."""
        if config is not None:
            raise UserError("--config: only for ner runs")
        own, run_overrides = student_overrides(overrides)
        if not own:
            return None, overrides, device
        loss = [o for o in run_overrides if o.strip().startswith("distill.")]
        # read as a seed run's: the student is one model, so a snapshot run's members' budget rule (a warm start
        # before ensemble.members cycles) does not bind its train.max_rounds; settings.ensemble is not used
        one_model = {"ensemble": {"kind": "seeds"}}
        settings = load_config(Path(run_dir) / "config.toml", TranslationConfig, [*loss, *own], fixed=one_model)
        return settings, run_overrides, device

    def student_config(self, cfg, settings) -> TranslationConfig:
        """The run's `cfg` (data, model, decoding, device as the command opened it), with the student's own
        [train] when `settings` has one (student_settings); its train.device stays cfg's: where the run is opened
        is where the student trains."""
        if settings is None or settings is cfg:
            return cfg
        return replace(cfg, train=replace(settings.train, device=cfg.train.device))

    def student_seed(self, cfg, settings) -> int:
        """member_seed of index 100 under the student's train.seed (the run's unless its settings change it)."""
        return member_seed(cfg if settings is None else settings, STUDENT_SEED_INDEX)

    def student_loss(self, store: TeacherStore, settings, data):
        return student_loss(store, settings.distill)

    def fit_student(self, model, cfg, data, loss_fn, seed, folder, progress=True, **spec_extra) -> dict:
        return train_model(model, data, cfg, folder, loss_fn, seed, progress, role="student", spec_extra=spec_extra)

    def sweep_truncations(self, cfg, top_ks=None, epsilons=None, samples=None, source="config") -> list[tuple]:
        """(top_k, epsilon, samples) of each store: each V' in top_ks, each adaptive epsilon capped at max(top_ks),
        then each sampled store's R (default [distill.samples] when that is > 0); the defaults from [distill].
        Raises UserError for no V' or an R below 1."""
        d = cfg.distill
        top_k_flag = "--top-k" if top_ks is not None else "distill.sweep_top_k"
        top_ks = d.sweep_top_k if top_ks is None else top_ks
        epsilons = d.sweep_epsilon if epsilons is None else epsilons
        samples = ([d.samples] if d.samples > 0 else []) if samples is None else samples
        if not top_ks:
            raise UserError("'top_ks' must name at least one V', got []")
        _refuse_above_vocabulary(cfg, top_ks, top_k_flag)
        if any(r < 1 for r in samples):
            raise UserError(f"--samples {min(samples)}: a sweep's sampled stores need at least 1 draw a position")
        return ([(k, 0.0, 0) for k in top_ks] + [(max(top_ks), eps, 0) for eps in epsilons]
                + [(None, None, r) for r in samples])


def student_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a translation `distill --set` into (the student's own training settings, the run's): every train.*
    key but train.device is the student's, since its loop (budget, rate, batches, seed) binds no member, while a
    member's would change what the run's models are (ensemble.read_run_config refuses them). train.device stays the
    run's, as --device is: it says where the run is opened and the student trains, not what it is, so a student
    resumes on another device. decode.* (how it is evaluated) and distill.* stay the run's (Task.run_overridable)."""
    def own(item: str) -> bool:
        key = item.partition("=")[0].strip()
        return key.startswith("train.") and key != "train.device"

    return [o for o in overrides if own(o)], [o for o in overrides if not own(o)]


def _refuse_above_vocabulary(cfg: TranslationConfig, top_ks: Sequence[int], source: str) -> None:
    """Refuse a V' above the run's vocabulary size (data.vocab_size: its sentencepiece model has exactly that many
    pieces), which would store the whole distribution under another name. `source`: the flag or key it came from."""
    vocab_size = cfg.data.vocab_size
    if too_many := [k for k in top_ks if k > vocab_size]:
        raise UserError(f"{source}: V' = {too_many[0]} is above the run's vocabulary of {vocab_size} pieces "
                        f"(data.vocab_size); give at most {vocab_size} (V' = {vocab_size} keeps every entry)")


def student_loss(store: TeacherStore, d: TranslationDistillation):
    """(1 - beta) label-smoothed NLL + beta KD against the batch's stored teacher entries (paper §5.2: temperature
    1, the smoothing on the NLL term only). Returns loss_fn(model, (indices, batch)) -> (loss, target tokens)."""

    def loss_fn(model, batch):
        indices, b = batch
        device = model.embedding.weight.device
        b = to_device(b, device)
        teacher = store.batch(indices)
        mask = b.tgt_out != PAD_ID
        loss = distillation_loss(model(b.src, b.tgt_in).float(), b.tgt_out, mask, teacher.ids.to(device),
                                 teacher.probs.to(device), teacher.remainder.to(device), beta=d.beta,
                                 mode=d.remainder, label_smoothing=d.label_smoothing)
        return loss, b.n_target_tokens

    return loss_fn


TASK = NmtTask()
