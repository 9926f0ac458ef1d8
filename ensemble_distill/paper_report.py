"""The tables and figures of `reproduce` (reproduce.py), from what its steps wrote, and one static HTML page.

    page = write_report(plan, selected, timings)        # OUT/tables/<name>.{md,csv}, OUT/figures/<name>.png,
                                                         # OUT/index.html: every experiment of the plan

Numbers come from each system's metrics.json under RUN/eval/<split>/<system>/ (pipeline.evaluate_run): a group of
models (individuals, or members when a run has none) is the mean ± s.e. of its models' values, every other row the
value [95% sentence-bootstrap interval]. Significance marks come from the paired sentence bootstrap
(calibration.compare) on the same sentences: a student is compared with the single model of its run (individual-0,
the first seed trained on all the data, or member-0) and with its teacher ensemble, in the baseline table with the
usual single model it was trained as, and Table 4's snapshot ensembles with the seed ensembles (MARKS; each
caption says what its marks mean: marks_note); a mark means p < 0.05, which needs at least 40 resamples (the
smallest p is 2/(B + 1): the smoke scale's 20 cannot reach it, and its captions say so). Comparisons are cached
in OUT/compare/ by the predictions files' sizes and times.
"""

import csv
import hashlib
import html
import io
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calibration.comparison import compare, format_p
from .calibration.plots import save_figure
from .calibration.report import ALPHA, DEBIASED, DEBIASED_NOTE, DESCRIPTIONS, PAPER_SCALE
from .config import to_toml, warm_start_budget
from .io_utils import atomic_write_json, atomic_write_text, read_json
from .runs import RESULT
from .tables import cell, duration, mean_and_se

NER_METRICS = ("f1_conlleval", "f1", "bs_plus", "bs_minus", "b_bs", "b_ece")
NMT_METRICS = ("bleu", "ece_1", "ece_5", "conf_gap")
HEADERS = {"f1_conlleval": "F1", "f1": "F1 strict", "bs_plus": "BS+", "bs_minus": "BS−", "b_bs": "B-BS",
           "b_ece": "B-ECE", "bleu": "BLEU", "ece_1": "ECE-1", "ece_5": "ECE-5", "conf_gap": "conf − acc",
           "ece_1_ts": "ECE-1 after TS (T)", "bytes_per_token": "bytes/token", "conll_f1": "CoNLL test F1",
           "conll_b_ece": "CoNLL test B-ECE"}
SCALE = {**PAPER_SCALE, "conll_f1": 100, "conll_b_ece": 100, "ece_1_ts": 100, "bytes_per_token": 1}  # in tables
COMPARED = {"ner": ("f1_conlleval", "b_ece"), "nmt": ("bleu", "ece_1")}
# Table 5: each calibration metric raw and after temperature scaling (TS keeps every argmax, so F1 is the raw one)
TS_METRICS = ("bs_plus", "bs_minus", "b_bs", "b_ece")
HEADERS |= {f"{m}_ts": f"{HEADERS[m]} TS" for m in TS_METRICS} | {"temperature": "T"}
SCALE |= {f"{m}_ts": SCALE[m] for m in TS_METRICS} | {"temperature": 1}
DECIMALS = {"temperature": 2, "bytes_per_token": 1}  # unscaled values (scale 1) other than BLEU's two decimals
# "*" marks the bias-corrected ECE-type columns' headers (report.DEBIASED_NOTE), so a cell's marks are others
MARKS = {"single": "¶", "teacher": "†", "usual": "‡", "seeds": "§", "unsmoothed": "◇"}
# what a mark says a row differs from; a table may say it more precisely (Table.mark_meanings)
MARK_MEANINGS = {"single": "the run's single model (individual-0, or member-0)",
                 "teacher": "the student's teacher ensemble",
                 "usual": "the usual single model (configs/conll-baseline.toml)",
                 "seeds": "the seed ensemble of its size",
                 "unsmoothed": "the same system of the run without label smoothing"}
F1_NOTE = "F1 is conlleval's (the paper's: an I-X that opens a span counts); F1 strict is seqeval's strict IOB2."
LANGUAGE = {"en": "English", "de": "German"}
KINDS = {"snapshots": "snapshot ensemble (SGDR)", "seeds": "seed ensemble, same budget per member"}  # Table 4's runs


@dataclass
class Row:
    group: str
    system: str
    stats: dict  # metric -> {value, se} or {value, ci_low, ci_high}
    path: Path | None = None  # its predictions file, for comparisons
    marks: dict = field(default_factory=dict)  # metric -> marks
    notes: dict = field(default_factory=dict)  # metric -> text after the value (a temperature)


@dataclass
class Table:
    name: str
    title: str
    metrics: tuple[str, ...]
    rows: list[Row]
    caption: str = ""
    comparisons: list[dict] = field(default_factory=list)
    split: str = "test"  # the split every row is scored on
    mark_meanings: dict = field(default_factory=dict)  # kind -> what its mark means here, over MARK_MEANINGS
    # further blocks of rows under the same title, each with its own columns (Table 4: translation's, then NER's)
    more: list[tuple[tuple[str, ...], list[Row]]] = field(default_factory=list)

    @property
    def blocks(self) -> list[tuple[tuple[str, ...], list[Row]]]:
        """(metrics, rows) of each block of the table, in order."""
        return [(self.metrics, self.rows), *self.more]


# ----------------------------------------------------------------------------------------------------------------
# Reading a run's evaluation


def metrics_of(folder: Path) -> dict:
    """{metric: stat} of a system folder's metrics.json."""
    return read_json(folder / "metrics.json", "rerun reproduce to evaluate again")["metrics"]


