"""Translation pipeline: parallel text → joint vocabulary → members → ensembles → BLEU and calibration.

    cfg = load_config("configs/multi30k-small.toml", TranslationConfig)
    run = train_members(cfg, "runs/m30k-ls")               # trains or resumes every member
    rows = evaluate_translation_run("runs/m30k-ls")        # individuals, ensembles, students; raw and TS
    print(format_rows(rows))

Members (paper §5) all train on the whole (length-filtered) training set and differ by seed: initialisation,
dropout and data order. Ensembles of k are the first k members, so 3 ⊂ 5 ⊂ 7. Distillation (memoise the
ensemble, train a student) is in translation_distill.py and trains its students with `train_model` below.

Training, for members and students alike: Adam (0.9, 0.98) with an inverse-square-root warm-up; batches of
length-sorted sentences up to `batch_tokens` padded tokens, in seeded random order; validation every
`updates_per_round` updates (a "round" is the training loop's epoch), early stopping on the validation NLL
(no label smoothing, so CE and LS runs stop on the same criterion); the kept model is the average of the weights
after the last `average_last` rounds up to the best one (checkpoint averaging, standing in for the paper's SWA).

Evaluation: each system's next-token distributions on the test set under teacher forcing (an ensemble's is the
mean of its members' probabilities), kept in the compact predictions format and scored by
calibration.report.evaluate (ECE-1, ECE-5, BS+, BLEU with bootstrap intervals); hypotheses by batched beam
search (an ensemble averages its members inside the beam). Every system is also reported temperature-scaled,
with T fitted on validation positions. Temperature scaling changes the confidences, not the hypotheses: BLEU is
that of the unscaled system.

Run directory:
    RUN/config.toml, RUN/run.json      resolved config; seeds, versions, length-filter counts
    RUN/vocab.model                    joint sentencepiece BPE of the training pairs, trained on first use
    RUN/members/member-<i>/            checkpoint.pt (resume), best.pt, epoch-<n>.pt, model.pt (averaged),
                                       log.jsonl, result.json (written last: a folder without it is unfinished)
    RUN/teachers/<store>/, RUN/students/<student>/      translation_distill.py
    RUN/eval/<split>/<system>/         predictions.npz, metrics.json, reliability_top1.png
    RUN/eval/<split>/results.{md,json} the table
"""

import json
import math
import platform
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .calibration.report import evaluate
from .calibration.temperature import at_bound, fit_temperature, temperature_label
from .config import Training, TranslationConfig, load_config, to_toml, validate
from .data.parallel import FilterCounts, filter_by_length, read_parallel
from .data.vocab import PAD_ID, SubwordVocab, joint_sentences, train_vocab
from .errors import UserError
from .io_utils import atomic_torch_save, atomic_write_json, atomic_write_text, require_same_config, run_lock
from .models.beam_search import beam_search
from .models.translation import (
    TransformerConfig,
    TranslationBatch,
    TranslationModel,
    collate,
    fit_to_positions,
    inverse_sqrt_schedule,
    label_smoothed_loss,
)
from .predictions import Predictions, compact_distributions, save_predictions
from .tables import cell, mean_and_se
from .training import train

SPLITS = ("train", "dev", "test")
TOP_K_STORED = 5  # predictions keep each position's top 5: enough for ECE-5
TABLE_METRICS = ("bleu", "ece_1", "ece_5", "bs_plus", "conf_gap")
HEADERS = {"bleu": "BLEU", "ece_1": "ECE-1", "ece_5": "ECE-5", "bs_plus": "BS+", "conf_gap": "conf − acc"}


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
        train_vocab(joint_sentences(train_pairs), vocab_path, d.vocab_size)
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
            encoded, n_cut = fit_to_positions(encoded, positions)
            if n_cut:
                warnings.warn(f"{getattr(d, f'{name}_src')}: {n_cut} of {len(encoded)} {name} pairs have a side "
                              f"longer than the model's {positions} positions take; each side was cut to its first "
                              f"{positions - 1} subwords (translations and teacher-forced scores are of the cut "
                              "pairs; BLEU compares with the full references)")
        data.splits[name] = ParallelSplit(encoded, references)
    return data


