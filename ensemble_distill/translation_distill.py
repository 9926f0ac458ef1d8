"""Translation students: memoize the ensemble (distill/memoize.py, if not done), train a student from it.

    student_dir = distill_translation("runs/m30k-ce", members=3, top_k=64)       # RUN/students/student-3-top64
    rows = truncation_sweep("runs/m30k-ce")        # V' in {32, 64, 128, 256} and adaptive: students, table

Teacher (paper §5.1; distill/memoize.py): the mean of the first k members' next-token distributions under teacher
forcing, at every target position of every training pair, truncated to the top V' entries (or adaptively), or R
draws a position (`distill.samples` = R > 0); the settings' defaults come from the run's [distill] section
(tasks.nmt.NmtTask.teacher_settings).

Student (paper §5.2): the members' architecture, trained from a random initialisation with the members' schedule,
batches and early stopping, on

    loss = (1 - beta) NLL_λ(gold) + beta KD,   KD = -mean over positions of sum_k q_k log p_student(id_k)

at temperature 1, beta = 0.5 and label smoothing λ = 0.1 on the NLL term (distill.distillation_loss). Students
live under RUN/students/, where evaluate-nmt finds them beside the members and ensembles.

Each store and student folder is written by one process at a time (io_utils.run_lock), so the stores and
students of one run can be built side by side. A store's teachers are the sha256-named weights of the members it
claims (checked again whenever it is reopened), and a student's teacher.json records them: a student folder is
never resumed from another teacher.
"""

from pathlib import Path

from .config import TranslationDistillation
from .data.vocab import PAD_ID
from .distill.losses import distillation_loss
from .distill.memoize import memoize, student_name
from .distributed import on_main
from .ensemble import Run, open_run
from .errors import UserError
from .evaluation import evaluate_run
from .io_utils import atomic_write_json, read_json, run_lock
from .runs import finished
from .tasks.nmt import TASK, member_seed, new_model, to_device, train_model
from .teacher_store import TeacherStore

STUDENT_SEED_INDEX = 100  # students' seeds come after any member's


def distill_translation(run_dir, members: int | None = None, top_k: int | None = None, epsilon: float | None = None,
                        progress: bool = True, run: Run | None = None, after_round=None,
                        samples: int | None = None) -> Path:
    """Memoise the teacher (if not done) and train (or resume) its student, RUN/students/<memoize.student_name>
    (student-3-top64, student-3-sampled12); returns the student's folder."""
    run = run or open_run(run_dir, splits=("train", "dev"), progress=progress)
    members, truncation = TASK.teacher_settings(run.cfg, members, top_k, epsilon, samples)
    store = memoize(run, members, truncation, progress=progress)
    student_dir = run.run_dir / "students" / student_name(store.path.name)
    with run_lock(student_dir):  # under torchrun: rank 0's; all ranks train the student (train_model)
        if on_main(finished, student_dir):
            return student_dir
        seed = member_seed(run.cfg, STUDENT_SEED_INDEX)
        model = new_model(run.cfg, len(run.data.vocab), seed)
        on_main(record_teacher, student_dir, store)
        teacher = {"store": str(store.path), "teachers": store.manifest["teachers"],
                   "truncation": store.manifest["truncation"]}
        train_model(model, run.data, run.cfg, student_dir, student_loss(store, run.cfg.distill), seed, progress,
                    after_round, role="student", spec_extra={"teacher": teacher})
    return student_dir


def record_teacher(student_dir: Path, store: TeacherStore) -> None:
    """teacher.json: the store, its teachers and truncation. A student folder begun from other teachers or another
    truncation is refused (its checkpoint would otherwise be resumed with another teacher)."""
    record = {"store": str(store.path), "teachers": store.manifest["teachers"],
              "truncation": store.manifest["truncation"], "bytes_per_token": store.bytes_per_token()}
    previous = student_dir / "teacher.json"
    if previous.is_file():
        recorded = read_json(previous, f"delete {student_dir} and distill it again")
        changed = [key for key in ("teachers", "truncation") if recorded.get(key) != record[key]]
        if changed:
            raise UserError(f"{student_dir}: was begun from another teacher (its teacher.json's {changed[0]} differ "
                            f"from {store.path}'s); use a new folder")
    atomic_write_json(previous, record)


def student_loss(store: TeacherStore, d: TranslationDistillation):
    """(1 - beta) label-smoothed NLL + beta KD against the batch's stored teacher entries."""

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


def truncation_sweep(run_dir, members: int | None = None, top_ks: list[int] | None = None,
                     epsilons: list[float] | None = None, n_boot: int = 1000, progress: bool = True,
                     run: Run | None = None, samples: list[int] | None = None) -> list[dict]:
    """Distil one student per truncation (each V' in top_ks, each adaptive epsilon capped at max(top_ks), each
    sampled store's R in `samples`, default [distill.samples] when that is > 0) and evaluate the run, which
    tabulates every student's truncation (evaluation.evaluate_run); returns the rows of these students.
    Raises UserError for an R below 1."""
    run = run or open_run(run_dir, splits=("train", "dev", "test"), progress=progress)
    d = run.cfg.distill
    members = d.teacher_members if members is None else members
    top_ks = d.sweep_top_k if top_ks is None else top_ks
    epsilons = d.sweep_epsilon if epsilons is None else epsilons
    samples = ([d.samples] if d.samples > 0 else []) if samples is None else samples
    if not top_ks:
        raise UserError("'top_ks' must name at least one V', got []")
    if any(r < 1 for r in samples):
        raise UserError(f"--samples {min(samples)}: a sweep's sampled stores need at least 1 draw a position")
    settings = [(k, 0.0) for k in top_ks] + [(max(top_ks), eps) for eps in epsilons]
    students = [distill_translation(run.run_dir, members, k, eps, progress, run, samples=0) for k, eps in settings]
    students += [distill_translation(run.run_dir, members, progress=progress, run=run, samples=r) for r in samples]
    evaluate_run(run, "test", n_boot, progress)
    table = read_json(run.run_dir / "eval" / "test" / "truncation.json", "evaluate the run again")
    return [row for row in table if row["student"] in {s.name for s in students}]