def group_row(group: str, label: str, folders: list[Path], metrics) -> Row:
    """Mean ± s.e. over several models' metrics."""
    return Row(group, f"{label} ({len(folders)}, mean ± s.e.)", mean_and_se([metrics_of(f) for f in folders], metrics))


def system_row(group: str, label: str, folder: Path, metrics) -> Row:
    stats = metrics_of(folder)
    return Row(group, label, {m: stats[m] for m in metrics}, folder / "predictions.npz")


def _runs(experiment) -> list:
    return list(dict.fromkeys(s.run for s in experiment.steps))


def _students(experiment, run, **match) -> list:
    return [s for s in dict.fromkeys(experiment.steps) if s.kind == "distill" and s.run == run
            and all(getattr(s, k) == v for k, v in match.items())]


def _is_usual(run) -> bool:
    """Whether the run is a usual single model (configs/conll-baseline.toml; -long: twice its epochs)."""
    return "baseline" in run.name.split("-")


def _usual_name(run) -> str:
    return "usual single model" + (", twice the epochs" if run.name.endswith("-long") else "")


def _group_name(run) -> str:
    parts = run.name.split("-")
    if _is_usual(run):
        return f"{LANGUAGE[parts[1]]}, {_usual_name(run)}"
    if run.task == "ner":
        return f"{LANGUAGE[parts[1]]}, {parts[2].upper()}" + (", label smoothing 0.1" if "ls" in parts else "") + (
            f", {KINDS[parts[3]]}" if parts[-1] in KINDS else "")
    if parts[3] in KINDS:
        return f"{parts[1]}→{parts[2]}, {KINDS[parts[3]]}"
    return f"{parts[1]}→{parts[2]}, {parts[3].upper()}" + (", no averaging" if "noavg" in parts else "")


def _singles(cfg, ev: Path) -> tuple[str, list[Path]]:
    """The run's single models' role (individual, or member when it has no individuals) and eval folders."""
    role = "individual" if cfg.ensemble.individuals else "member"
    return role, [ev / f"{role}-{i}" for i in range(cfg.ensemble.individuals or cfg.ensemble.members)]


def _single(cfg) -> str:
    return "individual-0" if getattr(cfg.ensemble, "individuals", 0) else "member-0"


# ----------------------------------------------------------------------------------------------------------------
# Tables


def ner_table(plan, experiment, split: str) -> Table:
    """Per NER run: individuals (mean ± s.e.), each nested ensemble, each ensemble's IID student."""
    rows, pairs = [], []
    for run in _runs(experiment):
        cfg, ev = plan.config(run), plan.run_dir(run) / "eval" / split
        group = _group_name(run)
        role, folders = _singles(cfg, ev)
        rows.append(group_row(group, f"{role}s", folders, NER_METRICS))
        for k in cfg.ensemble.subset_sizes:
            rows.append(system_row(group, f"ensemble of {k}", ev / f"ensemble-{k}", NER_METRICS))
        for step in _students(experiment, run, temperature_scaled=False):
            rows.append(system_row(group, student_label(step), ev / step.student, NER_METRICS))
            pairs += [(rows[-1], ev / _single(cfg), "single"), (rows[-1], ev / f"ensemble-{step.members}", "teacher")]
    data = dict.fromkeys(MEMBER_DATA_SAID[plan.config(run).ensemble.member_data] for run in _runs(experiment))
    return Table(experiment.name, experiment.title, NER_METRICS, rows, comparisons=_compare(plan, pairs, "ner"),
                 split=split, caption=f"Members train on {'; '.join(data)}.")


# what a member trains on, by ensemble.member_data (ensemble.member_sentences)
MEMBER_DATA_SAID = {"nine_tenths": "9/10 of the training data, early-stopping on the other tenth (the paper's)",
                    "eight_tenths": "8/10 of the training data, early-stopping on a ninth tenth and leaving the "
                                    "last, the students' early-stopping tenth, to no member"}


def student_label(step) -> str:
    """A student's row label: its teacher and, for a student trained with another run's recipe, which."""
    teacher = f"{'TS ' if step.temperature_scaled else ''}ensemble of {step.members}"
    recipe = f", trained as the {_usual_name(step.recipe)}" if step.recipe is not None else ""
    beta = f", β = {step.beta:g}" if step.beta is not None else ""
    smoothing = f", label smoothing {step.label_smoothing:g}" if step.label_smoothing is not None else ""
    return f"IID student of the {teacher}{recipe}{beta}{smoothing}"


def label_smoothing_table(plan, experiment) -> Table:
    """Table 7: ner_table of the run without label smoothing and the run with it, each system of the latter
    (ensembles, students) compared with the same system of the former (◇): does smoothing the members change
    what their ensembles and students score."""
    table = ner_table(plan, experiment, "test")
    plain, smoothed = _runs(experiment)
    unsmoothed = plan.run_dir(plain) / "eval" / "test"
    pairs = [(row, unsmoothed / row.path.parent.name, "unsmoothed") for row in table.rows
             if row.group == _group_name(smoothed) and row.path is not None]
    table.comparisons += _compare(plan, pairs, "ner")
    return table


def baseline_table(plan, experiment) -> Table:
    """The usual single models beside each English run's largest ensemble and its IID students, each student
    compared with its teacher and with the usual model it was trained as (the first usual model when it has the
    members' recipe)."""
    bases = [r for r in _runs(experiment) if _is_usual(r)]
    usual = {r: plan.run_dir(r) / "eval" / "test" / "individual-0" for r in bases}
    rows, pairs = [system_row(_group_name(r), "usual single model", usual[r], NER_METRICS) for r in bases], []
    for run in (r for r in _runs(experiment) if r not in usual):
        k, ev = plan.config(run).ensemble.subset_sizes[-1], plan.run_dir(run) / "eval" / "test"
        rows.append(system_row(_group_name(run), f"ensemble of {k}", ev / f"ensemble-{k}", NER_METRICS))
        for step in _students(experiment, run, members=k, temperature_scaled=False):
            rows.append(system_row(_group_name(run), student_label(step), ev / step.student, NER_METRICS))
            pairs += [(rows[-1], usual.get(step.recipe, usual[bases[0]]), "usual"),
                      (rows[-1], ev / f"ensemble-{k}", "teacher")]
    return Table(experiment.name, experiment.title, NER_METRICS, rows, comparisons=_compare(plan, pairs, "ner"),
                 mark_meanings={"usual": "the usual single model it was trained as (the first, for the members' "
                                         "recipe)"})


