"""The member cache: each member's distributions over the training split, computed once for its weights and data
and kept, so that memoizing a run's nested ensembles (3 ⊂ 6 ⊂ 9, and 9 temperature-scaled: paper §5.1, Table 5)
runs each member over the training split once, not 3 + 6 + 9 + 9 times.

    RUN/teachers/members/member-<i>.safetensors
        probs    float32 [words, V]        member i's per-word distributions (CRF: marginals), sentences in order
        offsets  int64 [sentences + 1]     sentence s is rows offsets[s]:offsets[s + 1]
        metadata {"member": JSON}          the member's weights (memoize.member_checkpoints' name: path and
                                           sha256), the training split's fingerprint (Task.dataset_fingerprint),
                                           the batching and device of the pass, and the sha256 of both arrays

A file of other weights (a retrained member), data, batching or device, or one cut short or damaged, is never used:
the member runs again and the file is replaced (written atomically, so a kill leaves the old file or the new one).
Everything under RUN/teachers/members may be deleted; it is recomputed on next use.

Only for tasks whose distributions are small (Task.caches_member_probs): NER's label sets (~7 MB a member on
CoNLL-2003's 204K training words and 9 labels); a translation member's next-token distributions over an 8K
vocabulary would not fit.

The teacher is the mean of the cached arrays, summed in member order and divided by k on the models' device: the
float32 operations the ensemble pass of Task.teacher_probs does, on the same per-member values (a member's pass
runs the store's own batches of Task.batch_sentences sentences, which the store's shards of 4096 sentences never
cut differently), so a store written from the cache is byte-identical to one written by the ensemble pass.
"""

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io_utils import arrays_sha256, atomic_write_bytes

FORMAT = "ensemble-distill member distributions 1"


def cache_path(run_dir, member: int) -> Path:
    """RUN/teachers/members/member-<i>.safetensors."""
    return Path(run_dir) / "teachers" / "members" / f"member-{member}.safetensors"


def cached_teacher_probs(run, ids: list[int], models: list, checkpoints: list[str], progress: bool = True):
    """Task.teacher_probs of the ensemble `models` (the run's members `ids`, whose weights `checkpoints` names, in
    order) from the member cache: teacher_probs(sentences) -> per sentence float32 [words, V], numpy. The members'
    passes (those not cached yet) run on the first call, so a finished store costs none."""
    device = next(models[0].parameters()).device
    key = {"format": FORMAT, "fingerprint": run.task.dataset_fingerprint(run.data),
           "batch_sentences": run.task.batch_sentences(run.cfg), "device": str(device)}

    @functools.cache
    def members() -> list[tuple[np.ndarray, np.ndarray]]:
        return [member_probs(run, i, model, {**key, "weights": name}, progress)
                for i, model, name in zip(ids, models, checkpoints)]

    def teacher_probs(sentences) -> list[np.ndarray]:
        arrays = members()
        offsets = arrays[0][1]
        words = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in sentences])
        total = sum(torch.from_numpy(probs[words]).to(device) for probs, _ in arrays)
        mean = (total / len(arrays)).cpu().numpy()
        return np.split(mean, np.cumsum([offsets[s + 1] - offsets[s] for s in sentences])[:-1])

    return teacher_probs


def member_probs(run, member: int, model, key: dict, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Member `member`'s (probs float32 [words, V], offsets int64 [sentences + 1]) over the run's training split:
    read from its cache file when that holds exactly `key` and intact arrays, else computed (`member_pass`) and
    written atomically. Warns (UserWarning) why a file present was not used."""
    path = cache_path(run.run_dir, member)
    cached, problem = read_member_probs(path, key)
    if cached is not None:
        return cached
    if problem:
        warnings.warn(f"{path}: {problem}; running member {member} again")
    probs, offsets = member_pass(run.task, model, run.cfg, run.data, key["batch_sentences"], f"member {member}",
                                 progress)
    write_member_probs(path, probs, offsets, key)
    return probs, offsets


def member_pass(task, model, cfg, data, batch_sentences: int, desc: str, progress: bool = True):
    """One model's distributions over the training split, in batches of `batch_sentences` consecutive sentences
    (Task.teacher_probs of an ensemble of one): probs float32 [words, V] and offsets int64 [sentences + 1]."""
    n = len(task.sentence_positions(data, "train"))
    per_sentence = []
    with tqdm(total=n, desc=desc, unit="sent", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_sentences):
            batch = range(start, min(start + batch_sentences, n))
            per_sentence += task.teacher_probs([model], cfg, data, batch)
            bar.update(len(batch))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in per_sentence])]).astype(np.int64)
    return np.concatenate(per_sentence).astype(np.float32, copy=False), offsets


def write_member_probs(path, probs: np.ndarray, offsets: np.ndarray, key: dict) -> None:
    """The cache file: both arrays and, as its one metadata entry (safetensors writes several in a varying order),
    `key` with their sha256, so the bytes depend only on the content."""
    from safetensors.numpy import save

    meta = json.dumps({**key, "sha256": _digest(probs, offsets)}, sort_keys=True)
    atomic_write_bytes(path, save({"probs": probs, "offsets": offsets}, metadata={"member": meta}))


def read_member_probs(path, key: dict) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """((probs, offsets), None) from a cache file written for `key` whose arrays are intact; else (None, why not),
    the reason None when there is no file."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        return None, None
    try:
        with safe_open(path, framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("member", "{}"))
            if {k: meta.get(k) for k in key} != key:
                changed = [k for k in key if meta.get(k) != key[k]]
                return None, f"computed for other {', '.join(changed)}"
            probs, offsets = f.get_tensor("probs"), f.get_tensor("offsets")
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        return None, f"damaged or cut short ({error})"
    if (probs.dtype != np.float32 or probs.ndim != 2 or offsets.ndim != 1 or offsets[-1:].tolist() != [len(probs)]
            or _digest(probs, offsets) != meta.get("sha256")):
        return None, "damaged (its arrays do not match their recorded sha256)"
    return (probs, offsets), None


def _digest(probs: np.ndarray, offsets: np.ndarray) -> str:
    return "sha256:" + arrays_sha256(np.asarray(offsets, "<i8"), np.asarray(probs, "<f4"))
