"""Evaluating a trained run, the same for both tasks: every system (each member, each NER individual, the nested
ensembles, every student in RUN/students/), raw and temperature-scaled, written as a predictions file and scored
by calibration.report; one results.json schema and one table (tables.py, the task's metric columns).

    run = open_run("runs/conll-iid", splits=("dev", "test"))     # ensemble.open_run
    rows = evaluate_run(run, "test")                             # RUN/eval/test/...
    print(format_rows(rows, run.task.columns))

Distributions (tasks/base.py, `member_probs`): each model's probabilities at every position of the split, in
chunks of consecutive sentences (NER: words over labels, CRF marginals; translation: target subwords and EOS over
the vocabulary, teacher-forced). A system's distribution is the mean of its members' (ensemble.ensemble_mean), so
each model runs once however many ensembles it is in.

Temperature scaling (Guo et al. 2017; paper §6.2): each system's T minimises the dev NLL of softmax(log q / T)
(every dev word for NER; for translation a seeded sample of `decode.temperature_positions` dev positions, since
the fit holds a dense [positions, V] float64 array). Scaling keeps each position's ranking, so the most probable
label and the translation hypotheses (and with them F1 and BLEU) are those of the raw system; the calibration
columns change.

    RUN/eval/<split>/<system>[-ts]/    predictions.npz, metrics.json, plots (system: member-<i>, individual-<i>,
                                       ensemble-<k>, a student folder's name; -ts: temperature-scaled);
                                       translation: hypotheses.txt, the npz's hypotheses one a line (UTF-8)
    RUN/eval/<split>/results.{md,json} the table (tables.table_rows: one schema for both tasks); NER's
                                       results.md adds each system's F1 per entity type (entity_type_table)
    RUN/eval/<split>/truncation.{md,json}  the students' teacher truncation beside their metrics (tables.py)
    MODEL/temperature.json, RUN/eval/temperatures/ensemble-<k>.json   each system's T (calibrated.py), read by
                                       predict --calibrated and export --calibrated
"""

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .calibrated import record_temperature
from .calibration.report import evaluate
from .calibration.task_metrics import TYPE_SEPARATOR
from .calibration.temperature import fit_temperature, log_floor, temperature_scaled
from .ensemble import ensemble_mean, nested_subsets
from .errors import UserError
from .io_utils import atomic_write_json, atomic_write_text, read_json
from .predictions import save_predictions
from .runs import finished, model_dir
from .tables import SCALED, Column, format_rows, format_sweep, table_rows, truncation_rows


@dataclass(frozen=True)
class System:
    """One row of the table: a model or the mean of several."""
    name: str  # its folder under RUN/eval/<split>/: member-0, ensemble-3, student-3-top64
    label: str  # its row's name in the table
    models: tuple[int, ...]  # indices into the evaluated model folders; the system is their mean
    group: str = ""  # "members" | "individuals": tabulated together as one mean ± s.e. row
    meta: dict = field(default_factory=dict)  # recorded in its predictions files