def nmt_table(plan, experiment, runs=None) -> Table:
    """Per translation run (`runs`, default the experiment's): individuals (mean ± s.e.), each nested ensemble,
    students at V' = distill.top_k; each also temperature-scaled on dev (ECE-1 after TS and T)."""
    metrics = (*NMT_METRICS, "ece_1_ts")
    rows, pairs = [], []
    for run in runs or _runs(experiment):
        cfg, ev = plan.config(run), plan.run_dir(run) / "eval" / "test"
        group = _group_name(run)
        members = [ev / f"member-{i}" for i in range(cfg.ensemble.members)]
        row = group_row(group, _members_label(run), members, NMT_METRICS)
        ts = [_ts(f) for f in members]
        row.stats["ece_1_ts"] = mean_and_se([{"v": s} for s, _ in ts], ["v"])["v"]
        row.notes["ece_1_ts"] = f" (T {np.mean([t for _, t in ts]):.2f})"
        rows.append(row)
        systems = [(f"ensemble of {k}", f"ensemble-{k}", None) for k in cfg.ensemble.subset_sizes]
        systems += [(f"student of ensemble of {s.members} (V' = {s.top_k})", s.student, s.members)
                    for s in _students(experiment, run, top_k=cfg.distill.top_k, epsilon=0.0)]
        for label, name, teacher in systems:
            row = system_row(group, label, ev / name, NMT_METRICS)
            row.stats["ece_1_ts"], t = _ts(ev / name)
            row.notes["ece_1_ts"] = f" (T {t:.2f})"
            rows.append(row)
            if teacher:
                pairs += [(row, ev / "member-0", "single"), (row, ev / f"ensemble-{teacher}", "teacher")]
    averaging = dict.fromkeys(_averaging(plan.config(run).train, "rounds") for run in runs or _runs(experiment))
    return Table(experiment.name, experiment.title, metrics, rows, comparisons=_compare(plan, pairs, "nmt"),
                 caption=f"Weight averaging: {'; '.join(averaging)}.")


def _members_label(run) -> str:
    """A run's group of single models: the SGDR snapshots, the seed members of Table 4, or individuals."""
    kind = run.name.split("-")[-1]
    return {"snapshots": "snapshots", "seeds": "members"}.get(kind, "individuals")


def _averaging(t, unit: str) -> str:
    """How a training config `t` (TranslationTraining or NER Training) combines its checkpoints, said for a
    caption; `unit` is its validation interval, plural ("rounds", "epochs")."""
    if getattr(t, "averaging", "none") == "swa":
        return f"SWA (torch.optim.swa_utils) from {unit[:-1]} {t.swa_start}"
    if getattr(t, "average_last", 1) > 1:
        return (f"the mean of the last {t.average_last} {unit}' weights up to the best one (train.average_last; "
                "checkpoint averaging, standing in for the paper's SWA)")
    return f"none (the best {unit[:-1]}'s weights)"


def ts_stats(folder: Path) -> dict:
    """A system's F1, its calibration metrics raw and temperature-scaled (folder-ts, <metric>_ts), and its T."""
    raw, (scaled, t) = metrics_of(folder), _ts_record(folder)
    return ({"f1_conlleval": raw["f1_conlleval"]} | {m: raw[m] for m in TS_METRICS}
            | {f"{m}_ts": scaled[m] for m in TS_METRICS} | {"temperature": {"value": t}})


def ts_row(group: str, label: str, folder: Path) -> Row:
    return Row(group, label, ts_stats(folder), folder / "predictions.npz")


def ts_table(plan, experiment) -> Table:
    """Table 5: per IID run, the individuals (mean ± s.e.), each nested ensemble, each ensemble's student and the
    student of the largest temperature-scaled ensemble, each raw and temperature-scaled side by side (T fitted on
    dev by evaluation.fit_temperatures), and the usual single model where the plan has it. Each student is
    compared raw with the run's single model and its teacher (the TS ensemble for the TS student), and scaled
    with the single model + TS and the ensemble + TS; on English also with the usual single model (raw, + TS)."""
    metrics = ("f1_conlleval", *(x for m in TS_METRICS for x in (m, f"{m}_ts")), "temperature")
    bases = [r for r in _runs(experiment) if _is_usual(r)]
    usual = [plan.run_dir(r) / "eval" / "test" / "individual-0" for r in bases]
    rows = [ts_row(_group_name(r), "usual single model", u) for r, u in zip(bases, usual)]
    pairs = []
    for run in (r for r in _runs(experiment) if r not in bases):
        cfg, ev = plan.config(run), plan.run_dir(run) / "eval" / "test"
        group, single = _group_name(run), ev / _single(cfg)
        role, folders = _singles(cfg, ev)
        rows.append(Row(group, f"{role}s ({len(folders)}, mean ± s.e.)",
                        mean_and_se([ts_stats(f) for f in folders], metrics)))
        rows += [ts_row(group, f"ensemble of {k}", ev / f"ensemble-{k}") for k in cfg.ensemble.subset_sizes]
        for step in _students(experiment, run):
            teacher = ev / f"ensemble-{step.members}"
            scaled = "TS " if step.temperature_scaled else ""
            rows.append(ts_row(group, student_label(step), ev / step.student))
            versus = [(single, "single"), (Path(f"{teacher}{'-ts' if scaled else ''}"), "teacher")]
            versus += [(u, "usual") for u in usual if run.name.startswith("ner-en-")]
            pairs += [(rows[-1], other, kind) for other, kind in versus]
            pairs += [(rows[-1], other if kind != "teacher" else teacher, kind, "-ts") for other, kind in versus]
    return Table(experiment.name, experiment.title, metrics, rows, comparisons=_compare(plan, pairs, "ner"))


