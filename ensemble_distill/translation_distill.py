"""Ensemble distillation for translation: memoise the ensemble over the training set, train a student from it.

    store = memoize_translation_teacher("runs/m30k-ce", members=3, top_k=64)     # RUN/teachers/ensemble-3-top64
    store = memoize_translation_teacher("runs/m30k-ce", samples=12)     # RUN/teachers/ensemble-3-sampled12
    student_dir = distill_translation("runs/m30k-ce", members=3, top_k=64)       # RUN/students/student-3-top64
    rows = truncation_sweep("runs/m30k-ce")        # V' in {32, 64, 128, 256} and adaptive: students, table

Teacher (paper §5.1): the mean of the first k members' next-token distributions under teacher forcing, at every
target position of every training pair, in dataset order; truncated to the top V' entries (or adaptively, to the
fewest entries whose mass reaches 1 - epsilon, at most V') in a teacher store; or, with `distill.samples` = R > 0,
R draws from it a position (teacher_store's sampled layout: an unbiased estimate of the full KD), placed from the
run's seed by multinomial sampling (the paper's).

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

import torch

from .config import TranslationDistillation, setting_problem
from .data.vocab import PAD_ID
from .distill.losses import distillation_loss
from .distributed import on_main
from .ensemble import Run, open_run
from .errors import UserError
from .evaluation import evaluate_run
from .io_utils import atomic_write_json, checkpoint_name, read_json, run_lock
from .models.translation import collate
from .runs import finished
from .tasks.nmt import TASK, member_seed, new_model, to_device, train_model
from .teacher_store import TeacherStore, write_store

STUDENT_SEED_INDEX = 100  # students' seeds come after any member's


def store_name(members: int, top_k: int, epsilon: float, samples: int = 0, probs_dtype: str = "float16") -> str:
    """ensemble-<k>-top<V'>, ensemble-<k>-eps<epsilon>-max<V'> or, for a sampled store, ensemble-<k>-sampled<R>;
    a top-V' store kept in another layout than float16 adds it (ensemble-3-top64-log_uint8), so that stores of one
    teacher in two layouts, and their students, live side by side."""
    if samples > 0:
        return f"ensemble-{members}-sampled{samples}"
    truncation = f"eps{epsilon:g}-max{top_k}" if epsilon > 0 else f"top{top_k}"
    layout = "" if probs_dtype == "float16" else f"-{probs_dtype}"
    return f"ensemble-{members}-{truncation}{layout}"


def train_fingerprint(run: Run) -> str:
    return TASK.dataset_fingerprint(run.data)


def vocab_names(run: Run) -> list[str]:
    return run.data.vocab.piece_names()


def memoize_translation_teacher(run_dir, members: int | None = None, top_k: int | None = None,
                                epsilon: float | None = None, progress: bool = True,
                                run: Run | None = None, samples: int | None = None) -> TeacherStore:
    """Write (or resume, or open when finished) the store of the ensemble of the first `members` members over the
    run's training pairs, at RUN/teachers/<store_name>. Defaults come from the run's [distill] section; `samples`
    > 0 makes a sampled store (R draws a position, seeded by train.seed), 0 a top-V' one.

    Raises UserError for values outside the settings' ranges, and for `top_k` or `epsilon` given with samples > 0
    (a sampled store keeps draws, not the top entries)."""
    run = run or open_run(run_dir, splits=("train", "dev"), progress=progress)
    d = run.cfg.distill
    samples = d.samples if samples is None else samples
    if samples > 0 and (top_k is not None or epsilon is not None):
        given = "--top-k" if top_k is not None else "--epsilon"
        raise UserError(f"{given}: a sampled store (samples = {samples}) keeps draws, not the top entries; give "
                        "--samples 0 for a top-V' store")
    members = d.teacher_members if members is None else members
    top_k = d.top_k if top_k is None else top_k
    epsilon = d.epsilon if epsilon is None else epsilon
    if not 1 <= members <= run.cfg.ensemble.members:
        raise UserError(f"--members {members}: the run has {run.cfg.ensemble.members} members")
    for name, value in (("top_k", top_k), ("epsilon", epsilon), ("samples", samples)):
        if problem := setting_problem(TranslationDistillation, name, value):
            raise UserError(f"'{name}' {problem}")
    models = run.members(members)  # the first k
    teachers = [checkpoint_name(run.run_dir, run.member_dir(i) / "model.pt") for i in range(members)]

    @torch.no_grad()
    def teacher(pairs):
        batch = to_device(collate(pairs), models[0].embedding.weight.device)
        real = batch.tgt_out != PAD_ID
        # The mean of probabilities (not log-space) is what is stored, and exp-then-mean is twice as fast on a CPU
        # as a logsumexp over the members. It stays on the models' device: the store truncates there.
        probs = torch.stack([m.log_probs_teacher_forced(batch.src, batch.tgt_in, real) for m in models]).exp().mean(0)
        return list(probs.split([len(tgt) + 1 for _, tgt in pairs]))

    sparsity = (dict(samples=samples, seed=run.cfg.train.seed, sampling="multinomial") if samples > 0
                else dict(top_k=top_k, epsilon=epsilon or None, probs_dtype=d.probs_dtype))
    path = run.run_dir / "teachers" / store_name(members, top_k, epsilon, samples, d.probs_dtype)
    with run_lock(path):
        return write_store(path, run.data.splits["train"].pairs, teacher, vocab=vocab_names(run),
                           fingerprint=train_fingerprint(run), teachers=teachers, **sparsity,
                           batch_sentences=run.cfg.decode.batch_sentences, progress=progress)


def distill_translation(run_dir, members: int | None = None, top_k: int | None = None, epsilon: float | None = None,
                        progress: bool = True, run: Run | None = None, after_round=None,
                        samples: int | None = None) -> Path:
    """Memoise the teacher (if not done) and train (or resume) its student, RUN/students/student-<store name less
    "ensemble-"> (student-3-top64, student-3-sampled12); returns the student's folder."""
    run = run or open_run(run_dir, splits=("train", "dev"), progress=progress)
    store = memoize_translation_teacher(run.run_dir, members, top_k, epsilon, progress, run, samples)
    student_dir = run.run_dir / "students" / f"student-{store.path.name.removeprefix('ensemble-')}"
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
