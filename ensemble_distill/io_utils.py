"""Writing into run folders safely.

- Atomic writes: a file is either absent or complete, never half-written (temp file in the same folder + rename).
  Saved bytes depend only on the content (no temporary names, no timestamps), so identical runs write identical
  files.
- `run_lock(folder)`: one writer per run folder, teacher store or student folder at a time.
- `require_same_config(folder, cfg)`: a folder started with one config is never continued with another.
"""

import errno
import fcntl
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import FolderInUse, UserError

LOCK = ".lock"


@contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path`, on failure it is removed.

    Raises UserError naming `path` when the system refuses the output (no permission, a read-only or full file
    system, a file where a folder should be): the folders are checked up front, so this is a late refusal."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"{path}: cannot be written ({err.strerror}: {err.filename})") from err
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs should read like any other file
        os.replace(tmp, path)
    except OSError as err:
        if str(err.filename) not in (tmp, str(path)) and err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise  # not about this output (an input the caller read meanwhile)
        raise UserError(f"{path}: cannot be written ({err.strerror})") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write atomically and fsync before the rename: a resumed run trusts the files a crashed one left."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_torch_save(obj, path) -> None:
    """torch.save, byte-reproducibly: saved to memory first, because torch.save(obj, file) names the archive's
    records after the file, and the file here is a temporary one with a random name."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path, text: str) -> None:
    """Write UTF-8 text atomically; a name ending in .gz is written through gzip (as data/text.py reads it back),
    with no timestamp in its header so that the same text gives the same bytes."""
    if Path(path).suffix == ".gz":
        atomic_write_bytes(path, gzip.compress(text.encode(), mtime=0))
        return
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, strict_json(obj, indent=2, sort_keys=True) + "\n")


def strict_json(obj, **dumps_kwargs) -> str:
    """json.dumps, with NaN and infinite floats (an undefined metric, a diverged loss) written as null: bare NaN
    and Infinity are not JSON, and strict parsers reject them."""
    return json.dumps(_finite_or_none(obj), allow_nan=False, **dumps_kwargs)


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(value) for value in obj]
    return obj


def cache_root() -> Path:
    """The one place for caches (converted encoders, frozen-layer outputs): $ENSEMBLE_DISTILL_CACHE, else
    ~/.cache/ensemble-distill. Everything in it can be deleted; it is rebuilt on first use."""
    return Path(os.environ.get("ENSEMBLE_DISTILL_CACHE") or Path.home() / ".cache" / "ensemble-distill")


def sha256_file(path) -> str:
    """The hex sha256 of a file's bytes, read in chunks (weights files are hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def arrays_sha256(*arrays) -> str:
    """The hex sha256 of numpy arrays' bytes, one after another in C order, read in place (a cache's arrays are
    hundreds of MB; tobytes would copy them): what a cache records to tell damaged bytes of the same shape."""
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()


def checkpoint_name(run_dir, checkpoint) -> str:
    """How a teacher store names a teacher's weights file: its path in the run and its sha256.

    Raises UserError when the file cannot be read (the run is not trained)."""
    try:
        digest = sha256_file(checkpoint)
    except OSError as error:
        raise UserError(f"{checkpoint}: cannot read the teacher checkpoint ({error.strerror}); train the run "
                        "first") from None
    return f"{Path(checkpoint).relative_to(run_dir).as_posix()} sha256:{digest}"


# ----------------------------------------------------------------------------------------------------------------
# Reading back what was written: a missing, cut or garbled file is one line naming it and how to recover


def read_json(path, remedy: str):
    """The JSON value in `path`. Raises UserError naming the file, why it cannot be read and `remedy` (what to
    do about it) when it is missing, unreadable or not JSON (cut short by a full disk, edited by hand)."""
    try:
        return json.loads(Path(path).read_bytes())
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); {remedy}") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise UserError(f"{path}: damaged, not JSON ({error}); {remedy}") from None


# What torch.load raises on a file cut short or garbled: an empty file (EOFError), a cut zip archive (RuntimeError
# from its PytorchStreamReader, or OSError EINVAL), bytes that are no archive at all (UnpicklingError).
_TORCH_DAMAGE = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError)


def load_torch(path, remedy: str, weights_only: bool = True, map_location="cpu"):
    """torch.load(path). Raises UserError naming the file, torch's reason and `remedy` when it cannot be read.
    (A file cut short always fails here; a byte flipped inside a tensor does not, which is why finished models
    also record the sha256 of their files: runs.checked_file.)"""
    import torch

    try:
        return torch.load(path, weights_only=weights_only, map_location=map_location)
    except _TORCH_DAMAGE as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else "the file ends too early"
        raise UserError(f"{path}: cannot be read, damaged or cut short ({reason}); {remedy}") from None


# ----------------------------------------------------------------------------------------------------------------
# One writer per folder


_held: dict[Path, int] = {}  # folders this process holds, with how deeply their run_lock blocks nest


def writes_files() -> bool:
    """Whether this process writes files: any process but a rank other than 0 of a torchrun job (RANK in the
    environment; distributed.py), whose files rank 0 writes."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def run_lock(folder, wait: bool = False):
    """Hold `folder` for writing: the folder is created if needed, and FOLDER/.lock, holding this process's
    id and host, is locked with an operating-system file lock until the block ends (also by an exception).
    `wait`: block until another process releases it instead of refusing (member jobs sharing one run folder).

    The OS lock, not the file, decides: a lock file left by a killed process is simply taken over, because a
    dead process holds no lock. Re-entrant within a process (a sweep distils students that memoise teachers).
    Raises FolderInUse (a UserError) naming the folder and the holder's process id when another process holds
    it, UserError when the folder cannot be created or written. A folder this call created and left empty is
    removed on release.
    Under torchrun only rank 0, which writes, holds the lock; the other ranks hold nothing (writes_files)."""
    folder = Path(folder)
    if not writes_files():
        yield folder
        return
    key = folder.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder / LOCK, wait)
    except OSError as error:
        raise UserError(f"{folder}: cannot write here ({error.strerror or error})") from None
    _held[key] = 1
    try:
        yield folder
    finally:
        del _held[key]
        (folder / LOCK).unlink(missing_ok=True)  # while still locked: nobody else holds this file
        os.close(fd)
        if created:
            try:
                folder.rmdir()  # only if empty: a run refused before it wrote anything leaves no folder
            except OSError:
                pass


def _acquire(path: Path, wait: bool = False) -> int:
    """An open, exclusively locked descriptor of `path`, which then holds {"pid", "host"} of this process."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # a holder that created it may have removed it, left empty
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUse(f"{path.parent}: in use by process {holder} (lock file {path}); wait until it "
                            "ends, or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder may have released and removed the file between our open and our lock: retry then
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"{holder['pid']} on {holder['host']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "unknown (the lock file is being written)"


# ----------------------------------------------------------------------------------------------------------------
# One config per folder

# What a run or student folder holds once a model was trained under its config (runs.py's layout).
TRAINED = ("checkpoint.pt", "result.json", "*/*/checkpoint.pt", "*/*/result.json")


def require_same_config(folder, cfg, name: str = "config.toml", dry: bool = False, moves_with=()) -> None:
    """Refuse to continue `folder` with `cfg` when FOLDER/name records another config and the folder holds a model
    or checkpoint trained under it (TRAINED): one line naming the first key that differs. Paths compare as the
    files they name (config.same_files), so a run recorded with "/x/clone/../data/f" resumes with "/x/data/f".

    A recorded config under which nothing was trained (a first run that failed on its data, or whose training
    diverged and was discarded) binds nothing: it is removed with run.json, and the folder takes `cfg`. A folder
    that holds trained models or checkpoints but no config is refused: no one can tell which config trained them.
    `dry`: only refuse, changing no file (reproduce checks every folder of its plan before it runs, and in
    --dry-run). `moves_with`: keys that name where the folder itself lives (a student's distill.ensemble_run, the
    run holding it), not compared, so that a run moved or copied whole resumes."""
    from .config import load_config, same_files, to_dict

    folder = Path(folder)
    recorded = folder / name
    trained = next((p for pattern in TRAINED for p in sorted(folder.glob(pattern))), None)
    if not recorded.is_file():
        if trained is not None:
            raise UserError(f"{folder}: holds {trained.relative_to(folder)} but no {name}, so the config it was "
                            f"trained with is unknown; put back the {name} it was started with, or use a new folder")
        return
    old = load_config(recorded, type(cfg), resolve_paths=False)
    before, now = _flat(to_dict(old)), _flat(to_dict(cfg))
    files_before, files_now = _flat(to_dict(same_files(old))), _flat(to_dict(same_files(cfg)))
    for key in now:
        if key not in moves_with and files_before.get(key) != files_now[key]:
            if trained is None:
                if dry:
                    return
                recorded.unlink()
                (folder / "run.json").unlink(missing_ok=True)
                return
            raise UserError(f"{folder}: was started with another config: '{key}' is {before.get(key)!r} in "
                            f"{recorded}, {now[key]!r} now; resume with the same config, or use a new folder")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
