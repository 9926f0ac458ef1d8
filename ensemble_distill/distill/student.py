"""Training a student, the same for both tasks: memoize the run's teacher (distill/memoize.py) if not done, record
it, and train a fresh model on the teacher store with the task's distillation loss, into a self-describing model
folder RUN/students/<memoize.student_name> (student-3, student-ts-3, student-3-top64,
student-3-top64-log_uint8, student-3-sampled12).

    run = open_run("runs/m30k-ce", ("train", "dev", "test"))
    store, folder, model = distill_run(run, members=3, top_k=64)  # RUN/teachers/ensemble-3-top64, student-3-top64
    rows = evaluate_student(run, folder, store, model)            # STUDENT/eval/test/, raw and temperature-scaled
    rows = sweep(run)                 # translation: a student per V' and adaptive epsilon, then the truncation table

Student (paper §4.1, §5.2), trained on

    loss = (1 - beta) NLL(gold) + beta KD,   KD = -mean over positions of sum_k q_k log p_student(id_k)

(distill/losses.py) over the stored entries q of the teacher. What differs by task is the Task's: the student's
settings (NER: a distillation config, an IID tagger early-stopped on the tenth of the training sentences no member
was early-stopped on; translation: the run's own config, the members' architecture, schedule and early stopping,
with `distill --set train.*` a training loop of its own recorded as its config.toml),
its seed, and how a batch meets the store (Task.student_loss).

A student folder is written by one process at a time (io_utils.run_lock); its teacher.json records the store, its
teachers and truncation, and a student folder begun from another teacher is refused (its checkpoint would otherwise
be resumed with another teacher).
"""

import re
from pathlib import Path

from ..calibrated import record_temperature
from ..config import to_dict, to_toml
from ..distributed import on_main
from ..ensemble import ensemble_member_ids
from ..errors import UserError, counted
from ..evaluation import System, evaluate_run, evaluate_systems, fit_temperatures
from ..io_utils import atomic_write_json, atomic_write_text, read_json, require_same_config, run_lock
from ..runs import finished, versions
from ..tables import format_rows, table_rows
from ..teacher_store import TeacherStore, require_teachers
from .memoize import TEMPERATURE_PREFIX, member_checkpoints, memoize, student_name, teacher_name

# A student's config key that names the run holding it: it follows a moved or copied run (require_same_config)
STUDENT_LOCATION = ("distill.ensemble_run",)


def student_dir(run_dir, store: TeacherStore, name: str | None = None) -> Path:
    """RUN/students/<name>, by default <memoize.student_name>: student-3-top64 for ensemble-3-top64, student-ts-3
    for ensemble-3-ts."""
    return Path(run_dir) / "students" / (name or student_name(store.path.name))


def check_student_name(name: str) -> str:
    """A student folder name of one's own (a second student of one teacher, with other settings): it starts with
    "student-" (evaluation scores RUN/students/*) and does not end with "-ts" (evaluation's temperature-scaled
    folders). Returns it; raises UserError otherwise."""
    if not re.fullmatch(r"student-[A-Za-z0-9_.-]+", name) or name.endswith("-ts"):
        raise UserError(f"--name {name!r}: a student's folder name starts with 'student-', has only letters, "
                        "digits, '.', '_' and '-', and does not end with '-ts'")
    return name


def distill_run(run, members: int | None = None, top_k: int | None = None, epsilon: float | None = None,
                samples: int | None = None, temperature_scaled: bool = False, settings=None,
                progress: bool = True, name: str | None = None) -> tuple:
    """Memoize the teacher (the run's nested ensemble of `members`, truncated as Task.teacher_settings says from
    these values and the run's config) if not done, and train (or resume, or reuse when finished) its student in
    RUN/students/ (`student_dir`, `name`); returns the store, the student's folder and its model (`distill`).
    `run`: ensemble.Run with train and dev loaded; `settings`: the student's (Task.student_settings; None: the
    run's config).
    Raises UserError as memoize and `distill` do."""
    members, truncation = run.task.teacher_settings(run.cfg, members, top_k, epsilon, samples)
    store = memoize(run, members, truncation, temperature_scaled, progress=progress)
    out_dir = student_dir(run.run_dir, store, name)
    return store, out_dir, distill(run, store, out_dir, settings, progress)


