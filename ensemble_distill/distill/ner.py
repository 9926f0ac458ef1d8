"""NER students: train an IID tagger on a teacher store (distill/memoize.py) and evaluate it.

    rows = distill("runs/conll-iid/teachers/ensemble-9", "configs/distill-conll.toml", "runs/conll-iid-student")

Student (paper §4.1): always an IID tagger, trained on the training sentences but the last tenth (which no member
saw) and early-stopped on span F1 of that tenth, with

    loss = (1 - beta) NLL(gold) + beta KD,   KD = -mean over positions of sum_k q_k log p_student(id_k)

the token-level cross-entropy over the stored entries. The losses are generic over [batch, positions, vocab]:
the translation student reuses `kd_loss` and `distillation_loss` with its own store.
"""

import dataclasses
import platform
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import DistillConfig, TaggingConfig, load_config, to_dict, to_toml, validate
from ..distributed import on_main
from ..ensemble import distillation_sentences, ensemble_member_ids, read_run_config
from ..errors import UserError
from ..evaluation import System, evaluate_systems, fit_temperatures
from ..io_utils import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    require_same_config,
    run_lock,
)
from ..runs import save_model, write_result
from ..tables import format_rows, table_rows
from ..tasks.ner import (
    TASK,
    TaggingData,
    dataset_fingerprint,
    load_tagging_data,
    model_spec,
    new_tagger,
    train_tagger,
)
from ..teacher_store import TeacherStore, require_teachers
from .losses import distillation_loss
from .memoize import TEMPERATURE_PREFIX, member_checkpoints, teacher_name

# ----------------------------------------------------------------------------------------------------------------
# Training and evaluating the student


def distill(store_dir, config, out_dir, n_boot: int = 1000, progress: bool = True,
            data: TaggingData | None = None) -> list[dict]:
    """Train (or resume) an IID student on the store's teacher and evaluate it on test.

    config: a DistillConfig or its TOML file. The store must hold the teacher the config names (the ensemble of
    `distill.teacher_members` of `distill.ensemble_run`), and OUT, if it exists, a student of the same config and
    store. Writes OUT/config.toml, run.json, checkpoint.pt, best.pt, log.jsonl, result.json and
    OUT/eval/test/student[-ts]/ (predictions.npz, metrics.json, plots; raw and temperature-scaled, T fitted on
    dev), holding OUT's lock; returns the table's rows (raw, temperature-scaled)."""
    with run_lock(out_dir):
        return _distill(store_dir, config, Path(out_dir), n_boot, progress, data)


def _distill(store_dir, config, out_dir: Path, n_boot: int, progress: bool, data: TaggingData | None) -> list[dict]:
    cfg = (validate(config, "distill config") if isinstance(config, DistillConfig)
           else load_config(config, DistillConfig))
    student_cfg = student_config(read_run_config(cfg.distill.ensemble_run), cfg)
    data = data or load_tagging_data(student_cfg, splits=("train", "dev", "test"), progress=progress)
    split = data.splits["train"]
    store = TeacherStore.open(store_dir, expect_fingerprint=dataset_fingerprint(split), expect_vocab=data.labels)
    require_ensemble_teacher(store, cfg)
    on_main(_record_student, out_dir, cfg, student_cfg, store, data.labels)
    n = len(split.corpus.sentences)
    held_out = distillation_sentences(n, student_cfg.ensemble.split_seed)
    model = new_tagger(data, student_cfg, cfg.train.seed)
    result = train_student(model, data, store, split.windows_of(np.setdiff1d(np.arange(n), held_out)),
                           split.windows_of(held_out), cfg, out_dir, progress)

    def record() -> list[dict]:  # under torchrun, rank 0 writes the student and evaluates it
        save_model(out_dir, model, model_spec(student_cfg, data, "student", cfg.train.seed,
                                              teacher={"store": str(store.path), "name": teacher_name(store)}))
        write_result(out_dir, task="ner", role="student", seed=cfg.train.seed, best_epoch=result.best_epoch,
                     epochs=result.epochs_run, best_score=result.best_score, score="span_f1")
        model.eval()
        system = System("student", f"student ({teacher_name(store)})", (0,), meta={"models": [str(out_dir)]})
        temperatures = fit_temperatures(TASK, student_cfg, data, [model], [system], str(out_dir))
        scores = evaluate_systems(TASK, student_cfg, data, [model], [system], temperatures, "test",
                                  out_dir / "eval" / "test", n_boot, {"run": str(out_dir)}, progress)
        rows = table_rows([system], scores, temperatures, TASK.columns)
        atomic_write_json(out_dir / "eval" / "test" / "results.json", rows)
        atomic_write_text(out_dir / "eval" / "test" / "results.md",
                          format_rows(rows, TASK.columns, title=f"{out_dir.name}, test"))
        return rows

    return on_main(record)