def snapshot_table(plan, experiment) -> Table:
    """Table 4, a block per task, each with its columns: the snapshot run and the seed run of the same size and
    budget per member, each run's members (mean ± s.e.) and ensemble (translation as Table 2 has them, with ECE-1
    after TS). Each snapshot ensemble is compared with the seed ensemble (§) by the paired bootstrap, NER's also
    with the seed run's single model (¶), since the paper found its NER snapshots no better than single models.
    The caption gives each task's budgets and weight averaging."""
    runs = _runs(experiment)
    (snapshots, seeds), (ner_snapshots, ner_seeds) = ([r for r in runs if r.task == task] for task in ("nmt", "ner"))
    table = nmt_table(plan, experiment, [snapshots, seeds])
    rows = []
    for run in (ner_snapshots, ner_seeds):
        cfg, ev = plan.config(run), plan.run_dir(run) / "eval" / "test"
        k = cfg.ensemble.subset_sizes[-1]
        members = [ev / f"member-{i}" for i in range(cfg.ensemble.members)]
        rows += [group_row(_group_name(run), _members_label(run), members, NER_METRICS),
                 system_row(_group_name(run), f"ensemble of {k}", ev / f"ensemble-{k}", NER_METRICS)]
    table.more.append((NER_METRICS, rows))
    single = plan.run_dir(ner_seeds) / "eval" / "test" / _single(plan.config(ner_seeds))
    table.comparisons += _compare(plan, [_versus_seeds(plan, table.rows, snapshots, seeds)], "nmt")
    table.comparisons += _compare(plan, [_versus_seeds(plan, rows, ner_snapshots, ner_seeds),
                                         (rows[1], single, "single")], "ner")
    table.caption = " ".join(_snapshot_budgets(plan.config(run), plan.config(other), run.task,
                                               _trained(plan.run_dir(other), plan.config(other).ensemble.members))
                             for run, other in ((snapshots, seeds), (ner_snapshots, ner_seeds)))
    table.mark_meanings = {"single": "the seed run's single model (member-0; NER)"}
    return table


def _versus_seeds(plan, rows: list[Row], snapshots, seeds) -> tuple:
    """(the snapshot run's row of its ensemble of K, the seed run's ensemble-K folder, "seeds"): a _compare pair."""
    k = plan.config(snapshots).ensemble.subset_sizes[-1]
    (row,) = [r for r in rows if r.group == _group_name(snapshots) and r.system == f"ensemble of {k}"]
    return row, plan.run_dir(seeds) / "eval" / "test" / f"ensemble-{k}", "seeds"


def _trained(run_dir: Path, members: int) -> list[tuple[int, int]]:
    """(epochs or rounds trained, the best one) of each member of a seed run, from its result.json."""
    results = [read_json(run_dir / "members" / f"member-{i}" / RESULT, "rerun reproduce") for i in range(members)]
    return [(r["epochs"], r["best_epoch"]) for r in results]


def _snapshot_budgets(cfg, seeds_cfg, task: str, trained: list[tuple[int, int]]) -> str:
    """A snapshot run's budgets and weight averaging (its config `cfg`; its seed run's `seeds_cfg`, whose members
    trained (units, best unit) `trained`: early stopping may end them before the budget, where the trajectory's
    cycles always run), for Table 4's caption."""
    t, k, seeds = cfg.train, cfg.ensemble.members, seeds_cfg.train
    budget_key, cycle_key = t.SNAPSHOT_KEYS
    unit = budget_key.removeprefix("max_")

    def units(n: int) -> str:
        return f"{n} {unit if n != 1 else unit[:-1]}"

    size = f" of {t.updates_per_round} updates" if task == "nmt" else ""
    return (f"{'Translation' if task == 'nmt' else 'NER'}: each seed member trains up to "
            f"{units(getattr(seeds, budget_key))}{size} (early stopping, patience {seeds.patience}): the seed "
            f"members trained {', '.join(str(n) for n, _ in trained)} {unit} (best on their held-out data: "
            f"{', '.join(str(b) for _, b in trained)}); the snapshot "
            f"trajectory up to {units(getattr(t, budget_key))}: a warm start of up to {units(warm_start_budget(t, k))} "
            f"(member 0's training, early stopping), then {k} cycles of {units(getattr(t, cycle_key))} from "
            f"{t.cycle_lr:g} down towards {t.cycle_min_lr:g}. Weight averaging of the seed members: "
            f"{_averaging(seeds, unit)}, of the warm start: {_averaging(t, unit)}; the snapshots are the "
            "cycles' last weights, not averaged.")


def _ts(folder: Path) -> tuple[dict, float]:
    """ECE-1 of the temperature-scaled system (folder-ts), and its T."""
    metrics, t = _ts_record(folder)
    return metrics["ece_1"], t


def _ts_record(folder: Path) -> tuple[dict, float]:
    """The temperature-scaled system's (folder-ts) metrics, and its T."""
    record = read_json(Path(f"{folder}-ts") / "metrics.json", "rerun reproduce to evaluate again")
    return record["metrics"], record["predictions_meta"]["temperature"]


