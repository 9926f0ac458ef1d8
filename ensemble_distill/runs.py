"""The run folder contract, the same for both tasks, and self-describing model folders.

    RUN/config.toml              the resolved config (paths absolute); a different config is refused on resume
    RUN/run.json                 versions of the libraries, seeds, facts of the data (labels, vocabulary size,
                                 fingerprints of the tokenised train and dev data: other data are refused on resume)
    RUN/members/member-<i>/      one model folder each (below)
    RUN/individuals/individual-<i>/   NER: models trained on all the data (the table's mean ± s.e. rows)
    RUN/teachers/<name>/         teacher stores (teacher_store.py)
    RUN/teachers/members/        NER: each member's training-split distributions, a cache (distill/member_cache.py)
    RUN/students/<name>/         student model folders
    RUN/eval/<split>/            predictions, metrics and plots per system; results.{md,json}

A model folder (member, individual or student) is self-describing:

    model.json                   {"task", "role", "seed", "model": the architecture, "labels" (NER) or
                                  "vocab": "vocab.model" (NMT, the file beside it), "encoder" (NER: name, path,
                                  sha256 of its weights, finetune_layers), "teacher" (students)}
    model.safetensors            the weights (the fine-tuned top layers and the head, or the whole Transformer)
    result.json                  written last: the folder holds a finished model (one schema, `write_result`),
                                 with the sha256 of each file it is loaded from, checked on every load
    checkpoint.pt, best.pt, log.jsonl, epoch-<n>.pt, model.pt    training's own files, for resuming

`ensemble_distill.load_model(folder)` rebuilds a model from its folder alone (tasks/__init__.py). Every folder is
written by one process at a time (io_utils.run_lock), and only with the config it was started with
(io_utils.require_same_config).

Caches live in one place, `io_utils.cache_root()`: $ENSEMBLE_DISTILL_CACHE, else ~/.cache/ensemble-distill
(converted encoders under encoders/, frozen-layer outputs under frozen/ unless `encoder.cache_dir` says otherwise).
"""

import platform
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import to_toml
from .errors import UserError
from .io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text, load_torch, read_json, sha256_file

MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
RESULT = "result.json"
MODEL_FORMAT = 1
LOADED = (MODEL_JSON, WEIGHTS, "best.pt", "model.pt", "vocab.model")  # files a finished model is loaded from
DATA = "data_fingerprint"  # run.json: per split that trains or early-stops members, its tokenised data's fingerprint


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


def record_run(run_dir, cfg, facts: dict, must_match: dict | None = None) -> None:
    """Write RUN/config.toml and RUN/run.json ({versions, **facts}). The caller has already refused another config
    (io_utils.require_same_config). A fact named in `must_match` that the run recorded with another value (the
    label set its members were trained on) is refused: UserError naming the fact; must_match[fact] is the value a
    run.json written before the fact was recorded stands for (None: such a run is not checked). So is data whose
    fingerprint
    (facts[DATA], {split: fingerprint}) differs from the recorded one: UserError naming the split's files, because
    the members trained so far saw the recorded data (a config names files, not their contents)."""
    run_dir = Path(run_dir)
    previous = run_dir / "run.json"
    if previous.is_file():
        recorded = read_json(previous, "delete it to have it written again (the data and labels of the members "
                                       "trained so far are then not checked)")
        for key, before in (must_match or {}).items():
            value = recorded.get(key, before)
            if value is not None and value != facts[key]:
                raise UserError(f"{run_dir}: was started with the {key} {value}, now {facts[key]}; use a new folder")
        for split, fingerprint in facts.get(DATA, {}).items():
            if recorded.get(DATA, {}).get(split, fingerprint) != fingerprint:
                files = [str(getattr(cfg.data, key)) for key in (split, f"{split}_src", f"{split}_tgt")
                         if hasattr(cfg.data, key)]
                raise UserError(f"{', '.join(files)}: not the {split} data {run_dir} was started on (its run.json "
                                f"records other tokenised {split} data, fingerprint {recorded[DATA][split][:12]}…, "
                                f"not {fingerprint[:12]}…); restore the files its members were trained on, or use "
                                "a new folder")
    atomic_write_text(run_dir / "config.toml", to_toml(cfg))
    atomic_write_json(previous, {**versions(), **facts})


def finished(folder) -> bool:
    """Whether a model folder holds a finished model: result.json is written last."""
    return (Path(folder) / RESULT).is_file()


