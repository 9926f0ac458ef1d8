"""Ensembles, for both tasks: member plans, nested subsets, and training every member of a run.

NER (paper §4): the training set is cut into tenths by a seeded permutation. Member i early-stops on tenth i and
trains on the other nine (`ensemble.member_data = "nine_tenths"`, as the paper's reference code), or on the other
eight but the last ("eight_tenths"), so that a distilled student, which early-stops on the last tenth, validates on
data no teacher saw. Member i < 9 never early-stops on the last tenth; individuals train on all the data and
early-stop on dev. Translation (paper §5): members
train on the whole training set and differ by seed.

An ensemble of k is the first k members of one order of the members, so 3 ⊂ 6 ⊂ 9: a seeded permutation
(`ensemble.split_seed`, NER, the paper's random subsets) or the members in order (translation).

    run = train_members(cfg, "runs/x")      # either task: task.member_plans, task.fit, into runs.py's layout
    run = open_run("runs/x", splits=("dev", "test"))    # a trained run: config, data, its models on demand
    models = run.members(3)                  # the nested ensemble of 3
"""

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import distributed
from .config import (
    MAX_MEMBERS,
    MEMBER_DATA,
    N_TENTHS,
    load_config,
    read_toml,
    require_device,
    validate,
    warm_start_budget,
)
from .errors import UserError, counted
from .io_utils import load_torch, read_json, require_same_config, run_lock
from .runs import DATA, RESULT, finished, model_dir, record_run, require_finished_models, verify_finished
from .tasks import get_task


def tenths(n_sentences: int, split_seed: int) -> list[np.ndarray]:
    """The training sentences cut into ten seeded, near-equal parts."""
    order = np.random.default_rng(split_seed).permutation(n_sentences)
    return [np.sort(part) for part in np.array_split(order, N_TENTHS)]


def member_sentences(n_sentences: int, member: int, split_seed: int,
                     member_data: str = "nine_tenths") -> tuple[np.ndarray, np.ndarray]:
    """(training sentences, early-stopping sentences) of member i: it early-stops on tenth i and trains on the
    other nine ("nine_tenths") or the other eight but the last ("eight_tenths"). Raises ValueError for another
    `member_data`, UserError for a member outside 0..MAX_MEMBERS-1."""
    if member_data not in MEMBER_DATA:
        raise ValueError(f"member_data must be one of {MEMBER_DATA}, got {member_data!r}")
    if not 0 <= member < MAX_MEMBERS:
        raise UserError(f"ensemble.members: at most {MAX_MEMBERS} members (each early-stops on its own tenth)")
    parts = tenths(n_sentences, split_seed)
    left_out = {member} if member_data == "nine_tenths" else {member, N_TENTHS - 1}
    train = np.concatenate([p for i, p in enumerate(parts) if i not in left_out])
    return np.sort(train), parts[member]


def distillation_sentences(n_sentences: int, split_seed: int) -> np.ndarray:
    """The last tenth, the student's validation data: no member early-stopped on it, and with
    ensemble.member_data = "eight_tenths" none trained on it."""
    return tenths(n_sentences, split_seed)[N_TENTHS - 1]


def nested_subsets(n_members: int, sizes: list[int], split_seed: int | None) -> dict[int, list[int]]:
    """Member ids of each ensemble size: smaller ensembles are prefixes of one order of the members, a seeded
    permutation (NER) or, with split_seed None, the members in order (translation). Raises UserError for a size
    outside 1..n_members."""
    order = (list(range(n_members)) if split_seed is None
             else np.random.default_rng(split_seed + 1).permutation(n_members).tolist())
    bad = [k for k in sizes if not 1 <= k <= n_members]
    if bad:
        raise UserError(f"ensemble.subset_sizes: {bad[0]} is not between 1 and ensemble.members = {n_members}")
    return {k: sorted(order[:k]) for k in sorted(set(sizes))}