def truncation_table(plan, experiment) -> Table:
    """The students of the largest ensemble at each truncation, with the store's bytes per token."""
    (run,) = _runs(experiment)
    k = plan.config(run).ensemble.subset_sizes[-1]
    table = read_json(plan.run_dir(run) / "eval" / "test" / "truncation.json", "rerun reproduce to evaluate again")
    ev, rows = plan.run_dir(run) / "eval" / "test", []
    for entry in table:
        if entry["student"].startswith(f"student-{k}-") and "sampled" not in entry["student"]:
            row = Row(_group_name(run), entry["truncation"], {m: entry[m] for m in NMT_METRICS},
                      ev / entry["student"] / "predictions.npz")
            row.stats["bytes_per_token"] = {"value": entry["bytes_per_token"]}
            rows.append(row)
    return Table(experiment.name, experiment.title, (*NMT_METRICS, "bytes_per_token"), rows)


def domain_shift_table(plan, experiment) -> Table:
    """Each English system on WNUT-17 test (mapped types) beside its CoNLL-2003 test F1 and B-ECE; each student
    compared with its run's individual and its teacher ensemble there."""
    rows, pairs, folders = [], [], {}
    predicted = [s for s in experiment.steps if s.kind == "predict"]
    for step in predicted:
        folder = folders[step.run, step.system] = plan.predict_dir(step)
        row = system_row(_group_name(step.run), step.system, folder, ("f1_conlleval", "f1", "b_ece", "bs_plus"))
        in_domain = metrics_of(plan.run_dir(step.run) / "eval" / "test" / step.system)
        row.stats |= {"conll_f1": in_domain["f1_conlleval"], "conll_b_ece": in_domain["b_ece"]}
        rows.append(row)
        if step.system.startswith("student-"):
            teacher = f"ensemble-{step.system.split('-')[1]}"
            pairs += [(row, folders[step.run, "individual-0"], "single"), (row, folders[step.run, teacher], "teacher")]
    table = Table(experiment.name, experiment.title, ("f1_conlleval", "f1", "b_ece", "bs_plus", "conll_f1",
                                                      "conll_b_ece"), rows, comparisons=_compare(plan, pairs, "ner"))
    return table


def _compare(plan, pairs, task: str) -> list[dict]:
    """Paired bootstrap of each (row, other system's folder, kind[, "-ts"]): the comparison rows, and marks on
    the row. With "-ts" both systems are temperature-scaled (folder-ts) and the calibration metrics are compared
    (F1 is the raw one), marked and listed as <metric>_ts."""
    out = []
    for row, other, kind, *ts in pairs:
        suffix, a, b = "", row.path, other / "predictions.npz"
        metrics = COMPARED[task]
        if ts:
            suffix, a, b = "_ts", Path(f"{a.parent}-ts") / a.name, Path(f"{other}-ts") / b.name
            metrics = metrics[1:]
        for r in cached_compare(plan, a, b, metrics):
            r = r | {"metric": r["metric"] + suffix}
            if r["significant"]:
                row.marks[r["metric"]] = row.marks.get(r["metric"], "") + MARKS[kind]
            out.append({"group": row.group, "system": row.system, "kind": kind,
                        "versus": f"{kind} ({_system_name(b)})", **r})
    return out


def _system_name(predictions: Path) -> str:
    """A predictions file's system, for the comparisons' "versus": "<run> <system>" for RUN/eval/<split>/<system>/
    (the run says which usual model, or whose single model), else its folder's name (wnut17's name the run)."""
    folder = predictions.parent
    return f"{folder.parents[2].name} {folder.name}" if folder.parents[1].name == "eval" else folder.name


def cached_compare(plan, a: Path, b: Path, metrics) -> list[dict]:
    """calibration.compare of two predictions files, cached under OUT/compare/ by their sizes and times."""
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (a, b)]
    # "reported a, b": rows cached before compare's a and b became each system's reported (bias-corrected) value
    key = hashlib.sha256(json.dumps([stamp, list(metrics), plan.scale.n_boot, "reported a, b"]).encode()).hexdigest()
    path = plan.out / "compare" / f"{key[:24]}.json"
    if path.is_file():
        return read_json(path, "delete it (a cached comparison)")
    rows = compare(a, b, list(metrics), n_boot=plan.scale.n_boot, progress=False)
    atomic_write_json(path, rows)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Figures


def figure_ensemble_size(plan, experiment, path: Path) -> None:
    """BLEU and ECE-1 of each nested ensemble and its student against the ensemble size, with the individuals'
    mean ± s.e. as a band (paper Figure 1)."""
    from matplotlib.figure import Figure

    (run,) = _runs(experiment)
    cfg, ev = plan.config(run), plan.run_dir(run) / "eval" / "test"
    sizes = cfg.ensemble.subset_sizes
    students = {s.members: s.student for s in _students(experiment, run)}
    members = mean_and_se([metrics_of(ev / f"member-{i}") for i in range(cfg.ensemble.members)], ("bleu", "ece_1"))
    fig = Figure(figsize=(9, 4))
    for ax, metric in zip(fig.subplots(1, 2), ("bleu", "ece_1")):
        scale = SCALE[metric]
        mean, se = scale * members[metric]["value"], scale * members[metric]["se"]
        ax.axhspan(mean - se, mean + se, color="tab:gray", alpha=0.3, label="individuals, mean ± s.e.")
        ax.axhline(mean, color="tab:gray", linewidth=1)
        for label, names, color in (("ensemble", {k: f"ensemble-{k}" for k in sizes}, "tab:blue"),
                                    ("student", students, "tab:orange")):
            ks = [k for k in sizes if k in names]
            stats = [metrics_of(ev / names[k])[metric] for k in ks]
            values = np.array([scale * s["value"] for s in stats])
            errors = np.array([[values[i] - scale * s["ci_low"], scale * s["ci_high"] - values[i]]
                               for i, s in enumerate(stats)]).T.reshape(2, -1)
            ax.errorbar(ks, values, yerr=errors, marker="o", capsize=3, color=color, label=f"{label} (95% CI)")
        ax.set(xlabel="ensemble size", ylabel=HEADERS[metric] + ("" if metric == "bleu" else " (×100)"),
               xticks=sizes, title=HEADERS[metric])
        ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def figure_reliability(plan, experiment, path: Path) -> None:
    """Top-1 reliability of member-0 and the largest ensemble, per run (CE and LS; paper Figure 2)."""
    from .calibration.plots import reliability_curves
    from .calibration.report import top1_events
    from .predictions import load_predictions

    panels = {}
    for run in _runs(experiment):
        cfg, ev = plan.config(run), plan.run_dir(run) / "eval" / "test"
        k = cfg.ensemble.subset_sizes[-1]
        panels[_group_name(run)] = {label: top1_events(load_predictions(ev / name / "predictions.npz"))
                                    for label, name in (("individual (member-0)", "member-0"),
                                                        (f"ensemble of {k}", f"ensemble-{k}"))}
    reliability_curves(panels, path)


