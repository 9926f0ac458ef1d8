"""The run folder contract, the same for both tasks, and self-describing model folders.

    RUN/config.toml              the resolved config (paths absolute); a different config is refused on resume
    RUN/run.json                 versions of the libraries, seeds, facts of the data (labels, vocabulary size)
    RUN/members/member-<i>/      one model folder each (below)
    RUN/individuals/individual-<i>/   NER: models trained on all the data (the table's mean ± s.e. rows)
    RUN/teachers/<name>/         teacher stores (teacher_store.py)
    RUN/students/<name>/         student model folders
    RUN/eval/<split>/            predictions, metrics and plots per system; results.{md,json}

A model folder (member, individual or student) is self-describing:

    model.json                   {"task", "role", "seed", "model": the architecture, "labels" (NER) or
                                  "vocab": "vocab.model" (NMT, the file beside it), "encoder" (NER: name, path,
                                  sha256 of its weights, finetune_layers), "teacher" (students)}
    model.safetensors            the weights (the fine-tuned top layers and the head, or the whole Transformer)
    result.json                  written last: the folder holds a finished model (one schema, `write_result`)
    checkpoint.pt, best.pt, log.jsonl, epoch-<n>.pt, model.pt    training's own files, for resuming

`ensemble_distill.load_model(folder)` rebuilds a model from its folder alone (tasks/__init__.py). Every folder is
written by one process at a time (io_utils.run_lock), and only with the config it was started with
(io_utils.require_same_config).

Caches live in one place, `io_utils.cache_root()`: $ENSEMBLE_DISTILL_CACHE, else ~/.cache/ensemble-distill
(converted encoders under encoders/, frozen-layer outputs under frozen/ unless `encoder.cache_dir` says otherwise).
"""

import json
import platform
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import to_toml
from .errors import UserError
from .io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text

MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
RESULT = "result.json"
MODEL_FORMAT = 1


def versions() -> dict:
    """The versions a run records: this package, Python and the numerical libraries."""
    import transformers

    return {"ensemble_distill": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "transformers": transformers.__version__}


def model_dir(run_dir, role: str, index: int) -> Path:
    """RUN/members/member-<i> or RUN/individuals/individual-<i>."""
    if role not in ("member", "individual"):
        raise ValueError(f"model_dir: role must be 'member' or 'individual', got {role!r}")
    return Path(run_dir) / f"{role}s" / f"{role}-{index}"


def record_run(run_dir, cfg, facts: dict, must_match: tuple[str, ...] = ()) -> None:
    """Write RUN/config.toml and RUN/run.json ({versions, **facts}). The caller has already refused another config
    (io_utils.require_same_config). A fact named in `must_match` that the run recorded with another value (the
    label set its members were trained on) is refused: UserError naming the fact."""
    run_dir = Path(run_dir)
    previous = run_dir / "run.json"
    if previous.is_file():
        recorded = json.loads(previous.read_text())
        for key in must_match:
            if key in recorded and recorded[key] != facts[key]:
                raise UserError(f"{run_dir}: was started on data with the {key} {recorded[key]}, the data now give "
                                f"{facts[key]}; use a new folder")
    atomic_write_text(run_dir / "config.toml", to_toml(cfg))
    atomic_write_json(previous, {**versions(), **facts})


def finished(folder) -> bool:
    """Whether a model folder holds a finished model: result.json is written last."""
    return (Path(folder) / RESULT).is_file()


def write_result(folder, *, task: str, role: str, seed: int, best_epoch: int, epochs: int, best_score: float,
                 score: str, **extra) -> dict:
    """result.json, the same schema for every model: task, role (member, individual, student), seed, best_epoch
    and epochs (NMT: rounds of `updates_per_round` updates), best_score on the held-out data and what it is
    (`score`: "span_f1" or "neg_dev_nll"), and task-specific extras. Write it last. Returns what it wrote."""
    record = {"task": task, "role": role, "seed": seed, "best_epoch": best_epoch, "epochs": epochs,
              "best_score": best_score, "score": score, **extra}
    atomic_write_json(Path(folder) / RESULT, record)
    return record


def save_model(folder, model: torch.nn.Module, spec: dict) -> None:
    """model.safetensors and model.json (`spec` with the format version). Write before result.json.

    A weight shared under two names (a tied embedding and output projection) is stored once, under its first name
    in the state dict; the file's only metadata is {"format": "pt"}, so its bytes depend only on the weights
    (safetensors' own aliasing writes one metadata key per alias, in a hash order that changes from call to call)."""
    from safetensors.torch import save

    aliases = _aliases(model.state_dict())
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items() if name not in aliases}
    atomic_write_bytes(Path(folder) / WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_json(Path(folder) / MODEL_JSON, {"format": MODEL_FORMAT, **spec})


def _aliases(state_dict: dict) -> set[str]:
    """Names of the state dict whose tensor is one an earlier name already holds (same storage, shape, offset)."""
    seen, aliases = set(), set()
    for name, t in state_dict.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases.add(name)
        seen.add(key)
    return aliases


def read_model_spec(folder) -> dict:
    """model.json of a model folder. Raises UserError naming the folder when it is not a finished model folder."""
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder}: not a model folder (no {MODEL_JSON} and {WEIGHTS}); give a member, individual "
                        "or student folder of a run")
    if not finished(folder):
        raise UserError(f"{folder}: an unfinished model (no {RESULT}); rerun the command that trains it")
    try:
        spec = json.loads(path.read_text())
        task = spec["task"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: malformed (not JSON with a 'task')") from None
    if spec.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: format {spec.get('format')!r}, this version reads {MODEL_FORMAT}")
    if task not in ("ner", "nmt"):
        raise UserError(f"{path}: unknown task {task!r} (known: ner, nmt)")
    return spec


def load_weights(folder, model: torch.nn.Module, device="cpu") -> torch.nn.Module:
    """Fill `model` (built from model.json) with the folder's weights, on `device`; returns it in eval mode.
    Raises UserError when the file does not hold exactly the model's weights (shared ones once)."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(Path(folder) / WEIGHTS), strict=False)
    missing = sorted(set(missing) - _aliases(model.state_dict()))
    if missing or unexpected:
        raise UserError(f"{folder}/{WEIGHTS}: does not fit the model model.json describes (missing "
                        f"{missing[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.to(device).eval()