def write_result(folder, *, task: str, role: str, seed: int, best_epoch: int, epochs: int, best_score: float,
                 score: str, **extra) -> dict:
    """result.json, the same schema for every model: task, role (member, individual, student), seed, best_epoch
    and epochs (NMT: rounds of `updates_per_round` updates), best_score on the held-out data and what it is
    (`score`: "span_f1" or "neg_dev_nll"), and task-specific extras; `sha256`: the digest of each file the model is
    loaded from (LOADED), checked on every load (`checked_file`). Write it last. Returns what it wrote."""
    folder = Path(folder)
    digests = {name: sha256_file(folder / name) for name in LOADED if (folder / name).is_file()}
    record = {"task": task, "role": role, "seed": seed, "best_epoch": best_epoch, "epochs": epochs,
              "best_score": best_score, "score": score, **extra, "sha256": digests}
    atomic_write_json(Path(folder) / RESULT, record)
    return record


def checked_file(folder, name: str) -> Path:
    """FOLDER/name, once its sha256 is the one FOLDER/result.json records (models finished by versions that did
    not record digests pass unchecked). Raises UserError naming the file when it differs, replaced (a member's
    weights copied over another's) or damaged, or when result.json or the file cannot be read."""
    folder = Path(folder)
    path, retrain = folder / name, f"delete {folder} and rerun the command that trains it"
    recorded = read_json(folder / RESULT, retrain)
    expected = recorded.get("sha256", {}).get(name) if isinstance(recorded, dict) else None
    if expected is not None:
        try:
            actual = sha256_file(path)
        except OSError as error:
            raise UserError(f"{path}: cannot be read ({error.strerror}); {retrain}") from None
        if actual != expected:
            raise UserError(f"{path}: not the file this model was saved with (sha256 {actual[:12]}…, {RESULT} "
                            f"records {expected[:12]}…): replaced or damaged; restore it, or {retrain}")
    return path


def verify_finished(folder) -> None:
    """Check a finished model folder whole: its result.json readable and every file it records a digest of
    unchanged (`checked_file`), whichever of them a later command loads. Raises UserError naming the first that is
    not."""
    recorded = read_json(Path(folder) / RESULT, f"delete {folder} and rerun the command that trains it")
    for name in recorded.get("sha256", {}) if isinstance(recorded, dict) else ():
        checked_file(folder, name)


def load_state(folder, name: str, device="cpu") -> dict:
    """The state dict in a finished model's FOLDER/name (best.pt, model.pt), checked against result.json
    (`checked_file`), on `device`. Raises UserError naming the file when it differs or cannot be read."""
    path = checked_file(folder, name)
    return load_torch(path, f"delete {folder} and rerun the command that trains it", map_location=device)


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


def require_finished_models(run_dir, folders) -> None:
    """Refuse those of a run's member or individual `folders` (model_dir) that hold no finished model yet: one
    line naming them and the command that trains them (a job array's jobs may still be running, or were killed).
    Raises UserError."""
    missing = [Path(folder) for folder in folders if not finished(folder)]
    if missing:
        names = ", ".join(folder.name for folder in missing)
        role, index = missing[0].name.rsplit("-", 1)
        raise UserError(f"{run_dir}: not trained yet: {names} (no {RESULT}); train each with `ensemble-distill "
                        f"train --config {Path(run_dir) / 'config.toml'} --out {run_dir} --{role} {index}` "
                        "(or all at once without --member), then rerun")


def read_model_spec(folder) -> dict:
    """model.json of a model folder. Raises UserError naming the folder when it is not a finished model folder
    (a run's member or individual not trained yet: require_finished_models' message)."""
    folder = Path(folder)
    path = folder / MODEL_JSON
    role = folder.name.rsplit("-", 1)[0]
    if (not finished(folder) and role in ("member", "individual") and folder.parent.name == role + "s"
            and (folder.parent.parent / "config.toml").is_file()):
        require_finished_models(folder.parent.parent, [folder])
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder}: not a model folder (no {MODEL_JSON} and {WEIGHTS}); give a member, individual "
                        "or student folder of a run")
    if not finished(folder):
        raise UserError(f"{folder}: an unfinished model (no {RESULT}); rerun the command that trains it")
    spec = read_json(checked_file(folder, MODEL_JSON), f"delete {folder} and rerun the command that trains it")
    try:
        task = spec["task"]
    except (KeyError, TypeError):
        raise UserError(f"{path}: malformed (not JSON with a 'task')") from None
    if spec.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: format {spec.get('format')!r}, this version reads {MODEL_FORMAT}")
    if task not in ("ner", "nmt"):
        raise UserError(f"{path}: unknown task {task!r} (known: ner, nmt)")
    return spec


def load_weights(folder, model: torch.nn.Module, device="cpu") -> torch.nn.Module:
    """Fill `model` (built from model.json) with the folder's weights, on `device`; returns it in eval mode.
    Raises UserError when the file does not hold exactly the model's weights (shared ones once)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checked_file(folder, WEIGHTS)
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: cannot be read, damaged or cut short ({error}); delete {folder} and rerun the "
                        "command that trains it") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - _aliases(model.state_dict()))
    if missing or unexpected:
        raise UserError(f"{folder}/{WEIGHTS}: does not fit the model model.json describes (missing "
                        f"{missing[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.to(device).eval()