def figure_pr(plan, experiment, path: Path) -> None:
    """PR curves with their areas of the single IID and CRF models and the students of each (paper Figure 3)."""
    from .calibration.plots import pr_curve_plot
    from .calibration.report import pr_curve
    from .predictions import load_predictions

    curves = {}
    for run in _runs(experiment):
        cfg, ev = plan.config(run), plan.run_dir(run) / "eval" / "test"
        k, head = cfg.ensemble.subset_sizes[-1], cfg.model.head.upper()
        for label, name in ((f"{head} {_single(cfg)}", _single(cfg)), (f"IID student of {head} ensemble of {k}",
                                                                        f"student-{k}")):
            curves[label] = pr_curve(load_predictions(ev / name / "predictions.npz"))
    pr_curve_plot(curves, path, title="Precision-recall of entity-type confidences (test)")


TABLES = {"table1": lambda p, e: ner_table(p, e, "test"), "table8": lambda p, e: ner_table(p, e, "dev"),
          "table7": label_smoothing_table, "table2": nmt_table, "table6": nmt_table,
          "table3": truncation_table, "domain-shift": domain_shift_table, "baseline": baseline_table,
          "table5": ts_table, "table4": snapshot_table}
FIGURES = {"figure1": figure_ensemble_size, "figure2": figure_reliability, "figure3": figure_pr}
CAPTIONS = {
    "table1": "Individuals train on all the training data, students on 9/10. Single CRF models are scored by "
              "their Viterbi path, ensembles by the argmax of the mean marginals.",
    "table8": "The systems of Table 1 on dev.",
    "table7": "German is Europarl NER (the paper's Table 7 is CoNLL-2003 German, which could not be obtained here). "
              "As the paper's, the label-smoothed students (α on their NLL term, distill.label_smoothing) distil "
              "the ensembles without and with it; the run without it also has Table 1's students.",
    "baseline": "configs/conll-baseline.toml: what a user trains instead of an ensemble. The second usual model "
                "trains twice the epochs with patience 2, and so does "
                "the CRF ensemble's student trained as it: the lever student budget, with the same budget on both "
                "sides. A student \"trained as the usual single model\" has its training settings and encoder cut "
                "(the layers it tunes, AdamW, linear schedule) and the ensemble's distillation targets; the other "
                "students have the members'. The student with β = 1 learns from the ensemble's distributions "
                "alone (the paper's NER β is 5/6): the lever β, to be chosen on dev (each student's dev F1, its "
                "early-stopping score, is in its result.json).",
    "table2": "Students distil the CE ensembles at V' = "
              "distill.top_k. T is fitted on dev by NLL.",
    "table4": "Each task's snapshot and seed runs are one config (translation: configs/multi30k-snapshots.toml; "
              "NER: configs/conll-snapshots.toml, Table 1's English IID settings) with ensemble.kind = \"snapshots\" "
              "or \"seeds\". A snapshot ensemble is one training of one seed member's budget: a warm start (member "
              "0's training, stopped the cycles early), then one cosine cycle with warm restarts per member "
              "(torch's CosineAnnealingWarmRestarts, T_mult = 1), each cycle's last weights a member. Not the "
              "paper's: its cycles are 2,000 updates, here a round or an epoch; the cycles' rates are this "
              "project's choice; the optimiser starts afresh at the first cycle (the paper does not say).",
    "table5": "Raw and TS columns side by side: TS divides each system's log-probabilities by its T, fitted on "
              "dev by NLL over every dev word (a group: its models' mean T); F1 is unchanged by TS, since an "
              "ensemble is scaled after averaging (the paper's ensemble F1 moves under TS, 83.51 to 83.32, so it "
              "must have scaled the members before averaging; it is silent on how). German is Europarl NER (the "
              "paper's Table 5 is CoNLL-2003 German, which could not be obtained here). The students "
              "of the ensemble of k distil the raw ensemble, the student of the TS ensemble of k the temperature-"
              "scaled one. Raw columns compare each student with the raw systems (its teacher: the ensemble it "
              "distils), TS columns the scaled student with the scaled systems (its teacher: the ensemble of k "
              "+ TS). The usual single model is English only.",
    "table6": "Table 2's design without weight averaging (Table 2's caption says which averaging it uses in "
              "place of the paper's SWA). The paper's Table 6 is WMT14 English→German; here it is the plan's "
              "first direction on Multi30k.",
    "table3": "Each student distils the largest CE ensemble through a store truncated at V' entries a token "
              "(adaptive: the fewest entries holding 1 − ε of the mass, at most the largest V').",
    "domain-shift": "WNUT-17 types mapped onto CoNLL-2003's: person → PER, location → LOC, corporation and group → "
                    "ORG, creative-work and product → MISC (reproduce.WNUT17_TYPES). CoNLL test columns: the same "
                    "system in domain.",
}