def ensemble_member_ids(cfg, ensemble_size: int | None = None) -> list[int]:
    """Member ids of the run's nested ensemble of `ensemble_size` (default: the largest configured subset), for
    either task's config. Raises UserError for a size outside 1..ensemble.members."""
    e = cfg.ensemble
    if not e.members:
        raise UserError("the run has no members (ensemble.members = 0: individuals only), so no ensemble")
    order_seed = getattr(e, "split_seed", None)  # translation configs have none: members in order
    if ensemble_size is not None and not 1 <= ensemble_size <= e.members:
        raise UserError(f"ensemble of {ensemble_size}: the run has {counted(e.members, 'member')}")
    subsets = nested_subsets(e.members, e.subset_sizes, order_seed)
    k = max(subsets) if ensemble_size is None else ensemble_size
    return subsets.get(k) or nested_subsets(e.members, [k], order_seed)[k]


@dataclass(frozen=True)
class MemberPlan:
    """One model of a run: who it is, its seed, and what it trains and early-stops on."""
    role: str  # "member" | "individual" (NER: trained on all the data)
    index: int
    seed: int
    train: np.ndarray | None  # training-split sentence ids; None: the whole training split
    held_out: tuple[str, np.ndarray | None]  # (split, its sentence ids; None: the whole split)


