"""Memoizing a teacher, the same for both tasks: a run's nested ensemble of k members, optionally temperature-scaled,
over every training sentence in order, into a teacher store (teacher_store.py) in RUN/teachers/<store_name>.

    store = memoize(open_run("runs/conll-iid", ("train", "dev")), members=3)          # RUN/teachers/ensemble-3
    members, truncation = run.task.teacher_settings(run.cfg, top_k=64)     # the run's [distill] defaults (NMT)
    store = memoize(run, members=3, truncation=Truncation(top_k=64))                  # ensemble-3-top64
    store = memoize(run, truncation=Truncation(samples=12))                           # ensemble-3-sampled12

Teacher (paper §3.2, §5.1): q = the uniform mean of the members' distributions at each position (NER: per word,
CRF members' marginals; translation: next-token, teacher-forced). With `temperature_scaled` (paper §6.2, Table 5)
the teacher is softmax(log q / T), T fitted on dev as evaluation.py fits the ensemble's (the teacher is exactly the
table's "ensemble of k + TS" row). What the store keeps a position (Truncation): every entry (NER label sets are
small), the top V', adaptively the fewest entries with mass >= 1 - epsilon (at most V'), or R draws from q placed
by the run's seed (an unbiased estimate of full KD).

A store's teachers are the sha256-named weights of its members (and "temperature T"), checked whenever it is
reopened: a finished store is reused, a half-written one resumed, one of other teachers refused.

Where a task's distributions are small (Task.caches_member_probs: NER), the teacher is the mean of its members'
cached distributions (member_cache.py, RUN/teachers/members/), so each member runs over the training split once for
all of a run's stores; the store's bytes are those of the ensemble pass. Under torchrun (more than one process),
whose ranks share the store's shards, every store runs its ensemble.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from ..calibration.temperature import at_bound
from ..calibration.temperature import temperature_scaled as scaled
from ..distributed import world_size
from ..ensemble import ensemble_member_ids
from ..evaluation import System, fit_temperatures
from ..io_utils import checkpoint_name, run_lock
from ..runs import model_dir
from ..teacher_store import TeacherStore, write_store
from .member_cache import cached_teacher_probs

TEMPERATURE_PREFIX = "temperature "  # the teacher-name entry that records a temperature-scaled teacher's T


@dataclass(frozen=True)
class Truncation:
    """What a teacher store keeps a position: the top `top_k` entries (None: every entry of the vocabulary),
    adaptively fewer with `epsilon` > 0, their probabilities as `probs_dtype`; or, with `samples` R > 0, R draws."""
    top_k: int | None = None
    epsilon: float = 0.0
    samples: int = 0
    probs_dtype: str = "float16"

    def suffix(self) -> str:
        """-top<V'>, -eps<epsilon>-max<V'> or -sampled<R>; "" for a store of every entry; a top-V' store in another
        layout than float16 adds it (-top64-log_uint8), so that stores of one teacher in two layouts, and their
        students, live side by side."""
        if self.samples > 0:
            return f"-sampled{self.samples}"
        if self.top_k is None:
            return ""
        truncation = f"-eps{self.epsilon:g}-max{self.top_k}" if self.epsilon > 0 else f"-top{self.top_k}"
        return truncation + ("" if self.probs_dtype == "float16" else f"-{self.probs_dtype}")

    def store_settings(self, vocab_size: int, seed: int) -> dict:
        """write_store's keyword arguments for this truncation (a sampled store draws from `seed`, multinomial)."""
        if self.samples > 0:
            return dict(samples=self.samples, seed=seed, sampling="multinomial")
        return dict(top_k=self.top_k or vocab_size, epsilon=self.epsilon or None, probs_dtype=self.probs_dtype)