# ----------------------------------------------------------------------------------------------------------------
# Writing: Markdown, CSV, HTML


def _cell(stat: dict, metric: str) -> str:
    scale = SCALE.get(metric, 100)
    if not math.isfinite(stat.get("value", float("nan"))):
        return "–"
    if "ci_low" in stat or "se" in stat:
        return cell(stat, scale)
    return f"{scale * stat['value']:.{DECIMALS.get(metric, 2)}f}"


def cells(metrics, row: Row) -> list[str]:
    return [_cell(row.stats[m], m) + row.notes.get(m, "") + row.marks.get(m, "") for m in metrics]


def header(metric: str) -> str:
    """A column's header: HEADERS', marked * for an ECE-type metric (bias-corrected; DEBIASED_NOTE)."""
    return HEADERS[metric] + ("*" if debiased(metric) else "")


def debiased(metric: str) -> bool:
    """Whether a table metric is an ECE-type one (its raw, TS or CoNLL-test column), reported bias-corrected."""
    return metric.removeprefix("conll_").removesuffix("_ts") in DEBIASED


def caption(plan, table: Table) -> str:
    metrics = {m for block, _ in table.blocks for m in block}
    corrected = DEBIASED_NOTE if any(debiased(m) for m in metrics) else ""
    return " ".join(filter(None, [CAPTIONS.get(table.name, ""), table.caption,
                                  F1_NOTE if "f1_conlleval" in metrics else "",
                                  f"Every row is scored on its dataset's {table.split} split.", marks_note(table),
                                  significance_floor(plan.scale.n_boot) if table.comparisons else "",
                                  "Values ×100 except BLEU, bytes/token and T.", corrected, plan.scale.shrunk + "."]))


def marks_note(table: Table) -> str:
    """What each mark of the table says, for the kinds of comparison it has ("" when none)."""
    kinds = {c["kind"] for c in table.comparisons}
    meanings = MARK_MEANINGS | table.mark_meanings
    said = [f"{MARKS[k]} {'marks a value that differs significantly from ' if not i else 'from '}{meanings[k]}"
            for i, k in enumerate(k for k in MARKS if k in kinds)]
    return "; ".join(said) + f": paired sentence bootstrap, p < {ALPHA:g}." if said else ""


def significance_floor(n_boot: int) -> str:
    """A caption's warning when B = `n_boot` resamples cannot give p < ALPHA: the bootstrap's smallest p-value is
    2/(B + 1) (calibration.bootstrap, the +1 terms of Davison & Hinkley 1997); "" when they can."""
    floor = 2 / (n_boot + 1)
    if floor < ALPHA:
        return ""
    return (f"With {n_boot} bootstrap resamples the smallest p is 2/{n_boot + 1} = {floor:.3f}: no difference can "
            f"reach p < {ALPHA:g}, so nothing is marked; this scale checks the pipeline.")