def run_systems(run) -> tuple[list[Path], list[System]]:
    """The model folders to load and the systems to evaluate: each member and NER individual, the configured
    nested ensembles (ensemble.nested_subsets), and every finished student in RUN/students/."""
    e = run.cfg.ensemble
    folders, systems = [], []

    def add(folder: Path, system: System) -> None:
        systems.append(system)
        folders.append(folder)

    for role, count in (("member", e.members), ("individual", getattr(e, "individuals", 0))):
        for i in range(count):
            folder = model_dir(run.run_dir, role, i)
            add(folder, System(f"{role}-{i}", f"{role}-{i}", (len(folders),), f"{role}s",
                               {role: i, "models": [str(folder)]}))
    for k, ids in nested_subsets(e.members, e.subset_sizes, getattr(e, "split_seed", None)).items():
        systems.append(System(f"ensemble-{k}", f"ensemble of {k}", tuple(ids),
                              meta={"ensemble": ids, "models": [str(folders[i]) for i in ids]}))
    students = sorted(p for p in (run.run_dir / "students").glob("*") if p.is_dir())
    unfinished = [folder.name for folder in students if not finished(folder)]
    if unfinished:  # a student still training (or killed): said, not silently left out
        warnings.warn(f"{run.run_dir / 'students'}: not scored, not finished (no result.json): "
                      f"{', '.join(unfinished)}")
    for folder in (folder for folder in students if finished(folder)):
        add(folder, System(folder.name, f"student ({folder.name})", (len(folders),),
                           meta={"student": folder.name, "models": [str(folder)]}))
    names = {s.name for s in systems}
    for s in systems:
        if s.name.endswith(SCALED[0]) and s.name.removesuffix(SCALED[0]) in names:
            raise UserError(f"{run.run_dir / 'students' / s.name}: its evaluation folder would be the temperature-"
                            f"scaled one of {s.name.removesuffix(SCALED[0])}: rename it "
                            f"(a temperature-scaled teacher's student is student-ts-<k>)")
    return folders, systems


def fit_temperatures(task, cfg, data, models: list, systems: list[System], where: str) -> dict[str, float]:
    """Each system's T minimising the NLL of softmax(log q / T) on dev positions (all of them, or the task's
    seeded sample of Task.temperature_positions). Raises UserError naming `where` when a system's dev scores
    cannot be fitted (NaN: a model whose weights are broken)."""
    n, limit = task.n_positions(data, "dev"), task.temperature_positions(cfg)
    sample = (np.arange(n) if not limit or limit >= n
              else np.sort(np.random.default_rng(0).choice(n, limit, replace=False)))
    kept, gold, offset = [], [], 0
    for probs, chunk_gold, _ in task.member_probs(models, cfg, data, "dev"):
        rows = sample[(sample >= offset) & (sample < offset + len(chunk_gold))] - offset
        kept.append(probs[:, rows])
        gold.append(chunk_gold[rows])
        offset += len(chunk_gold)
    probs, gold = np.concatenate(kept, axis=1), np.concatenate(gold)
    temperatures = {}
    for s in systems:
        try:
            temperatures[s.name] = fit_temperature(log_floor(ensemble_mean(probs, s.models)), gold, f"{s.name} on dev")
        except ValueError as error:
            raise UserError(f"{where}: the dev distributions of {s.name} cannot be temperature-scaled: {error}")
    return temperatures


def evaluate_systems(task, cfg, data, models: list, systems: list[System], temperatures: dict[str, float],
                     split: str, out_dir: Path, n_boot: int, meta: dict, progress: bool = True) -> dict[str, dict]:
    """Each system raw and temperature-scaled on `split`: OUT/<name>[-ts]/ predictions.npz (with `meta`, the
    system's own and its temperature), metrics.json and plots, and for translation hypotheses.txt (the npz's
    detokenised hypotheses, one a line, UTF-8; temperature scaling keeps them, so -ts has the same).
    Distributions are computed chunk by chunk and kept as the task's compact pieces, so no [positions, V] array
    of a whole translation split is held. Returns {name[-ts]: metrics}."""
    pieces = {s.name + suffix: [] for s in systems for suffix in ("", SCALED[0])}
    for probs, gold, labels in task.member_probs(models, cfg, data, split):
        for s in systems:
            q = ensemble_mean(probs, s.models)
            own = labels[s.models[0]] if len(s.models) == 1 else None  # an ensemble's labels are its argmax
            pieces[s.name].append(task.compact(q, gold, own))
            pieces[s.name + SCALED[0]].append(task.compact(temperature_scaled(q, temperatures[s.name]), gold, own))
    scores = {}
    for s in tqdm(systems, desc="evaluate", unit="system", disable=not progress):
        hypotheses = task.hypotheses([models[i] for i in s.models], cfg, data, split, progress)
        for suffix, temperature in (("", 1.0), (SCALED[0], temperatures[s.name])):
            name = s.name + suffix
            preds = task.predictions(pieces.pop(name), data, split, hypotheses,
                                     {**meta, **s.meta, "model": name, "split": split, "temperature": temperature})
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            save_predictions(out_dir / name / "predictions.npz", preds)
            if preds.hypotheses is not None:  # translation: the npz's hypotheses as text, for sacrebleu or COMET
                atomic_write_text(out_dir / name / "hypotheses.txt", "".join(h + "\n" for h in preds.hypotheses))
            scores[name] = evaluate(preds, out_dir=out_dir / name, n_boot=n_boot)
    return scores