def _read_split(cfg: TranslationConfig, name: str) -> list[tuple[str, str]]:
    d = cfg.data
    pairs = read_parallel(getattr(d, f"{name}_src"), getattr(d, f"{name}_tgt"))
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
    """Batches of round `round_index` (from 1): updates (r - 1)·U .. r·U - 1 of a stream of epochs, epoch e's
    batches drawn with seed (seed, e). Deterministic, so a resumed run sees the batches an unbroken one did."""
    first, stop = (round_index - 1) * updates_per_round, round_index * updates_per_round
    out, seen, epoch = [], 0, 0
    while seen < stop:
        epoch += 1
        epoch_batches = token_batches(lengths, max_tokens, np.random.default_rng((seed, epoch)))
        out += epoch_batches[max(first - seen, 0):max(stop - seen, 0)]
        seen += len(epoch_batches)
    return out


def to_device(batch: TranslationBatch, device) -> TranslationBatch:
    return TranslationBatch(batch.src.to(device), batch.tgt_in.to(device), batch.tgt_out.to(device))


# ----------------------------------------------------------------------------------------------------------------
# Models and training


def member_seed(cfg: TranslationConfig, index: int) -> int:
    """Member i's seed (initialisation, dropout, data order); students use indices from 100 on."""
    return cfg.train.seed + index


def new_model(cfg: TranslationConfig, vocab_size: int, seed: int | None = None) -> TranslationModel:
    """The configured Transformer on the configured device, initialised from `seed` (None: from the current
    RNG state, for a model whose weights are loaded next)."""
    if seed is not None:
        torch.manual_seed(seed)
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but torch sees no CUDA GPU here: set train.device = \"cpu\" in the "
                        "config, or pass --device cpu to the commands that read a trained run")
    model_cfg = TransformerConfig.preset(cfg.model.preset, vocab_size=vocab_size, dropout=cfg.model.dropout)
    return TranslationModel(model_cfg).to(cfg.train.device)


def nll_loss(smoothing: float):
    """The training loss of a member: label-smoothed cross-entropy per target token (λ = 0: plain NLL)."""
    def loss_fn(model, batch):
        _, b = batch
        b = to_device(b, model.embedding.weight.device)
        return label_smoothed_loss(model(b.src, b.tgt_in), b.tgt_out, smoothing), b.n_target_tokens
    return loss_fn


def train_model(model: TranslationModel, data: TranslationData, cfg: TranslationConfig, run_dir, loss_fn,
                seed: int, progress: bool = True, after_round=None) -> dict:
    """Train `model` on the training split with `loss_fn(model, (indices, batch))` (resuming in run_dir), early-
    stopping on validation NLL; leave the averaged weights in the model and in run_dir/model.pt. Returns what
    run_dir/result.json records."""
    run_dir, t = Path(run_dir), cfg.train
    train_split, dev = data.splits["train"], data.splits["dev"]
    lengths = train_split.lengths()

    def batches(round_index):
        for indices in round_batches(lengths, t.batch_tokens, t.updates_per_round, seed, round_index):
            yield indices, collate([train_split.pairs[i] for i in indices])

    def score(m):
        return -validation_nll([m], dev, cfg.decode.batch_sentences)

    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, betas=(0.9, 0.98), eps=1e-9)
    scheduler = inverse_sqrt_schedule(optimizer, t.warmup_steps)
    loop = Training(max_epochs=t.max_rounds, patience=t.patience, seed=seed)
    started = time.time()
    result = train(model, batches, loss_fn, score, loop, run_dir, progress, after_round, optimizer, scheduler,
                   snapshots=t.average_last + t.patience)
    averaged = average_snapshots(run_dir, result.best_epoch, t.average_last)
    model.load_state_dict(averaged)
    atomic_torch_save(averaged, run_dir / "model.pt")
    tokens, seconds = sum(r["tokens"] for r in result.history), sum(r["seconds"] for r in result.history)
    summary = {"best_round": result.best_epoch, "rounds": result.epochs_run, "seed": seed,
               "best_dev_nll": -result.best_score, "averaged_rounds": t.average_last,
               "averaged_dev_nll": validation_nll([model], dev, cfg.decode.batch_sentences),
               "train_tokens": tokens, "tokens_per_second": tokens / max(seconds, 1e-9),
               "seconds_this_call": round(time.time() - started, 1)}
    atomic_write_json(run_dir / "result.json", summary)
    return summary