def store_name(members: int, truncation: Truncation = Truncation(), temperature_scaled: bool = False) -> str:
    """ensemble-<k>[-ts]<truncation suffix>: ensemble-3, ensemble-3-ts, ensemble-3-top64, ensemble-2-sampled12."""
    return f"ensemble-{members}{'-ts' if temperature_scaled else ''}{truncation.suffix()}"


def student_name(store: str) -> str:
    """The folder RUN/students/<name> of the student of the store named `store` (store_name): student-<k> plus
    the truncation suffix (student-3, student-3-top64); a temperature-scaled teacher's is student-ts-<k>..., so
    that it never is another student's temperature-scaled evaluation folder (student-3-ts, evaluation.py)."""
    members, scaled, truncation = store.removeprefix("ensemble-").partition("-ts")
    return f"student-{'ts-' if scaled else ''}{members}{truncation}"


def member_checkpoints(run_dir, ids: list[int], task) -> list[str]:
    """The store's names of the given members' weights (Task.weights), relative to the run, with sha256."""
    return [checkpoint_name(run_dir, task.weights(model_dir(run_dir, "member", i))) for i in ids]


def memoize(run, members: int | None = None, truncation: Truncation = Truncation(), temperature_scaled: bool = False,
            store_dir=None, progress: bool = True) -> TeacherStore:
    """Write (or resume, or reuse when finished) the teacher store of the run's nested ensemble of `members`
    (default: the largest configured; ensemble.ensemble_member_ids) at `store_dir` (default RUN/teachers/
    <store_name>), holding its lock. `run`: ensemble.Run with the train split (and dev, `temperature_scaled`).
    Raises UserError for an unfinished member, an ensemble size outside the run's, or a store of other teachers
    or data."""
    task, cfg, data = run.task, run.cfg, run.data
    ids = ensemble_member_ids(cfg, members)
    path = Path(store_dir) if store_dir is not None else run.run_dir / "teachers" / store_name(
        len(ids), truncation, temperature_scaled)
    with run_lock(path):
        models = [run.load(run.member_dir(i)) for i in ids]
        teachers = member_checkpoints(run.run_dir, ids, task)
        if task.caches_member_probs and world_size() == 1:
            ensemble_probs = cached_teacher_probs(run, ids, models, list(teachers), progress)
        else:
            ensemble_probs = functools.partial(task.teacher_probs, models, cfg, data)
        temperature = None
        if temperature_scaled:
            system = System("teacher", f"ensemble of {len(ids)}", tuple(range(len(models))))
            temperature = fit_temperatures(task, cfg, data, models, [system], str(run.run_dir))["teacher"]
            teachers.append(f"{TEMPERATURE_PREFIX}{temperature!r}")

        def teacher(sentences):
            probs = ensemble_probs(sentences)
            return probs if temperature is None else [scaled(p, temperature) for p in probs]

        vocab, positions = task.output_names(data), task.sentence_positions(data, "train")
        return write_store(path, range(len(positions)), teacher, vocab=vocab,
                           fingerprint=task.dataset_fingerprint(data), teachers=teachers,
                           **truncation.store_settings(len(vocab), cfg.train.seed),
                           batch_sentences=task.batch_sentences(cfg), positions=positions, progress=progress)


def store_temperature(store: TeacherStore) -> float | None:
    """T of a temperature-scaled teacher's store (from its teacher names), else None."""
    found = [t for t in store.manifest["teachers"] if t.startswith(TEMPERATURE_PREFIX)]
    return float(found[0][len(TEMPERATURE_PREFIX):]) if found else None


def teacher_name(store: TeacherStore) -> str:
    """'ensemble of K', and T for a temperature-scaled teacher, from the store's teacher names."""
    k = sum(1 for t in store.manifest["teachers"] if not t.startswith(TEMPERATURE_PREFIX))
    temperature = store_temperature(store)
    bound = " at the fit's bound: dev had no finite optimum" if temperature and at_bound(temperature) else ""
    return f"ensemble of {k}" + (f", temperature-scaled (T = {temperature:.3f}{bound})" if temperature else "")
