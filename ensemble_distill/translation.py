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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration.report import evaluate
from .calibration.temperature import at_bound, fit_temperature, temperature_label
from .config import Training, TranslationConfig, load_config, validate
from .errors import UserError
from .io_utils import atomic_torch_save, atomic_write_json, atomic_write_text, require_same_config, run_lock
from .models.translation import (
    TranslationModel,
    collate,
    inverse_sqrt_schedule,
)
from .predictions import save_predictions
from .runs import finished, record_run, save_model, write_result
from .tables import cell, mean_and_se
from .tasks.nmt import (
    ParallelSplit,
    System,
    TranslationData,
    copy_vocab,
    load_translation_data,
    mean_of_members,
    member_seed,
    model_spec,
    new_model,
    nll_loss,
    round_batches,
    teacher_forced,
    teacher_forced_compact,
    to_predictions,
    translate,
    validation_nll,
)
from .training import train

SPLITS = ("train", "dev", "test")
TABLE_METRICS = ("bleu", "ece_1", "ece_5", "bs_plus", "conf_gap")
HEADERS = {"bleu": "BLEU", "ece_1": "ECE-1", "ece_5": "ECE-5", "bs_plus": "BS+", "conf_gap": "conf − acc"}


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_model(model: TranslationModel, data: TranslationData, cfg: TranslationConfig, run_dir, loss_fn,
                seed: int, progress: bool = True, after_round=None, role: str = "member",
                spec_extra: dict | None = None) -> dict:
    """Train `model` on the training split with `loss_fn(model, (indices, batch))` (resuming in run_dir), early-
    stopping on validation NLL; leave the averaged weights in the model, in run_dir/model.pt and as a model folder
    (runs.py: model.json with `spec_extra`, model.safetensors, vocab.model). Returns what result.json records."""
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
    save_model(run_dir, model, model_spec(cfg, len(data.vocab), role, seed, **(spec_extra or {})))
    copy_vocab(data.vocab, run_dir)
    tokens, seconds = sum(r["tokens"] for r in result.history), sum(r["seconds"] for r in result.history)
    return write_result(run_dir, task="nmt", role=role, seed=seed, best_epoch=result.best_epoch,
                        epochs=result.epochs_run, best_score=result.best_score, score="neg_dev_nll",
                        averaged_rounds=t.average_last,
                        averaged_dev_nll=validation_nll([model], dev, cfg.decode.batch_sentences),
                        train_tokens=tokens, tokens_per_second=tokens / max(seconds, 1e-9),
                        seconds_this_call=round(time.time() - started, 1))


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
        record_run(run_dir, cfg, run_facts(cfg, data))
        run = TranslationRun(run_dir, cfg, data)
        for i in range(cfg.ensemble.members):
            if not finished(run.member_dir(i)):
                seed = member_seed(cfg, i)
                model = new_model(cfg, len(data.vocab), seed)
                train_model(model, data, cfg, run.member_dir(i), nll_loss(cfg.train.label_smoothing), seed, progress)
    return run


def run_facts(cfg: TranslationConfig, data: TranslationData) -> dict:
    """What run.json records of a translation run beside the versions (runs.record_run)."""
    return {"task": "nmt", "vocab_size": len(data.vocab),
            "member_seeds": [member_seed(cfg, i) for i in range(cfg.ensemble.members)],
            "train_filter": str(data.filter_counts) if data.filter_counts else None,
            "pairs": {name: len(split.pairs) for name, split in data.splits.items()}}


RUN_OVERRIDABLE = ("decode.", "distill.", "train.device")  # --set on a trained run: what its members don't fix


def open_run(run_dir, splits: Sequence[str] = ("dev", "test"), progress: bool = True,
             device: str | None = None, overrides: Sequence[str] = ()) -> TranslationRun:
    """A trained run, its models to be loaded on `device` (default: the run's train.device; a run trained on a
    GPU can be evaluated or distilled on a CPU and the other way round). `overrides` ("section.key=value") may
    change the decoding, distillation and device settings, not what the members were trained with."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file() or not (run_dir / "vocab.model").is_file():
        raise UserError(f"{run_dir}: not a translation run directory (no config.toml and vocab.model); run train")
    fixed = [o for o in overrides if not o.strip().startswith(RUN_OVERRIDABLE)]
    if fixed:
        raise UserError(f"--set {fixed[0]}: a trained run's members fix this setting; only decode.*, distill.* and "
                        "train.device can change")
    cfg = load_config(run_dir / "config.toml", TranslationConfig, overrides)
    if device is not None:
        cfg.train.device = device
    return TranslationRun(run_dir, cfg, load_translation_data(cfg, run_dir, splits, progress))


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


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
            preds = to_predictions(compact[name], data.splits[split], data.vocab, hypotheses, meta)
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