def average_snapshots(run_dir: Path, last_round: int, n: int) -> dict:
    """The mean of the weights after rounds last_round - n + 1 .. last_round (those that exist)."""
    paths = [run_dir / f"epoch-{r}.pt" for r in range(max(1, last_round - n + 1), last_round + 1)]
    states = [torch.load(p, weights_only=True, map_location="cpu") for p in paths if p.is_file()]
    if not states:
        raise UserError(f"{run_dir}: no weight snapshots of rounds {last_round - n + 1}..{last_round} to average")
    return {key: sum(s[key] for s in states) / len(states) for key in states[0]}


# ----------------------------------------------------------------------------------------------------------------
# A run: members


@dataclass
class TranslationRun:
    run_dir: Path
    cfg: TranslationConfig
    data: TranslationData
    _models: dict = field(default_factory=dict, repr=False)

    def member_dir(self, i: int) -> Path:
        return self.run_dir / "members" / f"member-{i}"

    def load(self, model_dir: Path) -> TranslationModel:
        """The averaged model of a finished member or student folder (cached)."""
        if model_dir not in self._models:
            weights = model_dir / "model.pt"
            if not finished(model_dir) or not weights.is_file():
                raise UserError(f"{model_dir}: not a finished model (no result.json); train it first, or rerun "
                                "the command that trains it to finish it")
            model = new_model(self.cfg, len(self.data.vocab))
            model.load_state_dict(torch.load(weights, weights_only=True, map_location=self.cfg.train.device))
            self._models[model_dir] = model.eval()
        return self._models[model_dir]

    def members(self, k: int) -> list[TranslationModel]:
        return [self.load(self.member_dir(i)) for i in range(k)]


def train_members(cfg: TranslationConfig, run_dir, progress: bool = True,
                  data: TranslationData | None = None) -> TranslationRun:
    """Train (or resume) every member of the configured ensemble in run_dir."""
    run_dir = Path(run_dir)
    validate(cfg)
    with run_lock(run_dir):
        require_same_config(run_dir, cfg)
        # Nothing that binds the folder to this config is written before the inputs are read: a first run that
        # fails on bad data leaves a folder that takes the corrected config.
        if data is None:
            if not (run_dir / "config.toml").is_file():  # a vocabulary left by a first run that failed before
                (run_dir / "vocab.model").unlink(missing_ok=True)  # recording its config
            data = load_translation_data(cfg, run_dir, progress=progress)
        record_run(run_dir, cfg, data)
        run = TranslationRun(run_dir, cfg, data)
        for i in range(cfg.ensemble.members):
            if not finished(run.member_dir(i)):
                seed = member_seed(cfg, i)
                model = new_model(cfg, len(data.vocab), seed)
                train_model(model, data, cfg, run.member_dir(i), nll_loss(cfg.train.label_smoothing), seed, progress)
    return run


def finished(model_dir: Path) -> bool:
    """Whether a member or student finished training: result.json is written last, after model.pt."""
    return (model_dir / "result.json").is_file()


def record_run(run_dir: Path, cfg: TranslationConfig, data: TranslationData) -> None:
    """config.toml (from then on a different config is refused: its members would not belong together) and
    run.json, once the data is read."""
    atomic_write_text(run_dir / "config.toml", to_toml(cfg))
    atomic_write_json(run_dir / "run.json", {
        "ensemble_distill": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "vocab_size": len(data.vocab),
        "member_seeds": [member_seed(cfg, i) for i in range(cfg.ensemble.members)],
        "train_filter": str(data.filter_counts) if data.filter_counts else None,
        "pairs": {name: len(split.pairs) for name, split in data.splits.items()}})


