"""Whole experiments over a trained ensemble run: predict with every member, average subsets, evaluate, tabulate.

    table = evaluate_run("runs/conll-iid", split="test")     # writes RUN/eval/<split>/..., returns rows
    print(format_rows(table))

Each member's distributions are computed once; an ensemble of k is the mean of its members' (already computed)
distributions, so evaluating ensembles of 3, 6 and 9 costs nine forward passes, not eighteen.
"""

import copy
from pathlib import Path

import numpy as np

from .calibration.report import evaluate
from .config import TaggingConfig
from .ensemble import nested_subsets
from .errors import UserError
from .io_utils import atomic_write_json, atomic_write_text
from .models.tagger import Tagger
from .predictions import save_predictions
from .runs import load_weights, model_dir, read_model_spec
from .tables import cell, mean_and_se
from .tasks.ner import (
    EnsembleRun,
    TaggingSplit,
    load_member,
    load_tagging_data,
    member_seed,
    predict_scored,
    read_run_config,
    to_predictions,
)

TABLE_METRICS = ("f1", "bs_plus", "bs_minus", "b_bs", "b_ece")
HEADERS = {"f1": "F1", "bs_plus": "BS+", "bs_minus": "BS-", "b_bs": "B-BS", "b_ece": "B-ECE"}


def open_run(run_dir, cfg: TaggingConfig | None = None, splits=("train", "dev", "test"), progress=True) -> EnsembleRun:
    cfg = cfg or read_run_config(run_dir)
    return EnsembleRun(Path(run_dir), cfg, load_tagging_data(cfg, splits=splits, progress=progress))


def evaluate_run(run: EnsembleRun, split: str = "test", n_boot: int = 1000, progress: bool = True) -> list[dict]:
    """Evaluate members, individuals, every configured ensemble size and the students in RUN/students/ on
    `split`; writes predictions,
    metrics and plots under RUN/eval/<split>/ and the table as RUN/eval/<split>/results.{md,json}."""
    out = run.run_dir / "eval" / split
    data_split = run.data.splits[split]
    cfg = run.cfg
    members = _scored(run, cfg.ensemble.members, data_split, progress)
    individuals = _scored(run, cfg.ensemble.individuals, data_split, progress, individual=True)
    meta = {"run": str(run.run_dir), "head": cfg.model.head}
    rows = []
    for group, scored in (("member", members), ("individual", individuals)):
        if scored:
            scores = [evaluate_distributions(d, data_split, run.data.labels, out / f"{group}-{i}", n_boot,
                                             {**meta, group: i}, paths) for i, (d, paths) in enumerate(scored)]
            rows.append(_mean_row(f"{group}s ({len(scored)}, mean ± s.e.)", scores))
    for k, ids in nested_subsets(cfg.ensemble.members, cfg.ensemble.subset_sizes, cfg.ensemble.split_seed).items():
        mean = [sum(members[i][0][s] for i in ids) / k for s in range(len(members[0][0]))]
        metrics = evaluate_distributions(mean, data_split, run.data.labels, out / f"ensemble-{k}", n_boot,
                                         {**meta, "ensemble": ids})
        rows.append({"system": f"ensemble of {k}", **{m: metrics[m] for m in TABLE_METRICS}})
    for folder in sorted(p.parent for p in (run.run_dir / "students").glob("*/result.json")):
        student = load_student(run, folder)
        distributions, paths = predict_scored([student], data_split, pad_id=run.data.pad_id, progress=progress)
        metrics = evaluate_distributions(distributions, data_split, run.data.labels, out / folder.name, n_boot,
                                         {**meta, "student": folder.name}, paths)
        rows.append({"system": f"student ({folder.name})", **{m: metrics[m] for m in TABLE_METRICS}})
    atomic_write_json(out / "results.json", rows)
    atomic_write_text(out / "results.md", format_rows(rows, title=f"{run.run_dir.name}: {cfg.model.head}, {split}"))
    return rows


def _scored(run, count, data_split, progress, individual=False):
    """Per model: its distributions and, a CRF, its Viterbi paths (tasks.ner.predict_scored)."""
    models = [load_member(run, model_dir(run.run_dir, "individual" if individual else "member", i),
                          member_seed(run.cfg, i, individual))
              for i in range(count)]
    return [predict_scored([m], data_split, pad_id=run.data.pad_id, progress=progress) for m in models]


def load_student(run: EnsembleRun, folder: Path):
    """A student of the run from its model folder, on the run's (already loaded) encoder top layers."""
    spec = read_model_spec(folder)
    if spec["labels"] != run.data.labels:
        raise UserError(f"{folder}: a student of other labels ({spec['labels']}) than the run's")
    m = spec["model"]
    return load_weights(folder, Tagger(copy.deepcopy(run.data.top), len(spec["labels"]), m["head"], m["lstm_hidden"],
                                       m["dropout"]))


def evaluate_distributions(distributions: list[np.ndarray], data_split: TaggingSplit, labels: list[str], out_dir: Path,
                           n_boot: int, meta: dict, paths: list[np.ndarray] | None = None) -> dict:
    """Score per-sentence [words, labels] distributions of a split against its gold tags (the predicted labels:
    `paths`, a single CRF's Viterbi paths, else the argmax): writes OUT/predictions.npz (with `meta`),
    metrics.json and plots; returns the metrics."""
    preds = to_predictions(distributions, data_split, labels, meta, paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_predictions(out_dir / "predictions.npz", preds)
    return evaluate(preds, out_dir=out_dir, n_boot=n_boot)


def _mean_row(system: str, scores: list[dict]) -> dict:
    return {"system": system, **mean_and_se(scores, TABLE_METRICS)}


def format_rows(rows: list[dict], title: str = "") -> str:
    """A Markdown table in the paper's units (×100): mean ± s.e. for groups, value [95% CI] for ensembles."""
    lines = [f"**{title}** (values ×100)", ""] if title else []
    lines += ["| system | " + " | ".join(HEADERS[m] for m in TABLE_METRICS) + " |",
              "|---|" + "---|" * len(TABLE_METRICS)]
    for row in rows:
        cells = [cell(row[m]) for m in TABLE_METRICS]
        lines.append(f"| {row['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
