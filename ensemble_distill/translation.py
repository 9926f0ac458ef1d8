"""Translation runs: members → ensembles → BLEU and calibration, raw and temperature-scaled; the tables.

    cfg = load_config("configs/multi30k-small.toml", TranslationConfig)
    run = train_members(cfg, "runs/m30k-ls")               # trains or resumes every member
    rows = evaluate_translation_run("runs/m30k-ls")        # individuals, ensembles, students; raw and TS
    print(format_rows(rows))

Members (paper §5) all train on the whole (length-filtered) training set and differ by seed: initialisation,
dropout and data order (ensemble.train_members, tasks/nmt.py). Ensembles of k are the first k members, so
3 ⊂ 5 ⊂ 7 (ensemble.nested_subsets). Distillation (memoise the ensemble, train a student) is in
translation_distill.py and trains its students with tasks.nmt.train_model, as the members are trained.

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

Run directory (runs.py), and what translation adds:
    RUN/vocab.model                    joint sentencepiece BPE of the training pairs, trained on first use
    RUN/members/member-<i>/            a model folder (model.json, model.safetensors, vocab.model) and training's
                                       checkpoint.pt (resume), best.pt, epoch-<n>.pt, model.pt (averaged), log.jsonl
    RUN/teachers/<store>/, RUN/students/<student>/      translation_distill.py
    RUN/eval/<split>/<system>/         predictions.npz, metrics.json, reliability_top1.png
    RUN/eval/<split>/results.{md,json} the table
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration.report import evaluate
from .calibration.temperature import at_bound, fit_temperature, temperature_label
from .config import TranslationConfig, load_config
from .ensemble import nested_subsets
from .ensemble import train_members as train_members_of
from .errors import UserError
from .io_utils import atomic_write_json, atomic_write_text, read_json
from .models.translation import (
    TranslationModel,
)
from .predictions import save_predictions
from .runs import finished, load_state
from .tables import cell, mean_and_se
from .tasks.nmt import (
    ParallelSplit,
    System,
    TranslationData,
    load_translation_data,
    mean_of_members,
    new_model,
    teacher_forced,
    teacher_forced_compact,
    to_predictions,
    translate,
)

SPLITS = ("train", "dev", "test")
TABLE_METRICS = ("bleu", "ece_1", "ece_5", "bs_plus", "conf_gap")
HEADERS = {"bleu": "BLEU", "ece_1": "ECE-1", "ece_5": "ECE-5", "bs_plus": "BS+", "conf_gap": "conf − acc"}


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
        """The averaged model of a finished member or student folder (cached). Raises UserError for an unfinished
        one, and for a model.pt other than the one its result.json records (replaced or damaged)."""
        if model_dir not in self._models:
            weights = model_dir / "model.pt"
            if not finished(model_dir) or not weights.is_file():
                raise UserError(f"{model_dir}: not a finished model (no result.json); train it first, or rerun "
                                "the command that trains it to finish it")
            model = new_model(self.cfg, len(self.data.vocab))
            model.load_state_dict(load_state(model_dir, "model.pt", self.cfg.train.device))  # checked: result.json
            self._models[model_dir] = model.eval()
        return self._models[model_dir]

    def members(self, k: int) -> list[TranslationModel]:
        return [self.load(self.member_dir(i)) for i in range(k)]


def train_members(cfg: TranslationConfig, run_dir, progress: bool = True,
                  data: TranslationData | None = None) -> TranslationRun:
    """Train (or resume) every member of the configured ensemble in run_dir (ensemble.train_members)."""
    return TranslationRun(Path(run_dir), cfg, train_members_of(cfg, run_dir, progress, data))


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
    subsets = nested_subsets(cfg.ensemble.members, cfg.ensemble.subset_sizes, None)  # the first k members
    systems += [System(f"ensemble-{k}", ids) for k, ids in subsets.items()]
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
    evaluation rows: RUN/eval/<split>/truncation.{md,json}. Rows: fixed V' ascending, then adaptive, then
    sampled stores by their draws R ("samples"; top_k and epsilon 0 there, samples 0 in the others)."""
    by_system = {row["system"]: row for row in rows}
    table = []
    for student in students:
        teacher = read_json(student / "teacher.json", f"delete {student} and distill it again")
        t = teacher["truncation"]
        k, eps, r = t.get("top_k", 0), t.get("epsilon") or 0.0, t.get("samples", 0)
        truncation = f"sampled R = {r}" if r else f"adaptive 1 - {eps:g} (at most {k})" if eps else f"V' = {k}"
        table.append({"student": student.name, "truncation": truncation, "top_k": k, "epsilon": eps, "samples": r,
                      "bytes_per_token": teacher["bytes_per_token"],
                      **{m: by_system[student.name][m] for m in TABLE_METRICS}})
    table.sort(key=lambda row: (row["samples"] > 0, row["epsilon"] > 0, row["top_k"], row["epsilon"], row["samples"]))
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