def open_run(run_dir, splits: Sequence[str] = ("dev", "test"), progress: bool = True,
             device: str | None = None) -> TranslationRun:
    """A trained run, its models to be loaded on `device` (default: the run's train.device; a run trained on a
    GPU can be evaluated or distilled on a CPU and the other way round)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file() or not (run_dir / "vocab.model").is_file():
        raise UserError(f"{run_dir}: not a translation run directory (no config.toml and vocab.model); run train-nmt")
    cfg = load_config(run_dir / "config.toml", TranslationConfig)
    if device is not None:
        cfg.train.device = device
    return TranslationRun(run_dir, cfg, load_translation_data(cfg, run_dir, splits, progress))


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


@torch.no_grad()
def translate(models: Sequence[TranslationModel], split: ParallelSplit, vocab: SubwordVocab, beam_size: int,
              alpha: float, batch_sentences: int, progress: bool = False) -> list[str]:
    """Detokenised beam-search translations of the split's sources, in order (decoded in length-sorted batches)."""
    device = models[0].embedding.weight.device
    order = np.argsort([len(src) for src, _ in split.pairs], kind="stable")
    tokens: list = [None] * len(order)
    for start in tqdm(range(0, len(order), batch_sentences), desc="beam search", unit="batch", leave=False,
                      disable=not progress):
        chunk = order[start:start + batch_sentences]
        src = collate([(split.pairs[i][0], []) for i in chunk]).src.to(device)
        for i, hypothesis in zip(chunk, beam_search(models, src, beam_size=beam_size, alpha=alpha).tokens):
            tokens[i] = hypothesis
    return vocab.decode(tokens)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class System:
    name: str  # member-0, ensemble-3, student-...
    models: list[int]  # indices into the evaluated model list; the system is their mean


def run_systems(run: TranslationRun) -> tuple[list[Path], list[System]]:
    """The model folders to load and the systems to evaluate: each member, each configured ensemble size,
    and every trained student."""
    cfg = run.cfg
    folders = [run.member_dir(i) for i in range(cfg.ensemble.members)]
    systems = [System(f"member-{i}", [i]) for i in range(cfg.ensemble.members)]
    systems += [System(f"ensemble-{k}", list(range(k))) for k in sorted(set(cfg.ensemble.subset_sizes))]
    for student in sorted((run.run_dir / "students").glob("*/result.json")):
        systems.append(System(student.parent.name, [len(folders)]))
        folders.append(student.parent)
    return folders, systems


def evaluate_translation_run(run_dir, split: str = "test", n_boot: int = 1000, progress: bool = True,
                             run: TranslationRun | None = None) -> list[dict]:
    """Evaluate every system of the run on `split`, raw and temperature-scaled (T fitted on dev); write
    predictions, metrics and plots under RUN/eval/<split>/<system>[-ts]/ and the table as results.{md,json}."""
    run = run or open_run(run_dir, splits=("dev", split), progress=progress)
    cfg, data = run.cfg, run.data
    folders, systems = run_systems(run)
    models = [run.load(folder) for folder in folders]
    temperatures = fit_temperatures(models, systems, data.splits["dev"], cfg)
    compact = teacher_forced_compact(models, systems, temperatures, data.splits[split], cfg.decode.batch_sentences)
    out = run.run_dir / "eval" / split
    scores = {}
    for system in tqdm(systems, desc="evaluate", unit="system", disable=not progress):
        hypotheses = translate([models[i] for i in system.models], data.splits[split], data.vocab,
                               cfg.decode.beam_size, cfg.decode.alpha, cfg.decode.batch_sentences, progress)
        for scaled in (False, True):
            name = system.name + ("-ts" if scaled else "")
            meta = {"run": str(run.run_dir), "model": name, "split": split,
                    "temperature": temperatures[system.name] if scaled else 1.0,
                    "models": [str(folders[i]) for i in system.models]}
            preds = to_predictions(compact[name], data, split, hypotheses, meta)
            (out / name).mkdir(parents=True, exist_ok=True)
            save_predictions(out / name / "predictions.npz", preds)
            scores[name] = evaluate(preds, out_dir=out / name, n_boot=n_boot)
    rows = table_rows(systems, scores, temperatures)
    atomic_write_json(out / "results.json", rows)
    atomic_write_text(out / "results.md", format_rows(rows, title=f"{run.run_dir.name}, {split}"))
    students = [folders[s.models[0]] for s in systems if s.name.startswith("student-")]
    if students:
        truncation_table(run.run_dir, students, rows, split)
    return rows


