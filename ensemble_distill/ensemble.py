"""Ensembles of taggers: who holds out which tenth, nested subsets, training all members, predicting with them.

The training set is cut into tenths by a seeded permutation. Member i early-stops on tenth i and trains on the
others, except the last tenth, which every member leaves out so a distilled student can validate on data no
teacher saw. An ensemble of k is the first k members of a seeded permutation, so 3 ⊂ 6 ⊂ 9.

The run folder and its model folders follow runs.py (RUN/members/member-<i>/, RUN/individuals/individual-<i>/:
models trained on all the data, early-stopped on dev); a model without result.json is unfinished, resumed by
`train`, never used.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import MAX_MEMBERS, N_TENTHS, TaggingConfig, load_config, validate
from .errors import UserError
from .io_utils import require_same_config, run_lock
from .runs import finished, record_run, save_model, write_result
from .tasks.ner import TaggingData, load_tagging_data, member_seed, model_spec, new_tagger, train_tagger


def tenths(n_sentences: int, split_seed: int) -> list[np.ndarray]:
    """The training sentences cut into ten seeded, near-equal parts."""
    order = np.random.default_rng(split_seed).permutation(n_sentences)
    return [np.sort(part) for part in np.array_split(order, N_TENTHS)]


def member_sentences(n_sentences: int, member: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training sentences, early-stopping sentences) of member i: it holds out tenth i and the shared last tenth."""
    if not 0 <= member < MAX_MEMBERS:
        raise UserError(f"ensemble.members: at most {MAX_MEMBERS} members (each holds out its own tenth)")
    parts = tenths(n_sentences, split_seed)
    train = np.concatenate([p for i, p in enumerate(parts) if i not in (member, N_TENTHS - 1)])
    return np.sort(train), parts[member]


def distillation_sentences(n_sentences: int, split_seed: int) -> np.ndarray:
    """The tenth that no member trained or early-stopped on: the student's validation data."""
    return tenths(n_sentences, split_seed)[N_TENTHS - 1]


def nested_subsets(n_members: int, sizes: list[int], split_seed: int) -> dict[int, list[int]]:
    """Member ids of each ensemble size; smaller ensembles are prefixes of one seeded permutation."""
    order = np.random.default_rng(split_seed + 1).permutation(n_members).tolist()
    bad = [k for k in sizes if not 1 <= k <= n_members]
    if bad:
        raise UserError(f"ensemble.subset_sizes: {bad[0]} is not between 1 and ensemble.members = {n_members}")
    return {k: sorted(order[:k]) for k in sorted(set(sizes))}


def ensemble_member_ids(cfg: TaggingConfig, ensemble_size: int | None = None) -> list[int]:
    """Member ids of the run's nested ensemble of `ensemble_size` (default: the largest configured subset)."""
    e = cfg.ensemble
    if ensemble_size is not None and not 1 <= ensemble_size <= e.members:
        raise UserError(f"ensemble of {ensemble_size}: the run has {e.members} members")
    subsets = nested_subsets(e.members, e.subset_sizes, e.split_seed)
    k = max(subsets) if ensemble_size is None else ensemble_size
    return subsets.get(k) or nested_subsets(e.members, [k], e.split_seed)[k]


def model_dir(run_dir, index: int, individual: bool = False) -> Path:
    """Where member i (or individual model i) of a run keeps its checkpoints."""
    group = "individual" if individual else "member"
    return Path(run_dir) / f"{group}s" / f"{group}-{index}"


@dataclass
class EnsembleRun:
    run_dir: Path
    cfg: TaggingConfig
    data: TaggingData

    def member_dir(self, i: int) -> Path:
        return model_dir(self.run_dir, i)


def train_ensemble(cfg: TaggingConfig, run_dir, progress: bool = True, data: TaggingData | None = None) -> EnsembleRun:
    """Train (or resume) every member and optional individual model of the configured ensemble."""
    run_dir = Path(run_dir)
    validate(cfg)
    with run_lock(run_dir):
        require_same_config(run_dir, cfg)
        data = data or load_tagging_data(cfg, progress=progress)
        train_split = data.splits["train"]
        n = len(train_split.corpus.sentences)
        if n < N_TENTHS:  # refused before the run is recorded, so the folder takes the corrected config
            raise UserError(f"{cfg.data.train}: {n} training sentences; an ensemble needs at least {N_TENTHS} "
                            "(each member early-stops on its own tenth of them)")
        record_run(run_dir, cfg, {
            "task": "ner", "labels": data.labels, "split_seed": cfg.ensemble.split_seed,
            "member_seeds": [member_seed(cfg, i) for i in range(cfg.ensemble.members)],
            "individual_seeds": [member_seed(cfg, i, True) for i in range(cfg.ensemble.individuals)],
        }, must_match=("labels",))
        for i in range(cfg.ensemble.members):
            train_ids, held_ids = member_sentences(n, i, cfg.ensemble.split_seed)
            _train_one(data, cfg, "member", member_seed(cfg, i), train_split.windows_of(train_ids),
                       ("train", train_split.windows_of(held_ids)), model_dir(run_dir, i), progress)
        all_train = np.arange(len(train_split.windows))
        dev_windows = np.arange(len(data.splits["dev"].windows))
        for i in range(cfg.ensemble.individuals):
            _train_one(data, cfg, "individual", member_seed(cfg, i, True), all_train, ("dev", dev_windows),
                       model_dir(run_dir, i, individual=True), progress)
    return EnsembleRun(run_dir, cfg, data)


def _train_one(data, cfg, role: str, seed, train_windows, held_out, out_dir: Path, progress):
    """Train (or resume) one model; model.json and model.safetensors, then result.json, written last, which marks
    it finished (and skipped from then on)."""
    if finished(out_dir):
        return
    model = new_tagger(data, cfg, seed)
    train_cfg = type(cfg.train)(**{**cfg.train.__dict__, "seed": seed})
    result = train_tagger(model, data, train_windows, held_out, train_cfg, out_dir, progress)
    save_model(out_dir, model, model_spec(cfg, data, role, seed))
    write_result(out_dir, task="ner", role=role, seed=seed, best_epoch=result.best_epoch, epochs=result.epochs_run,
                 best_score=result.best_score, score="span_f1")


def load_member(run: EnsembleRun, model_dir: Path, seed: int = 0):
    """A finished member's (or individual's) best weights; an unfinished one (no result.json) is refused."""
    best = model_dir / "best.pt"
    if not finished(model_dir) or not best.is_file():
        raise UserError(f"{model_dir}: not a finished model (no result.json); run train-ensemble to train or "
                        "finish it")
    model = new_tagger(run.data, run.cfg, seed)
    model.load_state_dict(torch.load(best, weights_only=True))
    return model.eval()


def read_run_config(run_dir: Path) -> TaggingConfig:
    if not (Path(run_dir) / "config.toml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.toml)")
    return load_config(Path(run_dir) / "config.toml", TaggingConfig)