def require_ensemble_teacher(store: TeacherStore, cfg: DistillConfig) -> None:
    """Refuse a store not memoized from the ensemble `cfg` names: its teachers must be the current weights of
    exactly those members of the run (a temperature-scaled store of them is that teacher too)."""
    run_dir, k = Path(cfg.distill.ensemble_run), cfg.distill.teacher_members
    run_cfg = read_run_config(run_dir)
    if k > run_cfg.ensemble.members:
        raise UserError(f"distill config: 'distill.teacher_members' is {k}, but {run_dir} has "
                        f"{run_cfg.ensemble.members} members")
    ids = ensemble_member_ids(run_cfg, k or None)
    temperature = [t for t in store.manifest["teachers"] if t.startswith(TEMPERATURE_PREFIX)]
    require_teachers(store, member_checkpoints(run_dir, ids, TASK) + temperature,
                     f"the ensemble of {len(ids)} of {run_dir} (distill.teacher_members = {k})")


def student_config(run_cfg: TaggingConfig, cfg: DistillConfig) -> TaggingConfig:
    """The teacher run's data and encoder settings with an IID head and the student's training settings."""
    return dataclasses.replace(run_cfg, model=dataclasses.replace(run_cfg.model, head="iid"), train=cfg.train)


def train_student(model, data: TaggingData, store: TeacherStore, train_windows, held_out_windows,
                  cfg: DistillConfig, run_dir, progress: bool = True):
    """The tagger training loop with the distillation loss: each batch of windows reads its sentences' teacher
    entries from the store."""
    split = data.splits["train"]
    sentence_of = np.array([w.sentence for w in split.windows])
    first_word_of = np.array([w.first_word for w in split.windows])
    d = cfg.distill

    def loss_fn(m, batch):
        mask = batch["word_mask"]
        ids, probs, remainder = window_targets(store, sentence_of[batch["windows"]],
                                               first_word_of[batch["windows"]], mask.shape[1])
        logits = m.emissions(batch["states"], batch["attention_mask"], batch["word_starts"], mask)
        ids, probs, remainder = ids.to(mask.device), probs.to(mask.device), remainder.to(mask.device)
        loss = distillation_loss(logits, batch["word_labels"], mask, ids, probs, remainder, beta=d.beta,
                                 mode=d.remainder, temperature=d.temperature, label_smoothing=d.label_smoothing)
        return loss, int(mask.sum())

    return train_tagger(model, data, train_windows, ("train", held_out_windows), cfg.train, run_dir, progress,
                        loss_fn=loss_fn)


def window_targets(store: TeacherStore, sentences: np.ndarray, first_words: np.ndarray, n_words: int):
    """Teacher entries at each window word: word j of a window is word first_word + j of its sentence.
    Returns ids, probs [B, n_words, K] and remainder [B, n_words]; positions past a window's end are padding."""
    teacher = store.batch(sentences)
    word = torch.from_numpy(first_words)[:, None] + torch.arange(n_words)[None, :]
    word = word.clamp(max=max(teacher.ids.shape[1] - 1, 0))  # past a sentence's end: masked out by word_mask
    at = word[..., None].expand(-1, -1, teacher.ids.shape[-1])
    return teacher.ids.gather(1, at), teacher.probs.gather(1, at), teacher.remainder.gather(1, word)


def _record_student(out_dir: Path, cfg: DistillConfig, student_cfg: TaggingConfig, store: TeacherStore,
                    labels: list[str]) -> None:
    """config.toml and run.json; a folder holding a student of another config or store is refused, naming what
    differs (its checkpoint would otherwise be resumed)."""
    import transformers

    require_same_config(out_dir, cfg)
    identity = {"store_dataset": store.manifest["dataset_fingerprint"], "store_teachers": store.manifest["teachers"]}
    previous = out_dir / "run.json"
    if previous.is_file():
        recorded = read_json(previous, f"delete {out_dir} and distill again")
        changed = [key for key in identity if recorded.get(key) != identity[key]]
        if changed:
            raise UserError(f"{out_dir}: holds a student of another teacher store (its {changed[0]} differs from "
                            f"{store.path}'s); use a new folder")
    atomic_write_text(out_dir / "config.toml", to_toml(cfg))
    atomic_write_json(previous, {
        **identity, "store": str(store.path), "labels": labels, "student": to_dict(student_cfg),
        "ensemble_distill": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": np.__version__, "python": platform.python_version()})