def fit_temperatures(models, systems: list[System], dev: ParallelSplit, cfg: TranslationConfig) -> dict[str, float]:
    """Each system's T minimising the NLL of softmax(log p / T) on a seeded sample of at most
    `decode.temperature_positions` dev positions (a dense [positions, V] float64 array is what the fit holds)."""
    n = dev.n_positions()
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, cfg.decode.temperature_positions), replace=False))
    kept, gold, offset = [], [], 0
    for log_probs, batch_gold in teacher_forced(models, dev, cfg.decode.batch_sentences):
        rows = torch.from_numpy(sample[(sample >= offset) & (sample < offset + len(batch_gold))] - offset)
        kept.append(log_probs[:, rows.to(log_probs.device)].cpu())
        gold.append(batch_gold[rows.to(batch_gold.device)].cpu())
        offset += len(batch_gold)
    member_log_probs, gold = torch.cat(kept, dim=1), torch.cat(gold).numpy()
    try:
        return {s.name: fit_temperature(mean_of_members(member_log_probs[s.models]).numpy(), gold, f"{s.name} on dev")
                for s in systems}
    except ValueError as error:  # NaN scores: a model whose weights are broken
        raise UserError(f"{cfg.data.dev_src}: the dev distributions cannot be temperature-scaled: {error}")


def teacher_forced_compact(models, systems: list[System], temperatures: dict[str, float], split: ParallelSplit,
                           batch_sentences: int) -> dict[str, dict[str, np.ndarray]]:
    """Per system and its temperature-scaled twin (name-ts): the compact predictions fields (top-5 ids and probs,
    gold probability, sum of squares) of its teacher-forced distributions, computed batch by batch so that no
    [positions, V] array of the whole split is held."""
    parts = {f"{s.name}{suffix}": [] for s in systems for suffix in ("", "-ts")}
    for member_log_probs, gold in teacher_forced(models, split, batch_sentences):
        gold = gold.cpu().numpy()
        for s in systems:
            log_probs = mean_of_members(member_log_probs[s.models])
            for name, t in ((s.name, 1.0), (f"{s.name}-ts", temperatures[s.name])):
                probs = F.softmax(log_probs / t, dim=-1).cpu().numpy()
                parts[name].append(compact_distributions(probs, gold, TOP_K_STORED) + (gold,))
    fields = ("top_ids", "top_probs", "gold_prob", "sum_sq", "gold")
    return {name: {f: np.concatenate([p[i] for p in chunks]) for i, f in enumerate(fields)}
            for name, chunks in parts.items()}


def to_predictions(compact: dict[str, np.ndarray], data: TranslationData, split: str, hypotheses: list[str],
                   meta: dict) -> Predictions:
    """A translation predictions file from compact fields computed batch by batch (Predictions.translation
    compacts a dense array of the whole split, which we never hold)."""
    s = data.splits[split]
    offsets = np.concatenate([[0], np.cumsum([len(tgt) + 1 for _, tgt in s.pairs])])
    names = np.array([data.vocab.processor.id_to_piece(i) for i in range(len(data.vocab))], dtype=str)
    return Predictions(task="translation", label_names=names, sentence_offsets=offsets, gold=compact["gold"],
                       meta=meta, top_ids=compact["top_ids"], top_probs=compact["top_probs"],
                       gold_prob=compact["gold_prob"], sum_sq=compact["sum_sq"],
                       hypotheses=np.asarray(hypotheses, dtype=str), references=np.asarray(s.references, dtype=str))