def distill(run, store: TeacherStore, out_dir, settings=None, progress: bool = True):
    """Train (or resume) the student of `store` in `out_dir` and write its model folder (model.json naming its
    teacher, weights, result.json), holding OUT's lock; returns the trained model (eval mode), or the finished
    one's. `settings`: a config with the student's [distill] loss settings and [train] loop (Task.student_settings;
    None: the run's config, translation's). A settings config other than the run's is recorded as OUT/config.toml
    and run.json, and a student folder of another config is refused.
    Raises UserError for a folder begun from another teacher or config."""
    task, out_dir = run.task, Path(out_dir)
    settings = run.cfg if settings is None else settings
    cfg = task.student_config(run.cfg, settings)
    with run_lock(out_dir):  # under torchrun: rank 0's; all ranks train the student
        on_main(record_student, out_dir, store, settings if settings is not run.cfg else None, cfg)  # refused first
        if on_main(finished, out_dir):
            return run.load(out_dir)
        seed = task.student_seed(run.cfg, settings)
        model = task.new_model(cfg, run.data, seed)
        teacher = {"store": str(store.path), "name": teacher_name(store), "teachers": store.manifest["teachers"],
                   "truncation": store.manifest["truncation"]}
        task.fit_student(model, cfg, run.data, task.student_loss(store, settings, run.data), seed, out_dir,
                         progress, teacher=teacher)
    return model.eval()


def record_student(out_dir: Path, store: TeacherStore, settings=None, cfg=None) -> None:
    """teacher.json: the store, its teachers, truncation, dataset, layout (probs_dtype; None for a sampled store)
    and bytes per token; and, for `settings` of its own, config.toml and run.json (the student's config `cfg` and
    the versions). A folder begun from other teachers, another truncation or data, or (require_same_config) another
    config is refused, and so is one with settings of its own (a config.toml) when `settings` is None: a
    translation student of its own [train] must not pass for the run's default student."""
    if settings is not None:
        require_same_config(out_dir, settings, moves_with=STUDENT_LOCATION)
    elif (out_dir / "config.toml").is_file():
        raise UserError(f"{out_dir}: was trained with settings of its own (its config.toml); give the same "
                        "--set train.* again, or another --name for the run's own settings")
    record = {"store": str(store.path), "teachers": store.manifest["teachers"],
              "truncation": store.manifest["truncation"], "dataset": store.manifest["dataset_fingerprint"],
              "probs_dtype": store.manifest["dtypes"].get("probs"), "bytes_per_token": store.bytes_per_token()}
    previous = out_dir / "teacher.json"
    if previous.is_file():
        recorded = read_json(previous, f"delete {out_dir} and distill it again")
        changed = [key for key in ("teachers", "truncation", "dataset") if key in recorded
                   and recorded[key] != record[key]]
        if changed:
            raise UserError(f"{out_dir}: was begun from another teacher (its teacher.json's {changed[0]} differ "
                            f"from {store.path}'s); use a new folder")
    atomic_write_json(previous, record)
    if settings is not None:
        atomic_write_text(out_dir / "config.toml", to_toml(settings))
        atomic_write_json(out_dir / "run.json", {"store": str(store.path), "student": to_dict(cfg), **versions()})


def open_store(run, store_dir, members: int | None = None) -> TeacherStore:
    """A teacher store written elsewhere (memoize's `store_dir`), checked against the run: its data, outputs, and
    teachers, which must be the current weights of exactly the run's nested ensemble of `members` (a temperature-
    scaled store of them is that teacher too). Raises UserError for a store of other data, outputs or teachers,
    a damaged one, or an ensemble size outside the run's."""
    task, cfg = run.task, run.cfg
    if members is not None and members > cfg.ensemble.members:
        raise UserError(f"distill config: 'distill.teacher_members' is {members}, but {run.run_dir} has "
                        f"{counted(cfg.ensemble.members, 'member')}")
    store = TeacherStore.open(store_dir, expect_fingerprint=task.dataset_fingerprint(run.data),
                              expect_vocab=task.output_names(run.data))
    ids = ensemble_member_ids(cfg, members or None)
    temperature = [t for t in store.manifest["teachers"] if t.startswith(TEMPERATURE_PREFIX)]
    require_teachers(store, member_checkpoints(run.run_dir, ids, task) + temperature,
                     f"the ensemble of {len(ids)} of {run.run_dir} (distill.teacher_members = {members})")
    return store