def entity_type_table(systems: list[System], scores: dict[str, dict], temperatures: dict[str, float],
                      title: str) -> str:
    """results.md's second table for NER: each raw system's conlleval F1 per entity type (f1_conlleval:TYPE, the
    columns of seqeval's classification_report); temperature scaling keeps every label, so no " + TS" rows.
    Empty for translation, which has no entity types."""
    prefix = f"f1_conlleval{TYPE_SEPARATOR}"
    columns = [Column(key, key.removeprefix(prefix)) for key in scores[systems[0].name] if key.startswith(prefix)]
    if not columns:
        return ""
    rows = [row for row in table_rows(systems, scores, temperatures, columns) if not row["name"].endswith(SCALED[0])]
    return "\n" + format_rows(rows, columns, title=f"{title}: F1 per entity type (conlleval)", temperature=False)


def with_layout(teacher: dict) -> dict:
    """A student's teacher.json with its store's layout ("probs_dtype": float16, uint8, log_uint8): students
    recorded before teacher.json kept it read it from the store's manifest, or "unrecorded" when that is gone,
    so that two stores of one V' in two layouts are told apart in the truncation table."""
    if "probs_dtype" not in teacher:
        manifest = Path(teacher["store"]) / "manifest.json"
        layout = read_json(manifest, "memoize it again")["dtypes"].get("probs") if manifest.is_file() else "unrecorded"
        teacher = {**teacher, "probs_dtype": layout}
    return teacher


def evaluate_run(run, split: str = "test", n_boot: int = 1000, progress: bool = True) -> list[dict]:
    """Evaluate every system of a trained run (ensemble.Run with the dev split and `split` loaded) on `split`,
    raw and temperature-scaled (T fitted on dev): RUN/eval/<split>/ (module doc). Returns the table's rows
    (tables.table_rows). Raises UserError for an unfinished or damaged model folder."""
    task, out = run.task, run.run_dir / "eval" / split
    folders, systems = run_systems(run)
    models = [run.load(folder) for folder in folders]
    temperatures = fit_temperatures(task, run.cfg, run.data, models, systems, str(run.run_dir))
    for s in systems:  # for predict and export --calibrated (calibrated.py)
        record_temperature(temperatures[s.name], [folders[i] for i in s.models], run.run_dir, s.name)
    scores = evaluate_systems(task, run.cfg, run.data, models, systems, temperatures, split, out, n_boot,
                              {"run": str(run.run_dir)}, progress)
    rows = table_rows(systems, scores, temperatures, task.columns)
    atomic_write_json(out / "results.json", rows)
    atomic_write_text(out / "results.md", format_rows(rows, task.columns, title=f"{run.run_dir.name}, {split}")
                      + entity_type_table(systems, scores, temperatures, f"{run.run_dir.name}, {split}"))
    students = {folder.name: with_layout(read_json(folder / "teacher.json", f"delete {folder} and distill it again"))
                for folder in folders if folder.parent.name == "students" and (folder / "teacher.json").is_file()}
    if students:
        table = truncation_rows(students, rows, task.columns)
        atomic_write_json(out / "truncation.json", table)
        atomic_write_text(out / "truncation.md", format_sweep(table, task.columns,
                                                              f"{run.run_dir.name}: students ({split})"))
    return rows