def table_rows(systems: list[System], scores: dict[str, dict], temperatures: dict[str, float]) -> list[dict]:
    """Members as one mean ± s.e. row (raw and TS), then each ensemble and student with its 95% interval."""
    members = [s.name for s in systems if s.name.startswith("member-")]
    rows = []
    for suffix, label in (("", ""), ("-ts", " + TS")):
        rows.append(_mean_row(f"individuals ({len(members)}, mean ± s.e.){label}",
                              [scores[m + suffix] for m in members], [temperatures[m] for m in members], suffix))
    for s in systems:
        if s.name in members:
            continue
        for suffix, label in (("", ""), ("-ts", " + TS")):
            rows.append({"system": s.name + label, "temperature": temperatures[s.name] if suffix else 1.0,
                         **{m: scores[s.name + suffix][m] for m in TABLE_METRICS}})
    return rows


def _mean_row(system: str, scores: list[dict], temperatures: list[float], suffix: str) -> dict:
    row = {"system": system, "temperature": float(np.mean(temperatures)) if suffix else 1.0}
    if suffix and any(map(at_bound, temperatures)):  # a mean over bounds is no temperature: say so in the table
        row["temperature_note"] = f"{sum(map(at_bound, temperatures))} of {len(temperatures)} at the fit's bound"
    return {**row, **mean_and_se(scores, TABLE_METRICS)}


def format_rows(rows: list[dict], title: str = "") -> str:
    """Markdown in the paper's units: BLEU 0-100, calibration ×100; mean ± s.e. or value [95% CI]."""
    lines = [f"**{title}** (calibration ×100)", ""] if title else []
    lines += ["| system | T | " + " | ".join(HEADERS[m] for m in TABLE_METRICS) + " |",
              "|---|---|" + "---|" * len(TABLE_METRICS)]
    for row in rows:
        cells = [cell(row[m], 1 if m == "bleu" else 100) for m in TABLE_METRICS]
        note = f" ({row['temperature_note']})" if "temperature_note" in row else ""
        t = temperature_label(row["temperature"]) + note
        lines.append(f"| {row['system']} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def truncation_table(run_dir, students: list[Path], rows: list[dict], split: str = "test") -> list[dict]:
    """BLEU, ECE-1, ECE-5 and the teacher store's bytes per token of each student, side by side, from its
    evaluation rows: RUN/eval/<split>/truncation.{md,json}."""
    by_system = {row["system"]: row for row in rows}
    table = []
    for student in students:
        teacher = json.loads((student / "teacher.json").read_text())
        k, eps = teacher["truncation"]["top_k"], teacher["truncation"]["epsilon"]
        truncation = f"adaptive 1 - {eps:g} (at most {k})" if eps else f"V' = {k}"
        table.append({"student": student.name, "truncation": truncation, "top_k": k, "epsilon": eps or 0.0,
                      "bytes_per_token": teacher["bytes_per_token"],
                      **{m: by_system[student.name][m] for m in TABLE_METRICS}})
    table.sort(key=lambda row: (row["epsilon"] > 0, row["top_k"], row["epsilon"]))
    out = Path(run_dir) / "eval" / split
    atomic_write_json(out / "truncation.json", table)
    atomic_write_text(out / "truncation.md", format_sweep(table, f"{Path(run_dir).name}: students ({split})"))
    return table


def format_sweep(table: list[dict], title: str) -> str:
    lines = [f"**{title}** (calibration ×100)", "",
             "| truncation | " + " | ".join(HEADERS[m] for m in TABLE_METRICS) + " | bytes/token |",
             "|---|" + "---|" * (len(TABLE_METRICS) + 1)]
    for row in table:
        cells = [f"{(1 if m == 'bleu' else 100) * row[m]['value']:.2f}" for m in TABLE_METRICS]
        lines.append(f"| {row['truncation']} | " + " | ".join(cells) + f" | {row['bytes_per_token']:.1f} |")
    return "\n".join(lines) + "\n"