def markdown(plan, table: Table) -> str:
    lines = [f"**{table.title}**"]
    for metrics, rows in table.blocks:
        lines += ["", "| setting | system | " + " | ".join(header(m) for m in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        lines += [f"| {r.group} | {r.system} | " + " | ".join(cells(metrics, r)) + " |" for r in rows]
    return "\n".join(lines + ["", caption(plan, table)]) + "\n"


def csv_text(table: Table) -> str:
    """One line per (system, metric): raw values (fractions; BLEU 0-100), interval or s.e., marks; then the
    comparisons."""
    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(["setting", "system", "metric", "value", "ci_low", "ci_high", "se", "significant_vs"])
    for metrics, rows in table.blocks:
        for r, m in ((r, m) for r in rows for m in metrics):
            s = r.stats[m]
            w.writerow([r.group, r.system, m, s.get("value"), s.get("ci_low", ""), s.get("ci_high", ""),
                        s.get("se", ""), r.marks.get(m, "")])
    if table.comparisons:
        w.writerow([])
        w.writerow(["setting", "system", "versus", "metric", "a", "b", "difference", "ci_low", "ci_high",
                    "p_value", "significant"])
        for c in table.comparisons:
            w.writerow([c[k] for k in ("group", "system", "versus", "metric", "a", "b", "difference", "ci_low",
                                       "ci_high", "p_value", "significant")])
    return buffer.getvalue()


def html_table(plan, table: Table) -> str:
    e, text = html.escape, ""
    for metrics, rows in table.blocks:
        head = "".join(f"<th>{e(header(m))}</th>" for m in metrics)
        body = "".join(f"<tr><td>{e(r.group)}</td><td>{e(r.system)}</td>"
                       + "".join(f"<td>{e(c)}</td>" for c in cells(metrics, r)) + "</tr>" for r in rows)
        text += f"<table><thead><tr><th>setting</th><th>system</th>{head}</tr></thead><tbody>{body}</tbody></table>"
    text += f"<p class='caption'>{e(caption(plan, table))}</p>"
    if table.comparisons:
        rows = "".join(
            f"<tr><td>{e(c['group'])}</td><td>{e(c['system'])}</td><td>{e(c['versus'])}</td>"
            f"<td>{e(HEADERS.get(c['metric'], c['metric']))}</td><td>{_signed(c, 'difference')}</td>"
            f"<td>[{_signed(c, 'ci_low')}, {_signed(c, 'ci_high')}]</td><td>{format_p(c['p_value'])}</td></tr>"
            for c in table.comparisons)
        text += ("<details><summary>paired bootstrap comparisons</summary><table><thead><tr><th>setting</th>"
                 "<th>system</th><th>versus</th><th>metric</th><th>difference</th><th>95% CI</th><th>p</th></tr>"
                 f"</thead><tbody>{rows}</tbody></table></details>")
    return text


def _signed(c: dict, key: str) -> str:
    return f"{SCALE.get(c['metric'], 100) * c[key]:+.2f}"


# A script in the page: each image that fails to load is marked, and the counts go on <body> (the test reads them
# through headless Chromium's --dump-dom).
CHECK_IMAGES = """
window.addEventListener("load", function () {
  var images = Array.from(document.images), broken = images.filter(function (i) { return !i.naturalWidth; });
  broken.forEach(function (i) { i.classList.add("broken"); i.alt = "missing image: " + i.getAttribute("src"); });
  document.body.dataset.images = images.length; document.body.dataset.broken = broken.length;
});
"""
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:90%}td,th{border:1px solid #bbb;padding:2px 6px}
th{background:#eee}td:nth-child(n+3){text-align:right;white-space:nowrap}.caption{color:#555;font-size:90%}
img{max-width:100%}img.broken{border:2px solid red}.status{color:#a60}pre{background:#f6f6f6;padding:.5em;
overflow-x:auto;font-size:80%}"""


def write_report(plan, selected, timings: dict) -> Path:
    """OUT/index.html over every experiment of the plan (not only the `selected` ones this call ran, so that
    processes with different --only share one OUT): a done experiment's table (Markdown, CSV) or figure (PNG),
    written from what is on disk, the others said not run yet (selected or not) or why not; then the settings
    and versions. The table or figure file of an experiment that is not done (stale: a model it reads was
    trained again or removed) is deleted, so none stays looking current. Returns the page's path."""
    from .runs import versions

    e, sections = html.escape, []
    for experiment in plan.experiments:
        missing = experiment.missing
        done = not missing and all(plan.done(s) for s in experiment.steps)
        section = f"<section id='{e(experiment.name)}'><h2>{e(experiment.title)}</h2>"
        if not done:
            for path in _outputs(plan, experiment):
                path.unlink(missing_ok=True)
        if missing:
            section += "<p class='status'>not run: needs " + e(", ".join(missing)) + "</p>"
        elif not done:
            section += "<p class='status'>not run yet (steps left: rerun reproduce" + (
                ")" if experiment in selected else f" --only {e(experiment.name)}; not selected this time)") + "</p>"
        elif experiment.name in FIGURES:
            (path,) = _outputs(plan, experiment)
            path.parent.mkdir(parents=True, exist_ok=True)
            FIGURES[experiment.name](plan, experiment, path)
            section += f"<img src='figures/{e(path.name)}' alt='{e(experiment.title)}'>"
            section += f"<p class='caption'>{e(plan.scale.shrunk)}.</p>"
        else:
            table = TABLES[experiment.name](plan, experiment)
            for path, text in zip(_outputs(plan, experiment), (markdown(plan, table), csv_text(table))):
                atomic_write_text(path, text)
            section += html_table(plan, table) + (f"<p><a href='tables/{e(experiment.name)}.md'>Markdown</a> · "
                                                  f"<a href='tables/{e(experiment.name)}.csv'>CSV</a></p>")
        sections.append(section + "</section>")
    page = plan.out / "index.html"
    atomic_write_text(page, "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                      f"<title>ensemble-distill: {e(plan.scale.name)} scale</title><style>{STYLE}</style>"
                      f"<script>{CHECK_IMAGES}</script></head><body>"
                      f"<h1>Ensemble distillation for structured prediction: {e(plan.scale.name)} scale</h1>"
                      + "".join(sections) + settings_html(plan, timings, versions()) + "</body></html>")
    return page


def _outputs(plan, experiment) -> list[Path]:
    """The files an experiment writes: OUT/figures/<name>.png, or OUT/tables/<name>.md and .csv."""
    if experiment.name in FIGURES:
        return [plan.out / "figures" / f"{experiment.name}.png"]
    return [plan.out / "tables" / f"{experiment.name}.{suffix}" for suffix in ("md", "csv")]


def settings_html(plan, timings: dict, versions: dict) -> str:
    """The command, the data, each run's resolved config, the versions and the steps' wall times."""
    e = html.escape
    command = shlex.join(["ensemble-distill", "reproduce", "--scale", plan.scale.name, "--out", str(plan.out),
                          "--data", str(plan.data_root), *(x for o in plan.overrides for x in ("--set", o))])
    runs = list(dict.fromkeys(s.run for s in plan.steps(plan.experiments)))
    configs = "".join(f"<details><summary>{e(r.name)} (configs/{e(r.config)})</summary><pre>"
                      f"{e(to_toml(plan.config(r)))}</pre></details>" for r in runs)
    times = "".join(f"<tr><td>{e(k)}</td><td>{duration(v)}</td></tr>" for k, v in timings.items())
    return (f"<section id='settings'><h2>Settings and versions</h2><pre>{e(command)}</pre>"
            f"<p>Python {e(sys.version.split()[0])}; " + ", ".join(f"{e(k)} {e(str(v))}" for k, v in versions.items())
            + f"; {plan.scale.n_boot} bootstrap resamples.</p><h3>Runs</h3>{configs}"
            f"<h3>Wall time of each step</h3><table><tbody>{times}</tbody></table>"
            f"<h3>Metrics</h3><ul>" + "".join(f"<li>{e(HEADERS.get(m, m))}: {e(DESCRIPTIONS[m])}</li>"
                                              for m in (*NER_METRICS, *NMT_METRICS)) + "</ul></section>")