def ensemble_mean(member_probs: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """The ensemble of members `ids`: the uniform mean of their probabilities (paper §3.2), member_probs float32
    [M, positions, V] -> [positions, V], summed in the order of `ids` (an ensemble of one is its member, exactly)."""
    return sum(member_probs[i] for i in ids) / len(ids)


# ----------------------------------------------------------------------------------------------------------------
# Snapshot ensembles (ensemble.kind = "snapshots", SGDR, paper §6.1 and Table 4), either task: one trajectory
#   RUN/snapshots/warm-start/   member 0's training to the budget less the cycles (warm_start_config)
#   RUN/snapshots/cycles/       the cycles (training.train_cycles): epoch-<i>.pt is cycle i's snapshot
#   RUN/members/member-<i>/     snapshot i + 1 as a model folder like a seed member's (record_snapshots)


def snapshot_dirs(run_dir) -> tuple[Path, Path]:
    """(the warm start's folder, the cycles' folder) of a snapshot run."""
    trajectory = Path(run_dir) / "snapshots"
    return trajectory / "warm-start", trajectory / "cycles"


def warm_start_config(cfg):
    """The config of a snapshot ensemble's warm start, either task: the members' training with its budget (NER
    train.max_epochs, translation train.max_rounds) less the cycles' (config.warm_start_budget), so that the whole
    trajectory has one seed member's budget."""
    budget_key, _ = cfg.train.SNAPSHOT_KEYS
    return replace(cfg, train=replace(cfg.train, **{budget_key: warm_start_budget(cfg.train, cfg.ensemble.members)}))


def record_snapshots(model, run_dir, members: int, write: Callable[[Path, int], dict]) -> list[dict]:
    """Write each of the `members` members of a snapshot run whose folder holds no finished model yet, once the
    cycles are done: the cycles' snapshot i + 1
    (RUN/snapshots/cycles/epoch-<i + 1>.pt) put in `model`, then write(folder, i) writes members/member-<i> (model
    folder, result.json last) as the task writes a member. Rank 0 writes; returns every member's result.json on
    every rank. Raises UserError naming a snapshot or result.json that cannot be read."""
    _, cycles_dir = snapshot_dirs(run_dir)

    def record(i: int) -> dict:
        folder = model_dir(run_dir, "member", i)
        if not finished(folder):
            folder.mkdir(parents=True, exist_ok=True)
            model.load_state_dict(load_torch(cycles_dir / f"epoch-{i + 1}.pt",
                                             f"delete {cycles_dir} to train the cycles again"))
            write(folder, i)
        return read_json(folder / RESULT, f"delete {folder} and train the run again")

    return distributed.on_main(lambda: [record(i) for i in range(members)])


@dataclass
class Run:
    """A trained run of either task: its folder (runs.py), resolved config and loaded data; its model folders are
    loaded on demand, once (`load`), on `train.device`."""
    run_dir: Path
    cfg: object
    data: object
    _models: dict = field(default_factory=dict, repr=False)

    @property
    def task(self):
        return get_task(self.cfg.task)

    def member_dir(self, i: int) -> Path:
        return model_dir(self.run_dir, "member", i)

    def load(self, folder):
        """The model of a finished model folder of this run (member, individual or student), in eval mode.
        Raises UserError for an unfinished folder (no result.json), and for weights other than the ones its
        result.json records (replaced or damaged)."""
        folder = Path(folder)
        if folder not in self._models:
            if not finished(folder):
                raise UserError(f"{folder}: not a finished model (no result.json); train it first, or rerun the "
                                "command that trains it to finish it")
            self._models[folder] = self.task.load_run_model(self.cfg, self.data, folder)
        return self._models[folder]

    def members(self, ensemble_size: int | None = None) -> list:
        """The models of the run's nested ensemble of `ensemble_size` (default: the largest configured)."""
        return [self.load(self.member_dir(i)) for i in ensemble_member_ids(self.cfg, ensemble_size)]


def run_task(run_dir) -> str:
    """The task of a run folder: its config.toml's `task` (older runs: "nmt" when it holds vocab.model).
    Raises UserError when the folder is not a run (a student's folder, which holds its distillation config, is
    named as one)."""
    run_dir = Path(run_dir)
    if (run_dir / "teacher.json").is_file():
        scored = run_dir / "eval" / "test" / "student" / "predictions.npz"
        raise UserError(f"{run_dir}: a student's folder, not a run: `evaluate --run` its teacher's run (it scores "
                        f"every student in RUN/students/), or `evaluate {scored}`")
    if not (run_dir / "config.toml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.toml); train it with `train`")
    return read_toml(run_dir / "config.toml").get("task") or ("nmt" if (run_dir / "vocab.model").is_file() else "ner")


def read_run_config(run_dir, overrides: Sequence[str] = ()):
    """RUN/config.toml of a run of either task (older runs without `task`: "nmt" when the folder holds vocab.model),
    with `overrides` ("section.key=value") of what its members do not fix (Task.run_overridable: decoding,
    distillation, the device). Raises UserError for a folder that is not a run, or an override of a fixed
    setting."""
    run_dir = Path(run_dir)
    task = get_task(run_task(run_dir))
    fixed = [o for o in overrides if not o.strip().startswith(task.run_overridable)]
    if fixed:
        allowed = ", ".join(f"{p}*" if p.endswith(".") else p for p in task.run_overridable)
        raise UserError(f"--set {fixed[0]}: a trained run's members fix this setting; only {allowed} can change")
    return load_config(run_dir / "config.toml", task.config_class, overrides)


def open_run(run_dir, splits: Sequence[str] = ("dev", "test"), progress: bool = True, device: str | None = None,
             overrides: Sequence[str] = ()) -> Run:
    """A trained run of either task (config: `read_run_config`) with `splits` of its data loaded, its models to be
    loaded on `device` (default: the run's train.device; a run trained on a GPU can be evaluated or distilled on a
    CPU and the other way round). Raises UserError as read_run_config does, for a device this machine lacks
    (before the data is read: the run's models are loaded there), and for unreadable data."""
    cfg = read_run_config(run_dir, overrides)
    if device is not None:
        cfg.train.device = device
    require_device(cfg.train.device, f"{Path(run_dir) / 'config.toml'}" if device is None else "--device")
    return Run(Path(run_dir), cfg, get_task(cfg.task).load_data(cfg, Path(run_dir), tuple(splits), progress))


def train_members(cfg, run_dir, progress: bool = True, data=None, only: tuple[str, int] | None = None) -> Run:
    """Train (or resume) every member (and NER individual) of the configured ensemble in `run_dir`, for the task
    `cfg.task` names (tasks/base.py): read the data (`data`: already read), check it, record the run
    (runs.record_run), then fit each planned model not yet finished into RUN/members/ or RUN/individuals/
    (`ensemble.kind = "snapshots"`: task.fit_snapshots trains the one trajectory whose snapshots are the members).
    `only` = (role, index), ("member", 2) or ("individual", 0): that model alone, a job of a job array; the jobs
    wait for one another on the run folder while they check and record the run (and, translation, train its
    vocabulary on first use), then each holds only its model's folder while training it. Without `only` the run
    folder is held throughout, and each model's folder while it trains. Under torchrun every rank trains each
    model data-parallel (training.train) while rank 0 alone holds the locks and writes.
    Returns the Run. Raises UserError for a run folder of another config, data the task refuses, or training or
    dev data other than those run.json records (the members trained so far saw those), for `only` outside the
    configured members or individuals or given for a snapshot ensemble, and for a model folder another process
    is training; nothing that
    binds the folder to this config is written before the data is read and checked, so a first run that fails on
    bad data leaves a folder that takes the corrected config."""
    task = get_task(cfg.task)
    run_dir = Path(run_dir)
    task.check_runnable(validate(cfg))  # a device or an encoder cut this machine lacks: before the folder
    if only is not None:
        _check_addressed(cfg, *only)
    with ExitStack() as run_held:  # under torchrun rank 0 holds the locks and records; all ranks train
        run_held.enter_context(run_lock(run_dir, wait=only is not None))
        distributed.on_main(require_same_config, run_dir, cfg)
        with distributed.main_first():  # rank 0 trains a translation run's vocabulary on first use, the others read it
            if data is None:
                data = (task.training_data(cfg, run_dir, progress) if distributed.is_main()
                        else task.load_data(cfg, run_dir, progress=False))
        task.check_data(cfg, data)
        fingerprints = {split: task.dataset_fingerprint(data, split) for split in ("train", "dev")}
        distributed.on_main(record_run, run_dir, cfg, {**task.run_facts(cfg, data), DATA: fingerprints},
                            must_match=task.must_match)
        snapshots = getattr(cfg.ensemble, "kind", "seeds") == "snapshots"
        if snapshots:  # the members are one trajectory, trained in the held run folder; NER individuals as usual
            task.fit_snapshots(cfg, data, run_dir, progress)
        plans = [p for p in task.member_plans(cfg, data)
                 if only in (None, (p.role, p.index)) and not (snapshots and p.role == "member")]
        if only is not None:
            run_held.close()  # the run is recorded: the other jobs may go on while this one trains
        for plan in plans:
            folder = model_dir(run_dir, plan.role, plan.index)
            if distributed.is_main():
                folder.mkdir(parents=True, exist_ok=True)  # not run_lock's: a failed training leaves it, emptied
            with run_lock(folder):
                if not distributed.on_main(finished, folder):
                    task.fit(task.new_model(cfg, data, plan.seed), cfg, data, plan, folder, progress)
                else:  # "trained" only when whole: a damaged file is named now, not when some command loads it
                    distributed.on_main(verify_finished, folder)
    return Run(run_dir, cfg, data)


def _check_addressed(cfg, role: str, index: int) -> None:
    """Refuse a member or individual index outside the config's: one line naming the flag and the range."""
    if getattr(cfg.ensemble, "kind", "seeds") == "snapshots":
        raise UserError(f"--{role} {index}: ensemble.kind = \"snapshots\": the members are snapshots of one "
                        "training, each continuing the one before, so one job trains them all; run train without "
                        f"--{role}")
    count = cfg.ensemble.members if role == "member" else getattr(cfg.ensemble, "individuals", 0)
    if not 0 <= index < count:
        setting = f"ensemble.{role}s = {count}"
        within = f"0..{count - 1}" if count else "none to train"
        raise UserError(f"--{role} {index}: outside the config's {setting} ({within})")


def unfinished_models(cfg, run_dir, individuals: bool = True) -> list[Path]:
    """The folders of the run's members (and, `individuals`, NER individuals) that hold no finished model yet."""
    roles = [("member", cfg.ensemble.members)]
    if individuals:
        roles.append(("individual", getattr(cfg.ensemble, "individuals", 0)))
    folders = [model_dir(run_dir, role, i) for role, count in roles for i in range(count)]
    return [folder for folder in folders if not finished(folder)]


def require_finished(cfg, run_dir, individuals: bool = True) -> None:
    """Refuse a run whose members (and, `individuals`, NER individuals) are not all trained yet: one line naming
    the missing ones and the command that trains them (a job array's jobs may still be running)."""
    require_finished_models(run_dir, unfinished_models(cfg, run_dir, individuals))