def distill_from_store(store_dir, settings, out_dir, n_boot: int = 1000, progress: bool = True,
                       run=None) -> list[dict]:
    """The older form (NER's `distill --store --config --out`, and the demo): train the student of a store written
    elsewhere (`open_store`: the teacher `settings.distill` names, of the run `settings.distill.ensemble_run`) in
    `out_dir`, then evaluate it on test (`evaluate_student`); returns its rows (raw, temperature-scaled).
    `run`: that run, opened with train, dev and test (default: opened here). Raises UserError as `distill` does,
    and for a student's device or encoder cut this machine lacks (Task.check_runnable) before anything is
    written."""
    from ..ensemble import open_run, read_run_config
    from ..tasks import get_task

    run_cfg = run.cfg if run is not None else read_run_config(settings.distill.ensemble_run)
    task = get_task(run_cfg.task)
    task.check_runnable(task.student_config(run_cfg, settings), "distill config")
    with run_lock(out_dir):  # a folder another process holds is refused first
        run = run or open_run(settings.distill.ensemble_run, ("train", "dev", "test"), progress,
                              device=settings.train.device)  # where the student trains: no member is loaded
        store = open_store(run, store_dir, settings.distill.teacher_members)
        model = distill(run, store, out_dir, settings, progress)
        return evaluate_student(run, out_dir, store, model, settings, n_boot, progress)


def evaluate_student(run, out_dir, store: TeacherStore, model, settings=None, n_boot: int = 1000,
                     progress: bool = True) -> list[dict]:
    """The student alone on test, raw and temperature-scaled (T fitted on dev; evaluation.py) into
    OUT/eval/test/student[-ts]/ with results.json and results.md; returns its rows. `run`: with dev and test.
    An evaluation of the same weights, config, dev and test data and n_boot (OUT/eval/test/evaluated.json) is
    reused: a rerun of a finished `distill` does not search the test set again."""
    task, out_dir = run.task, Path(out_dir)
    cfg = task.student_config(run.cfg, run.cfg if settings is None else settings)
    results = out_dir / "eval" / "test" / "results.json"
    inputs = {"weights": read_json(out_dir / "result.json", "rerun distill").get("sha256"), "config": to_toml(cfg),
              "n_boot": n_boot, **{split: task.dataset_fingerprint(run.data, split) for split in ("dev", "test")}}

    def record() -> list[dict]:  # under torchrun, rank 0 evaluates
        evaluated = results.with_name("evaluated.json")
        if results.is_file() and evaluated.is_file() and read_json(evaluated, "delete it") == inputs:
            return read_json(results, "delete it and rerun distill")
        system = System("student", f"student ({teacher_name(store)})", (0,), meta={"models": [str(out_dir)]})
        temperatures = fit_temperatures(task, cfg, run.data, [model], [system], str(out_dir))
        record_temperature(temperatures["student"], [out_dir], run.run_dir, out_dir.name)
        scores = evaluate_systems(task, cfg, run.data, [model], [system], temperatures, "test",
                                  out_dir / "eval" / "test", n_boot, {"run": str(out_dir)}, progress)
        rows = table_rows([system], scores, temperatures, task.columns)
        atomic_write_json(out_dir / "eval" / "test" / "results.json", rows)
        atomic_write_text(out_dir / "eval" / "test" / "results.md",
                          format_rows(rows, task.columns, title=f"{out_dir.name}, test"))
        atomic_write_json(evaluated, inputs)  # last: what the results above were computed from
        return rows

    return on_main(record)


def sweep(run, members: int | None = None, top_ks: list[int] | None = None, epsilons: list[float] | None = None,
          n_boot: int = 1000, progress: bool = True, samples: list[int] | None = None) -> list[dict]:
    """One student per truncation the task sweeps (Task.sweep_truncations: each V' in top_ks, each adaptive
    epsilon capped at max(top_ks), each sampled store's R), then the run's evaluation, which tabulates every
    student's truncation (evaluation.evaluate_run); returns the rows of these students. `run`: with train, dev and
    test. Raises UserError for a task with nothing to sweep (NER keeps every label) or a setting out of range."""
    settings = run.task.sweep_truncations(run.cfg, top_ks, epsilons, samples, run.run_dir)
    students = [distill_run(run, members, k, eps, r, progress=progress)[1] for k, eps, r in settings]
    evaluate_run(run, "test", n_boot, progress)
    table = read_json(run.run_dir / "eval" / "test" / "truncation.json", "evaluate the run again")
    return [row for row in table if row["student"] in {s.name for s in students}]
