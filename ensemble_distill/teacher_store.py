"""The teacher store: a compact, truncated (or sampled), on-disk copy of a teacher's per-position distributions.

Distillation reads the teacher's distribution at every position of the training set, every epoch. Running an
ensemble that often is too slow, so its distributions are memoised once (paper §5.1), keeping for each position
only its most probable entries (ids and probabilities) and the mass they leave out (the remainder):

- fixed truncation: the top `top_k` entries (paper: V' = 64 of a 32K vocabulary; top_k >= V keeps everything,
  which is what the NER label sets need);
- adaptive truncation (`epsilon` set): the fewest top entries whose mass reaches 1 - epsilon, at most `top_k`;
- or, instead of either, `samples` draws from the distribution, an unbiased estimate of it (the sampled layout).

Layout of a store folder:

    manifest.json              written last, atomically; a store without it is refused
    manifest.partial.json      while writing: the shards completed so far (so a killed run resumes)
    shard-00000-lengths.npy    int32 [sentences]    positions per sentence
    shard-00000-counts.npy     uint8 [positions]    entries kept at each position (uint16 when top_k > 255)
    shard-00000-ids.npy        uint16 [entries]     entry ids, each position's in descending probability
                                                    (int32 when the vocabulary has more than 65536 entries)
    shard-00000-probs.npy      float16 [entries]    their probabilities (or uint8, see PROBS_DTYPES)
    shard-00000-remainder.npy  float16 [positions]  1 - the kept mass, computed before quantisation

Every position's entries are a variable-length row of the flat arrays, so both truncations share one layout; the
per-position counts cost one byte a token. At V' = 64 this is ~259 bytes a token, against 512 for the published
code's float32 log-probabilities with int32 ids.

The compact layout (probs_dtype "log_uint8", format version 3) changes two arrays and adds two:

    shard-00000-ids.npy        uint8 [ceil(entries b / 8) + 4]  the ids bit-packed, b = ceil(log2 V) bits each
                                                    (dtype "packed<b>": 13 for an 8K vocabulary): entry i holds
                                                    bits [i b, (i + 1) b) of the little-endian bit stream; 4 zero
                                                    bytes end it, so that reading any entry's 5 bytes stays inside
    shard-00000-probs.npy      uint8 [entries]      8-bit codes of their log-probabilities on their position's grid
    shard-00000-log_max.npy    float16 [positions]  the grid's top: ln of the position's largest kept entry
    shard-00000-log_min.npy    float16 [positions]  the grid's bottom: ln of its smallest nonzero kept entry, at
                                                    most LOG_RANGE nats below log_max

Code q of an entry reads back as 0 for q = 0, else exp(log_max - (255 - q) s), s = (log_max - log_min) / 254;
log_max and log_min are rounded outwards to float16 (the grid covers every entry), and the code is the nearest
grid point (q = 255 - round((log_max - ln p) / s)), 0 for p = 0 and below the grid. The largest entry reads back
within float16's rounding of its log. At V' = 64 of an 8K vocabulary this is ~175 bytes a token.

The sampled layout (`samples` = R set, format version 4) keeps draws instead of the top entries: at each position
R ids drawn from the teacher's distribution q (by its inverse CDF at R points of (0, 1], `sample_points`), each
distinct id drawn once with its number of draws. It has no probabilities and no remainder:

    shard-00000-counts.npy     uint8 [positions]    distinct ids drawn at each position, 1..R (uint16 when R > 255)
    shard-00000-ids.npy        uint8 [...]          those ids, ascending within a position, bit-packed ("packed<b>")
    shard-00000-draws.npy      uint8 [...]          each one's draws minus 1 in c = ceil(log2 R) bits ("packed<c>",
                                                    the same bit stream as the ids; c = 1 for R = 1)

It reads back as probs = draws / R (exact up to float32) and remainder 0: an unbiased estimate of q, E[draws_v] =
R q_v, so the KD cross-entropy to it, -(1/R) sum_r log p(v_r) (the loss `distill.losses.kd_loss` computes from
it), is an unbiased estimate of the full cross-entropy -sum_v q_v log p_v, and its gradient at the student's
logits, p - draws / R, one of p - q ("Random Sampling KD": Anshumann et al., "Sparse Logit Sampling", ACL 2025,
who also show that top-K caching is biased and miscalibrates the student). Only at temperature 1: re-tempering
the estimate (`distill.losses.retemper`) is not unbiased. Two ways to place the points (`SAMPLINGS`):
"multinomial", R independent uniform points (the paper's sampling with replacement: Var[draws_v / R] =
q_v (1 - q_v) / R); "systematic", (r + 1 - U) / R for r < R with one uniform U a position, so each id is drawn
floor(R q_v) or ceil(R q_v) times (Var <= 1/(4 R^2), the same mean). The points of sentence i come from numpy's
default generator seeded with (seed, i) and the CDF is summed in float64, so a store depends only on the seed:
not on batching or sharding, and a resumed store is byte-identical (on another device only a point within
float64 rounding of a CDF step can fall the other way). On an NMT-like 8K-vocabulary teacher
(bench/bench_store.py) this is 9.3 bytes a token at R = 12 (3.8 distinct ids a position), 23 at R = 64.

The manifest's `dtypes` names every array of a shard and how it is encoded. A store is written with the oldest
format version that holds its layout: version 2 for float16 and uint8 probabilities, whose stores stay
byte-identical to (and resumable with) those written before version 3 existed; all three versions are read.

The manifest records a fingerprint of the tokenised dataset (`fingerprint_dataset`), of the vocabulary
(`fingerprint_vocab`), the teacher checkpoints, the truncation, the dtypes, a sha256 for every shard file, and a
sha256 of the manifest itself (`manifest_sha256`, over its other fields). `TeacherStore.open` refuses a manifest
that fails its checksum or whose fields disagree with each other (counts, shard offsets, file names and sizes),
a store written for another dataset or vocabulary, and never reads a shard whose checksum it has not verified
or whose arrays disagree with the manifest (dtypes, lengths, counts, ids, draws summing to R). `require_teachers`
ties a store to the teachers a student claims. Files carry no timestamps, so a resumed run writes the same bytes
as an uninterrupted one.

For the distillation loss: the remainder is the teacher mass the truncation dropped. `distill.losses.distill_targets`
turns a batch into targets for the three ways of treating it (drop it, as the paper does; renormalise the kept
entries; or a remainder bucket).

    store = write_store("runs/teacher", sentences, teacher, vocab=names, fingerprint=fingerprint_dataset(ids),
                        teachers=checkpoints, top_k=64)
    sampled = write_store("runs/teacher-sampled", sentences, teacher, vocab=names,
                          fingerprint=fingerprint_dataset(ids), teachers=checkpoints, samples=12, seed=0)
    store = TeacherStore.open("runs/teacher", expect_fingerprint=fp, expect_vocab=names)
    batch = store.batch([3, 17, 42])        # ids, probs [B, T, K]; remainder [B, T]; lengths [B]
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ensemble_distill import distributed
from ensemble_distill.errors import UserError, located
from ensemble_distill.io_utils import atomic_write_bytes, strict_json

FORMAT = "ensemble-distill teacher store"
READABLE_VERSIONS = (2, 3, 4)  # 2: the manifest carries its own checksum; 3: the compact layout (packed ids,
# log_uint8); 4: the sampled layout
MANIFEST = "manifest.json"
PARTIAL_MANIFEST = "manifest.partial.json"

# How the kept probabilities are stored, and the worst error a stored probability p has after reading back.
PROBS_DTYPES = {
    # float16 rounds to 11 significant bits: relative error <= 2**-11 (~4.9e-4) for p >= 2**-14 (~6.1e-5),
    # absolute error <= 2**-25 (~3e-8) below that, where float16 is subnormal.
    "float16": "relative error <= 2**-11 for p >= 6.1e-5, absolute error <= 3e-8 below",
    # uint8 stores round(255 p): absolute error <= 1/510 (~2.0e-3) for every p; entries below 1/510 read as 0.
    "uint8": "absolute error <= 1/510",
    # log_uint8 rounds ln p to its position's grid of step s (module docstring): |ln p_read - ln p| <= s/2 for
    # every entry on the grid. s = (log_max - log_min)/254 <= (LOG_RANGE + 1/32)/254 = 0.0631 nats (1/32: float16's
    # outward rounding of log_min, whose magnitude is below 64 for V < 2**32), so the relative error is at most
    # exp(0.0316) - 1 = 3.2e-2, and 2.0e-2 at a position whose kept entries span 10 nats. Only entries more than
    # LOG_RANGE nats below their position's largest can fall off the grid (ln p < log_min - s/2): they read as 0,
    # an absolute error below e**-16 (~1.1e-7) times that largest entry (float16 reads p < 3e-8 as 0). Zeros read
    # as 0. Rounding in log space is nearly unbiased, where uint8 reads a tail of small entries as 0.
    "log_uint8": "relative error <= exp(s/2) - 1 <= 3.2e-2, s = (log_max - log_min)/254 the position's grid step "
                 "(2.0e-2 where the kept entries span 10 nats); entries below 1.1e-7 times the position's "
                 "largest may read as 0",
}
LOG_RANGE = 16.0  # nats below a position's largest entry that the log_uint8 grid reaches at most
FIRST_VERSION = {"float16": 2, "uint8": 2, "log_uint8": 3}  # the format version a store is written with
SAMPLED_VERSION = 4
SAMPLINGS = ("multinomial", "systematic")  # how a sampled store places its R points (module docstring)
SAMPLED_READ_BACK = "probs = draws / samples, exact; an unbiased estimate of the teacher's distribution"
PACKED_ID_PADDING = 4  # zero bytes ending a bit-packed id stream: ids < 2**32 span at most 5 bytes from their first
ROW_SUM_TOLERANCE = 1e-3  # a teacher distribution must sum to 1 within this


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints: what a store was computed from


def fingerprint_dataset(*columns: Sequence) -> str:
    """sha256 of one or more columns of per-sentence integer id arrays (e.g. source tokens, target or gold ids),
    in dataset order: each column's sentence lengths and ids. Any change of order, length or id changes it."""
    digest = hashlib.sha256()
    for column in columns:
        sentences = [np.asarray(sentence) for sentence in column]
        if any(s.ndim != 1 or (s.size and s.dtype.kind not in "iu") for s in sentences):
            raise UserError("fingerprint_dataset: every sentence must be a 1-d array of integer ids")
        lengths = np.array([s.size for s in sentences], dtype="<i8")
        ids = np.concatenate(sentences).astype("<i8") if sentences else np.zeros(0, "<i8")
        digest.update(np.int64(len(sentences)).astype("<i8").tobytes())
        digest.update(lengths.tobytes())
        digest.update(ids.tobytes())
    return "sha256:" + digest.hexdigest()


def fingerprint_vocab(names: Sequence[str]) -> str:
    """sha256 of the label or subword names, in id order."""
    return "sha256:" + hashlib.sha256(json.dumps(list(names)).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Truncation


def truncate(dist: torch.Tensor, top_k: int, epsilon: float | None = None):
    """Keep each row's most probable entries: the top `top_k`, or with `epsilon` the fewest whose mass reaches
    1 - epsilon (at most top_k). dist: [positions, V] probabilities.

    Returns ids [P, K] (descending probability), probs [P, K] float32, counts [P] (entries kept; columns past a
    row's count are to be ignored) and remainder [P] = 1 - kept mass, where K = min(top_k, V)."""
    dist = dist.to(torch.float32)
    probs, ids = torch.topk(dist, min(top_k, dist.shape[-1]), dim=-1, sorted=True)
    mass = probs.to(torch.float64).cumsum(-1)
    if epsilon is None:
        counts = torch.full(dist.shape[:1], probs.shape[-1], dtype=torch.int64, device=dist.device)
    else:  # entries needed before the mass reaches 1 - epsilon, plus the one that reaches it
        counts = ((mass < 1.0 - epsilon).sum(-1) + 1).clamp(max=probs.shape[-1])
    kept = mass.gather(-1, (counts - 1).clamp(min=0)[:, None])[:, 0]
    remainder = (1.0 - kept).clamp(min=0.0).to(torch.float32)
    return ids, probs, counts, remainder


def sample_points(seed: int, sentence: int, positions: int, samples: int, sampling: str) -> np.ndarray:
    """Where `draw` reads the inverse CDFs of sentence number `sentence`: float64 [positions, samples] in (0, 1],
    ascending in each row. multinomial: independent uniform points; systematic: (r + 1 - U) / samples for
    r < samples, one uniform U a position. A function of its arguments only (numpy's default generator seeded
    with (seed, sentence)).

    Raises:
        ValueError: `sampling` is not one of SAMPLINGS.
    """
    rng = np.random.default_rng([seed, sentence])
    if sampling == "multinomial":  # 1 - [0, 1): a point of 1 reaches the last id of positive mass, 0 none
        return np.sort(1.0 - rng.random((positions, samples)), axis=-1)
    if sampling == "systematic":
        return (np.arange(1, samples + 1) - rng.random((positions, 1))) / samples
    raise ValueError(f"sample_points: sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")


def draw(dist: torch.Tensor, points: torch.Tensor):
    """Each row of dist [P, V] (probabilities; normalised here) drawn at its points [P, R] (float64 in (0, 1],
    ascending in each row): the smallest id whose cumulative mass reaches the point, as distinct ids with their
    number of draws.

    Returns ids [E] int64 (ascending within a row; an id of probability 0 is never drawn), draws [E] int64 (>= 1,
    R a row in all) and counts [P] (distinct ids of each row, E = counts.sum()), on dist's device."""
    cdf = dist.to(torch.float64).cumsum(-1)
    # A point in (0, 1] times the row's total stays at or below the last cumulative value (rounding is monotone),
    # so every point finds an id; a zero-mass id repeats its predecessor's cumulative value and is never first
    # to reach a point.
    drawn = torch.searchsorted(cdf, points.to(cdf.device) * cdf[:, -1:])
    first = torch.ones_like(drawn, dtype=torch.bool)  # a row's points ascend, so equal ids are adjacent
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    starts = first.flatten().nonzero()[:, 0]
    draws = torch.diff(starts, append=torch.tensor([drawn.numel()], device=starts.device))
    return drawn.flatten()[starts], draws, first.sum(-1)


def _encode_probs(probs: np.ndarray, kept: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """The kept entries of probs [P, K] (rows descending; kept [P, K] marks each row's first counts) as the
    arrays of PROBS_DTYPES[dtype]: probs [entries], and for log_uint8 log_max and log_min [P]."""
    if dtype == "uint8":
        return {"probs": np.rint(np.clip(probs[kept], 0.0, 1.0) * 255.0).astype(np.uint8)}
    if dtype == "float16":
        return {"probs": probs[kept].astype(np.float16)}
    with np.errstate(divide="ignore"):
        log_p = np.log(np.where(kept, probs, 0.0).astype(np.float64))  # -inf at zeros and past a row's count
    log_max = _float16_outward(log_p[:, 0], up=True)
    smallest = np.where(np.isfinite(log_p), log_p, np.inf).min(-1)
    log_min = _float16_outward(np.maximum(smallest, log_max.astype(np.float64) - LOG_RANGE), up=False)
    step = _log_step(log_max, log_min)
    # Grid points below the top, nearest first; an entry below the grid (or -inf) ends at code 0, which reads 0.
    # A zero step means every nonzero entry of the row equals log_max (ties, or one entry of 1).
    below_top = np.rint((log_max.astype(np.float64)[:, None] - log_p) / np.where(step > 0, step, 1.0)[:, None])
    codes = 255 - np.minimum(below_top, 255)
    return {"probs": codes[kept].astype(np.uint8), "log_max": log_max, "log_min": log_min}


def _float16_outward(x: np.ndarray, up: bool) -> np.ndarray:
    """float64 x as the nearest float16 at or above it (up) or at or below it."""
    rounded = x.astype(np.float16)
    wrong_side = rounded.astype(np.float64) < x if up else rounded.astype(np.float64) > x
    return np.where(wrong_side, np.nextafter(rounded, np.float16(np.inf if up else -np.inf)), rounded)


def _log_step(log_max: np.ndarray, log_min: np.ndarray) -> np.ndarray:
    """The log_uint8 grid step of each position, float32 [P], computed alike when writing and reading."""
    return (log_max.astype(np.float32) - log_min.astype(np.float32)) / np.float32(254.0)


def _decode_probs(stored: np.ndarray, dtype: str, log_max=None, log_min=None) -> np.ndarray:
    """float32 probabilities of stored [n, k] entries; for log_uint8, log_max and log_min [n] of their positions."""
    if dtype == "uint8":
        return stored.astype(np.float32) / np.float32(255.0)
    if dtype == "float16":
        return stored.astype(np.float32)
    below_top = (np.float32(255.0) - stored) * _log_step(log_max, log_min)[:, None]
    return np.where(stored > 0, np.exp(log_max.astype(np.float32)[:, None] - below_top), np.float32(0.0))


def _pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """ids [n] < 2**bits (at most 32) as the "packed<bits>" stream: uint8 [ceil(n bits / 8) + PACKED_ID_PADDING].
    (Also a sampled store's draws - 1.)"""
    chunks = []
    for start in range(0, len(ids), 1 << 18):  # a multiple of 8 ids fills whole bytes; bounds the bit matrix
        little_endian = ids[start:start + (1 << 18)].astype("<u4").view(np.uint8).reshape(-1, 4)
        chunks.append(np.packbits(np.unpackbits(little_endian, axis=1, count=bits, bitorder="little"),
                                  bitorder="little"))
    return np.concatenate([*chunks, np.zeros(PACKED_ID_PADDING, np.uint8)])


def _unpack_ids(stream: np.ndarray, entries: np.ndarray, bits: int) -> np.ndarray:
    """int64 ids of the given entries (any shape) of a "packed<bits>" stream: the ceil((bits + 7) / 8) bytes from
    each entry's first, joined little-endian in an int64 (at most 40 bits) and shifted to its first bit."""
    first_bit = entries * bits
    first_byte = first_bit >> 3
    word = np.zeros(entries.shape, np.int64)
    for byte in range((bits + 14) // 8):  # the bytes an entry can touch: up to 7 bits of offset, then `bits`
        word |= stream[first_byte + byte].astype(np.int64) << (8 * byte)
    return (word >> (first_bit & 7)) & ((1 << bits) - 1)


def _packed_bits(dtype: str) -> int | None:
    """b of a "packed<b>" ids dtype, None for ids stored as integers."""
    return int(dtype.removeprefix("packed")) if dtype.startswith("packed") else None


def _disk_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of an array stored as `dtype` (a numpy name, "packed<b>" or a PROBS_DTYPES name)."""
    return np.dtype(np.uint8 if dtype.startswith("packed") or dtype == "log_uint8" else dtype)


def _dtypes(vocab_size: int, width: int, probs_dtype: str) -> dict[str, str]:
    """Every array of a shard, in file order, and how it is stored."""
    dtypes = {
        "lengths": "int32",
        "counts": "uint8" if width <= 255 else "uint16",
        "ids": "uint16" if vocab_size <= 65536 else "int32",
        "probs": probs_dtype,
        "remainder": "float16",
    }
    if probs_dtype == "log_uint8":  # the compact layout
        dtypes |= {"ids": f"packed{max(1, (vocab_size - 1).bit_length())}", "log_max": "float16",
                   "log_min": "float16"}
    return dtypes


def _sampled_dtypes(vocab_size: int, samples: int) -> dict[str, str]:
    """Every array of a sampled store's shard, in file order, and how it is stored (draws as draws - 1)."""
    return {"lengths": "int32", "counts": "uint8" if min(samples, vocab_size) <= 255 else "uint16",
            "ids": f"packed{max(1, (vocab_size - 1).bit_length())}",
            "draws": f"packed{max(1, (samples - 1).bit_length())}"}


# ----------------------------------------------------------------------------------------------------------------
# Writing


def write_store(
    path,
    sentences: Iterable,
    teacher: Callable[[list], object],
    *,
    vocab: Sequence[str],
    fingerprint: str,
    teachers: Sequence[str],
    top_k: int | None = None,
    epsilon: float | None = None,
    probs_dtype: str | None = None,
    samples: int | None = None,
    seed: int | None = None,
    sampling: str = "multinomial",
    shard_sentences: int = 4096,
    batch_sentences: int = 32,
    positions: Sequence[int] | None = None,
    progress: bool = True,
) -> TeacherStore:
    """Memoise `teacher` over `sentences` (the training set, in dataset order) into a store at `path`.

    teacher(batch) is given a list of up to `batch_sentences` sentences and returns their distributions over
    `vocab`: a list of [positions, V] arrays (numpy or torch), one a sentence, or one [total positions, V] array
    that is split by `positions` (default len(sentence)). `positions` [sentences]: how many positions each
    sentence has (memoize gives the task's); with it, the teacher's output for a sentence must have that many
    rows, so that a teacher dropping positions is refused rather than stored. `fingerprint` is
    `fingerprint_dataset(...)` of the tokenised data; `teachers` names the checkpoints (paths or hashes).

    What is kept at each position: the top `top_k` entries (default 64; with `epsilon`, adaptive) with
    probabilities stored as `probs_dtype` (default "float16"); or, with `samples` = R, R draws from the
    teacher placed by `sampling` from `seed` (default 0), kept as distinct ids with their draw counts (module
    docstring). A sampled store takes none of top_k, epsilon and probs_dtype.

    Resumable: shards of `shard_sentences` sentences are written one by one; a rerun after a crash skips the
    sentences of completed shards and writes the same bytes an uninterrupted run would. Rerunning a finished
    store with the same settings only opens it.

    Sharded under torchrun (distributed.py): every rank calls write_store with the same arguments; in each round
    of world-size shards rank r runs the teacher over the round's r-th shard and writes it, and rank 0 records
    the round's shards in the partial manifest and, at the end, writes the manifest. A shard's bytes
    depend only on its sentences, so the store is byte-identical to one process's, and resumes the same way."""
    path = Path(path)
    sparsity = (_sampling(samples, seed, sampling, top_k, epsilon, probs_dtype, len(vocab)) if samples is not None
                else _truncation(top_k, epsilon, probs_dtype, seed, len(vocab)))
    settings = _settings(vocab, fingerprint, teachers, sparsity, shard_sentences, batch_sentences)
    if distributed.is_main():
        path.mkdir(parents=True, exist_ok=True)
    if (path / MANIFEST).exists():
        _require_same_settings(path / MANIFEST, _read_manifest(path / MANIFEST), settings)
        return TeacherStore.open(path, expect_fingerprint=fingerprint, expect_vocab=vocab, verify="lazy")

    shards = _completed_shards(path, settings)
    if distributed.is_main():
        for leftover in path.glob(".*.tmp"):  # a killed run's half-written files (atomic_path's temporary names)
            leftover.unlink()
    distributed.barrier()
    done = sum(shard["num_sentences"] for shard in shards)
    remaining = itertools.islice(iter(sentences), done, None)
    total = len(sentences) if isinstance(sentences, Sequence) else None
    world, rank = distributed.world_size(), distributed.rank()
    with tqdm(total=total, initial=done, unit="sent", desc=f"teacher store {path.name}",
              disable=not progress or rank > 0) as bar:
        # Each round gives the next shard to every rank (one shard: the only process), rank order = shard order.
        while chunks := [c for c in (list(itertools.islice(remaining, shard_sentences)) for _ in range(world)) if c]:
            firsts = done + np.cumsum([0] + [len(c) for c in chunks[:-1]])
            mine = None
            if rank < len(chunks):
                arrays = _compute_shard(chunks[rank], int(firsts[rank]), teacher, settings, bar, positions)
                mine = _save_shard(path, len(shards) + rank, int(firsts[rank]), arrays)
            shards += [info for info in distributed.gather(mine) if info is not None]
            bar.update(sum(len(c) for c in chunks) - len(chunks[0]))  # the other ranks' sentences (rank 0's counted)
            done += sum(len(c) for c in chunks)
            if distributed.is_main():
                atomic_write_bytes(path / PARTIAL_MANIFEST, _manifest_bytes({**settings, "shards": shards}))

    manifest = {**settings, "shards": shards, "num_sentences": done,
                "num_positions": sum(s["num_positions"] for s in shards),
                "num_entries": sum(s["num_entries"] for s in shards)}
    if distributed.is_main():
        atomic_write_bytes(path / MANIFEST, _manifest_bytes(manifest))
        (path / PARTIAL_MANIFEST).unlink(missing_ok=True)
    distributed.barrier()
    return TeacherStore.open(path, expect_fingerprint=fingerprint, expect_vocab=vocab, verify="lazy")


def _truncation(top_k, epsilon, probs_dtype, seed, vocab_size) -> dict:
    """The settings of a top-V' store: version, truncation, dtypes and read-back error."""
    top_k, probs_dtype = 64 if top_k is None else top_k, "float16" if probs_dtype is None else probs_dtype
    if not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"teacher store: top_k must be a positive integer, got {top_k!r}")
    if epsilon is not None and not 0.0 < epsilon < 1.0:
        raise UserError(f"teacher store: epsilon must lie in (0, 1), got {epsilon!r}")
    if probs_dtype not in PROBS_DTYPES:
        raise UserError(f"teacher store: probs_dtype must be one of {sorted(PROBS_DTYPES)}, got {probs_dtype!r}")
    if seed is not None:
        raise UserError("teacher store: a seed is for a sampled store (samples), not a top-V' one")
    width = min(top_k, vocab_size)
    return {"version": FIRST_VERSION[probs_dtype], "truncation": {"top_k": top_k, "epsilon": epsilon, "width": width},
            "dtypes": _dtypes(vocab_size, width, probs_dtype), "probs_error": PROBS_DTYPES[probs_dtype]}


def _sampling(samples, seed, sampling, top_k, epsilon, probs_dtype, vocab_size) -> dict:
    """The settings of a sampled store, in the same fields: its "truncation" is the sampling."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise UserError(f"teacher store: samples must be a positive integer, got {samples!r}")
    seed = 0 if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"teacher store: seed must be a non-negative integer, got {seed!r}")
    if sampling not in SAMPLINGS:
        raise UserError(f"teacher store: sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    for name, value in (("top_k", top_k), ("epsilon", epsilon), ("probs_dtype", probs_dtype)):
        if value is not None:
            raise UserError(f"teacher store: {name} is for a top-V' store; a sampled store (samples = {samples}) "
                            "keeps draws")
    return {"version": SAMPLED_VERSION, "dtypes": _sampled_dtypes(vocab_size, samples),
            "truncation": {"samples": samples, "sampling": sampling, "seed": seed,
                           "width": min(samples, vocab_size)}, "probs_error": SAMPLED_READ_BACK}


def _settings(vocab, fingerprint, teachers, sparsity: dict, shard_sentences, batch_sentences):
    """Everything that determines a store's bytes, checked again when a run resumes; `sparsity` from
    `_truncation` or `_sampling`."""
    if not vocab:
        raise UserError("teacher store: the vocabulary is empty")
    for name, value in (("shard_sentences", shard_sentences), ("batch_sentences", batch_sentences)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"teacher store: {name} must be a positive integer, got {value!r}")
    if isinstance(teachers, str) or not all(isinstance(t, str) for t in teachers):
        raise UserError("teacher store: teachers must be a list of checkpoint names or hashes")
    return {
        "format": FORMAT,
        "version": sparsity["version"],
        "dataset_fingerprint": fingerprint,
        "vocab": {"sha256": fingerprint_vocab(vocab), "size": len(vocab)},
        "teachers": list(teachers),
        "truncation": sparsity["truncation"],
        "dtypes": sparsity["dtypes"],
        "probs_error": sparsity["probs_error"],
        "shard_sentences": shard_sentences,
        "batch_sentences": batch_sentences,
    }


def _completed_shards(path: Path, settings: dict) -> list[dict]:
    """Shards a previous, interrupted run finished (none when starting afresh)."""
    partial = path / PARTIAL_MANIFEST
    if not partial.exists():
        return []
    previous = _read_manifest(partial)
    _require_same_settings(partial, previous, settings)
    return previous["shards"]


def _require_same_settings(where: Path, previous: dict, settings: dict) -> None:
    changed = sorted(key for key in settings if previous.get(key) != settings[key])
    if changed:
        raise located(where, None, f"this store was written with different {', '.join(changed)} "
                                   f"({_first_difference(changed[0], previous.get(changed[0]), settings[changed[0]])})"
                                   "; use the same settings to resume, or write to a new folder")


def _first_difference(key: str, stored, wanted) -> str:
    """'key[i]: stored ... , now ...' for the first entry of a list or table that differs."""
    if isinstance(stored, list) and isinstance(wanted, list):
        for i in range(max(len(stored), len(wanted))):
            a, b = (stored[i] if i < len(stored) else None), (wanted[i] if i < len(wanted) else None)
            if a != b:
                return f"{key}[{i}]: {a!r} in the store, {b!r} now"
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for name in sorted(set(stored) | set(wanted)):
            if stored.get(name) != wanted.get(name):
                return f"{key}.{name}: {stored.get(name)!r} in the store, {wanted.get(name)!r} now"
    return f"{key}: {stored!r} in the store, {wanted!r} now"


def _compute_shard(chunk: list, first: int, teacher, settings: dict, bar, positions=None) -> dict[str, np.ndarray]:
    """Run the teacher over a shard's sentences, batch by batch, and truncate (or sample) and encode its
    distributions. `positions`: write_store's, for the whole dataset."""
    truncation, dtypes, batch_size = settings["truncation"], settings["dtypes"], settings["batch_sentences"]
    parts = {name: [] for name in dtypes}
    for start in range(0, len(chunk), batch_size):
        batch = chunk[start:start + batch_size]
        expected = None if positions is None else list(positions[first + start:first + start + len(batch)])
        dists, lengths = _teacher_distributions(teacher, batch, first + start, settings["vocab"]["size"], expected)
        parts["lengths"].append(np.array(lengths))
        bar.update(len(batch))
        if "samples" in truncation:
            points = np.concatenate([sample_points(truncation["seed"], first + start + i, length,
                                                   truncation["samples"], truncation["sampling"])
                                     for i, length in enumerate(lengths)])
            ids, draws, counts = (x.cpu().numpy() for x in draw(dists, torch.from_numpy(points)))
            parts["counts"].append(counts)
            parts["ids"].append(ids)
            parts["draws"].append(draws - 1)
            continue
        # Truncate where the teacher computed (a GPU's top-k is fast); only the kept entries travel to the CPU.
        ids, probs, counts, remainder = (x.cpu() for x in truncate(dists, truncation["width"],
                                                                   truncation["epsilon"]))
        kept = torch.arange(ids.shape[-1])[None, :] < counts[:, None]
        parts["counts"].append(counts.numpy())
        parts["ids"].append(ids[kept].numpy())
        for name, array in _encode_probs(probs.numpy(), kept.numpy(), dtypes["probs"]).items():
            parts[name].append(array)
        parts["remainder"].append(remainder.numpy())
    arrays = {name: np.concatenate(parts[name]) for name in dtypes}
    for name, dtype in dtypes.items():
        if bits := _packed_bits(dtype):
            arrays[name] = _pack_ids(arrays[name], bits)
    return {name: array.astype(_disk_dtype(dtypes[name])) for name, array in arrays.items()}


def _teacher_distributions(teacher, batch: list, first: int, vocab_size: int,
                           expected: list[int] | None) -> tuple[torch.Tensor, list[int]]:
    """The teacher's output for a batch as one [positions, V] tensor and the sentence lengths, checked to be
    distributions over the vocabulary, `expected` [len(batch)] positions a sentence (None: unknown)."""
    where = f"teacher store: sentences {first}..{first + len(batch) - 1}"
    output = teacher(batch)
    if isinstance(output, (list, tuple)):
        dists = [torch.as_tensor(d) for d in output]
        if len(dists) != len(batch) or any(d.ndim != 2 for d in dists):
            raise UserError(f"{where}: the teacher must return one [positions, V] array a sentence")
        lengths, stacked = [len(d) for d in dists], torch.cat(dists)
        if expected is not None and (wrong := [i for i, (n, e) in enumerate(zip(lengths, expected)) if n != e]):
            raise UserError(f"teacher store: sentence {first + wrong[0]}: the teacher returned {lengths[wrong[0]]} "
                            f"positions, the sentence has {expected[wrong[0]]}")
    else:
        lengths, stacked = expected or [len(sentence) for sentence in batch], torch.as_tensor(output)
    if stacked.ndim != 2 or stacked.shape != (sum(lengths), vocab_size):
        raise UserError(f"{where}: the teacher returned shape {tuple(stacked.shape)}, expected "
                        f"({sum(lengths)}, {vocab_size})")
    bad = (~torch.isfinite(stacked).all(-1) | (stacked < 0).any(-1)
           | ((stacked.sum(-1, dtype=torch.float64) - 1).abs() > ROW_SUM_TOLERANCE))
    if bad.any():
        sentence = first + np.repeat(np.arange(len(lengths)), lengths)[int(bad.nonzero()[0, 0])]
        raise UserError(f"teacher store: sentence {sentence}: the teacher's output is not a probability "
                        f"distribution (negative, non-finite, or not summing to 1 within {ROW_SUM_TOLERANCE})")
    return stacked, lengths


def _save_shard(path: Path, index: int, first_sentence: int, arrays: dict[str, np.ndarray]) -> dict:
    files = {}
    for name in arrays:
        buffer = io.BytesIO()
        np.save(buffer, arrays[name], allow_pickle=False)
        data = buffer.getvalue()
        filename = f"shard-{index:05d}-{name}.npy"
        atomic_write_bytes(path / filename, data)
        files[name] = {"name": filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"first_sentence": first_sentence, "num_sentences": len(arrays["lengths"]),
            "num_positions": len(arrays["counts"]), "num_entries": int(arrays["counts"].sum(dtype=np.int64)),
            "files": files}


def _manifest_bytes(manifest: dict) -> bytes:
    """The manifest as written: its fields and `manifest_sha256`, the sha256 of the same JSON without it."""
    return _json_bytes({**manifest, "manifest_sha256": _manifest_digest(manifest)})


def _manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(_json_bytes({k: v for k, v in manifest.items() if k != "manifest_sha256"})).hexdigest()


def _json_bytes(obj: dict) -> bytes:
    return (strict_json(obj, indent=1, sort_keys=True) + "\n").encode()


def _read_manifest(path: Path) -> dict:
    """A manifest (or partial manifest) whose checksum holds; anything else is refused naming the file."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise located(path, None, f"cannot read the manifest: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise located(path, None, f"not a {FORMAT} manifest")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise located(path, None, f"a {FORMAT} of version {manifest.get('version')!r}, not one of "
                                  f"{', '.join(map(str, READABLE_VERSIONS))} (written by another version of "
                                  "ensemble-distill): delete the folder and memoize again")
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise located(path, None, "the manifest fails its checksum (manifest_sha256): it was edited or corrupted; "
                                  "rebuild the store")
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class TeacherBatch:
    """Teacher targets for a batch of sentences, padded. K is the store's width (min(top_k, V)) for a fixed
    truncation, and the most entries any position of the batch kept for an adaptive or a sampled one (whose
    probs are draws / R and remainder 0). Padding (positions past a sentence's length, entries past a position's
    count) has id 0 and probability 0."""

    ids: torch.Tensor  # int64 [B, T, K]
    probs: torch.Tensor  # float32 [B, T, K]
    remainder: torch.Tensor  # float32 [B, T], 1 - the teacher's kept mass (0 at padding)
    lengths: torch.Tensor  # int64 [B]


class TeacherStore:
    """A finished store, read through memory maps: a shard is verified against its checksum before any of its
    data is used, either all at `open` (verify="open") or each on its first read (verify="lazy")."""

    def __init__(self, path: Path, manifest: dict, verify: str):
        self.path = path
        self.manifest = manifest
        self._shard_info = manifest["shards"]
        self._first_sentence = np.array([s["first_sentence"] for s in self._shard_info], dtype=np.int64)
        self._shards: dict[int, _Shard] = {}
        if verify == "open":
            for index in tqdm(range(len(self._shard_info)), desc=f"verify {path.name}", leave=False, disable=None):
                self._shard(index)

    @classmethod
    def open(cls, path, *, expect_fingerprint: str, expect_vocab: Sequence[str], verify: str = "open"):
        """Open the store at `path` for training on the dataset with fingerprint `expect_fingerprint` (from
        `fingerprint_dataset`) over the vocabulary `expect_vocab`; refuse it if it was written for others."""
        path = Path(path)
        if verify not in ("open", "lazy"):
            raise UserError(f"TeacherStore.open: verify must be 'open' or 'lazy', got {verify!r}")
        if not (path / MANIFEST).exists():
            unfinished = " (writing did not finish: rerun the writer to resume)" if (
                path / PARTIAL_MANIFEST).exists() else ""
            raise located(path, None, f"not a finished teacher store: no {MANIFEST}{unfinished}")
        manifest = _read_manifest(path / MANIFEST)
        _check_manifest(path, manifest)
        if manifest["dataset_fingerprint"] != expect_fingerprint:
            raise located(path, None, f"the teacher store was written for dataset {manifest['dataset_fingerprint']}"
                                      f", not the dataset being trained ({expect_fingerprint}); rebuild the store")
        if manifest["vocab"]["sha256"] != fingerprint_vocab(expect_vocab):
            stored = manifest["vocab"]
            raise located(path, None, f"the teacher store was written for another vocabulary ({stored['size']} "
                                      f"entries, {stored['sha256']}) than the one being trained "
                                      f"({len(expect_vocab)} entries, {fingerprint_vocab(expect_vocab)})")
        return cls(path, manifest, verify)

    def __len__(self) -> int:
        return self.manifest["num_sentences"]

    @property
    def num_positions(self) -> int:
        return self.manifest["num_positions"]

    @property
    def adaptive(self) -> bool:
        return self.manifest["truncation"].get("epsilon") is not None

    @property
    def sampled(self) -> bool:
        """Whether the store keeps draws (`samples` set) rather than the top entries."""
        return "samples" in self.manifest["truncation"]

    def bytes_per_token(self) -> float:
        """Bytes on disk (all shard files) per stored position."""
        total = sum(f["bytes"] for shard in self._shard_info for f in shard["files"].values())
        return total / max(self.num_positions, 1)

    def sentence(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [T, K], probs [T, K], remainder [T]) for sentence `index`, K as in `TeacherBatch`."""
        batch = self.batch([index])
        return batch.ids[0], batch.probs[0], batch.remainder[0]

    def batch(self, sentence_indices) -> TeacherBatch:
        """Padded teacher targets for the given sentences, gathered from the memory maps without a Python loop over
        positions (only over the shards the batch touches)."""
        wanted = np.asarray(sentence_indices, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= len(self)):
            raise IndexError(f"sentence index out of range for a store of {len(self)} sentences")
        shard_of = np.searchsorted(self._first_sentence, wanted, side="right") - 1
        fixed_width = None if self.adaptive or self.sampled else self.manifest["truncation"]["width"]
        parts = [(rows, *self._shard(int(shard)).gather(wanted[rows] - self._first_sentence[shard], fixed_width))
                 for shard in np.unique(shard_of) for rows in [np.flatnonzero(shard_of == shard)]]
        return _pad(len(wanted), fixed_width, parts)

    def iter_batches(self, batch_sentences: int = 32) -> Iterator[tuple[np.ndarray, TeacherBatch]]:
        """(sentence indices, batch) over the whole store in order, reading the shards one after another."""
        for start in range(0, len(self), batch_sentences):
            indices = np.arange(start, min(start + batch_sentences, len(self)))
            yield indices, self.batch(indices)

    def _shard(self, index: int) -> _Shard:
        if index not in self._shards:
            self._shards[index] = _Shard.verified(self.path, self._shard_info[index], self.manifest)
        return self._shards[index]


class _Shard:
    """One shard's arrays, memory-mapped after their checksums were verified."""

    def __init__(self, arrays: dict[str, np.ndarray], dtypes: dict[str, str], samples: int | None):
        self.counts, self.ids = arrays["counts"], arrays["ids"]
        self.probs, self.remainder = arrays.get("probs"), arrays.get("remainder")  # None in a sampled store
        self.log_max, self.log_min = arrays.get("log_max"), arrays.get("log_min")
        self.draws, self.samples = arrays.get("draws"), samples
        self.id_bits, self.probs_dtype = _packed_bits(dtypes["ids"]), dtypes.get("probs")
        self.draw_bits = _packed_bits(dtypes["draws"]) if "draws" in dtypes else None
        self.lengths = np.asarray(arrays["lengths"], dtype=np.int64)
        self.position_start = np.concatenate([[0], np.cumsum(self.lengths)])
        entries_before_position = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        self.entry_start = entries_before_position[self.position_start[:-1]]
        self.num_entries = int(entries_before_position[-1])

    @classmethod
    def verified(cls, folder: Path, info: dict, manifest: dict) -> _Shard:
        arrays = {}
        for name, file in info["files"].items():
            path = folder / file["name"]
            try:
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as error:
                raise located(path, None, f"teacher store shard unreadable: {error}") from None
            if digest != file["sha256"]:
                raise located(path, None, "teacher store shard fails its checksum (corrupted or modified); "
                                          "rebuild the store")
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        _check_shard(folder, info, manifest, arrays)
        return cls(arrays, manifest["dtypes"], manifest["truncation"].get("samples"))

    def gather(self, local: np.ndarray, fixed_width: int | None):
        """lengths [b] of the given sentences, and at each of their positions, flat: ids [n, k], probs [n, k]
        (float32, 0 past a position's count) and remainder [n]. k is the fixed width, or for an adaptive
        truncation or a sampled store (fixed_width None) the most entries any of these positions kept."""
        lengths = self.lengths[local]
        positions = _ragged_arange(self.position_start[local], lengths)
        remainder = np.zeros(len(positions), np.float32) if self.remainder is None else self.remainder[positions]
        if fixed_width is not None:  # every position kept fixed_width entries: they are rows of the flat arrays
            entries = positions[:, None] * fixed_width + np.arange(fixed_width)
            return lengths, self._ids(entries), self._probs(entries, positions), remainder
        counts = self.counts[positions].astype(np.int64)
        # A position's entries start after its sentence's first entry and the entries of the positions before it.
        kept_before = np.concatenate([[0], np.cumsum(counts)])
        sentence_offset = self.entry_start[local] - kept_before[np.cumsum(lengths) - lengths]
        entry_start = np.repeat(sentence_offset, lengths) + kept_before[:-1]
        window = np.arange(counts.max(initial=0))
        kept = window < counts[:, None]
        entries = np.minimum(entry_start[:, None] + window, self.num_entries - 1)  # past a count: any valid entry
        ids, probs = np.where(kept, self._ids(entries), 0), np.where(kept, self._probs(entries, positions), 0)
        return lengths, ids, probs, remainder

    def _ids(self, entries: np.ndarray) -> np.ndarray:
        """ids [n, k] of the entries [n, k]."""
        return self.ids[entries] if self.id_bits is None else _unpack_ids(self.ids, entries, self.id_bits)

    def _probs(self, entries: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """float32 probabilities [n, k] of the entries [n, k] at the positions [n] (draws / R in a sampled store)."""
        if self.draws is not None:
            return ((_unpack_ids(self.draws, entries, self.draw_bits) + 1) / self.samples).astype(np.float32)
        if self.probs_dtype == "log_uint8":
            return _decode_probs(self.probs[entries], "log_uint8", self.log_max[positions], self.log_min[positions])
        return _decode_probs(self.probs[entries], self.probs_dtype)


def _check_manifest(path: Path, manifest: dict) -> None:
    """The manifest's fields against each other and the files on disk: totals are the sums of the shards, each
    shard starts where the previous one ended, dtypes, width and format version follow from the vocabulary,
    truncation (or sampling) and probabilities' dtype, and each shard file has its expected name and size.
    Raises UserError naming the manifest and the field."""
    where = path / MANIFEST
    try:
        vocab_size, truncation, shards = manifest["vocab"]["size"], manifest["truncation"], manifest["shards"]
        if "samples" in truncation:
            samples = truncation["samples"]
            if not isinstance(samples, int) or samples < 1:
                raise TypeError("'truncation.samples'")
            width, dtypes, version = min(samples, vocab_size), _sampled_dtypes(vocab_size, samples), SAMPLED_VERSION
        else:
            width, probs_dtype = min(truncation["top_k"], vocab_size), manifest["dtypes"]["probs"]
            if probs_dtype not in PROBS_DTYPES:
                raise located(where, None, f"the manifest does not match its shards: dtypes.probs is "
                                           f"{probs_dtype!r}, expected one of {', '.join(PROBS_DTYPES)}; rebuild "
                                           "the store")
            dtypes, version = _dtypes(vocab_size, width, probs_dtype), FIRST_VERSION[probs_dtype]
        expected = {"truncation.width": width, "dtypes": dtypes, "version": version,
                    "num_sentences": sum(s["num_sentences"] for s in shards),
                    "num_positions": sum(s["num_positions"] for s in shards),
                    "num_entries": sum(s["num_entries"] for s in shards)}
        found = {"truncation.width": truncation["width"], "dtypes": manifest["dtypes"],
                 **{key: manifest[key] for key in ("version", "num_sentences", "num_positions", "num_entries")}}
        first = 0
        for index, shard in enumerate(shards):
            expected[f"shards[{index}].first_sentence"], found[f"shards[{index}].first_sentence"] = (
                first, shard["first_sentence"])
            first += shard["num_sentences"]
            names = {name: f"shard-{index:05d}-{name}.npy" for name in dtypes}
            expected[f"shards[{index}].files"] = names
            found[f"shards[{index}].files"] = {name: file["name"] for name, file in shard["files"].items()}
            for name, file in shard["files"].items():
                size = _size(path / names.get(name, file["name"]))
                expected[f"shards[{index}].files.{name}.bytes"] = size
                found[f"shards[{index}].files.{name}.bytes"] = file["bytes"]
    except (KeyError, TypeError, AttributeError) as error:
        raise located(where, None, f"malformed manifest (field {error} missing or of the wrong type); rebuild "
                                   "the store") from None
    for key, value in expected.items():
        if found[key] != value:
            raise located(where, None, f"the manifest does not match its shards: {key} is {found[key]!r}, "
                                       f"expected {value!r}; rebuild the store")


def _size(path: Path) -> int | str:
    try:
        return path.stat().st_size
    except OSError:
        return "a file (missing)"


def _check_shard(folder: Path, info: dict, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """A verified shard's arrays against the manifest: dtypes, 1-d, lengths summing to the positions, counts
    summing to the entries (each count at most the width, equal to it for a fixed truncation and at least 1 in a
    sampled store), ids inside the vocabulary, log_uint8 grids with log_min <= log_max, and a sampled store's
    draws summing to R at each position. Raises UserError naming the shard file that disagrees."""
    truncation, lengths, counts = manifest["truncation"], arrays["lengths"], arrays["counts"]
    n_positions, n_entries, dtypes, width = info["num_positions"], info["num_entries"], manifest["dtypes"], \
        manifest["truncation"]["width"]
    checks = [(name, arrays[name].dtype == _disk_dtype(dtype) and arrays[name].ndim == 1,
               f"holds {arrays[name].dtype} [{', '.join(map(str, arrays[name].shape))}], the manifest says 1-d "
               f"{_disk_dtype(dtype)}") for name, dtype in dtypes.items()]
    bits, ids = _packed_bits(dtypes["ids"]), arrays["ids"]
    checks += [
        ("lengths", len(lengths) == info["num_sentences"] and (lengths >= 0).all()
         and int(lengths.sum(dtype=np.int64)) == n_positions,
         f"does not hold {info['num_sentences']} sentence lengths summing to {n_positions} positions"),
        ("ids", len(ids) == (n_entries if bits is None else _packed_length(n_entries, bits))
         and _largest_id(ids, n_entries, bits) < manifest["vocab"]["size"],
         f"does not hold {n_entries} ids below the vocabulary size {manifest['vocab']['size']}"),
    ]
    counts_ok = (len(counts) == n_positions and int(counts.sum(dtype=np.int64)) == n_entries
                 and (counts <= width).all())
    if "samples" in truncation:
        counts_ok = counts_ok and (counts >= 1).all()
        draws, draw_bits, samples = arrays["draws"], _packed_bits(dtypes["draws"]), truncation["samples"]
        checks += [("counts", counts_ok, f"does not hold {n_positions} entry counts of 1 to {width}, summing to "
                                         f"{n_entries}"),
                   ("draws", counts_ok and draws.ndim == 1 and len(draws) == _packed_length(n_entries, draw_bits)
                    and (_draws_per_position(draws, counts, draw_bits) == samples).all(),
                    f"does not hold {n_entries} draw counts summing to {samples} at each position")]
    else:
        counts_ok = counts_ok and (truncation["epsilon"] is not None or (counts == width).all())
        checks += [("counts", counts_ok, f"does not hold {n_positions} entry counts of at most {width}, summing "
                                         f"to {n_entries}"),
                   ("remainder", len(arrays["remainder"]) == n_positions, f"does not hold {n_positions} values"),
                   ("probs", len(arrays["probs"]) == n_entries, f"does not hold {n_entries} values")]
    if dtypes.get("probs") == "log_uint8":
        log_max, log_min = arrays["log_max"], arrays["log_min"]
        checks += [(name, len(arrays[name]) == n_positions and np.isfinite(arrays[name]).all(),
                    f"does not hold {n_positions} finite values") for name in ("log_max", "log_min")]
        checks += [("log_min", len(log_min) != len(log_max) or (log_min <= log_max).all(),
                    "holds a grid bottom above its top (log_max)")]
    for name, ok, problem in checks:
        if not ok:
            raise located(folder / info["files"][name]["name"], None, f"teacher store shard {problem}; rebuild "
                                                                      "the store")


def _draws_per_position(draws: np.ndarray, counts: np.ndarray, bits: int) -> np.ndarray:
    """A sampled shard's draws at each position, int64 [positions], from its "packed<bits>" draws - 1 and its
    counts (each at least 1, summing to the stream's entries)."""
    per_entry = _unpack_ids(draws, np.arange(counts.sum(dtype=np.int64)), bits) + 1
    return np.add.reduceat(per_entry, np.cumsum(counts, dtype=np.int64) - counts) if len(counts) else per_entry


def _packed_length(n_entries: int, bits: int) -> int:
    return -(-n_entries * bits // 8) + PACKED_ID_PADDING


def _largest_id(ids: np.ndarray, n_entries: int, bits: int | None) -> int:
    """The largest of a shard's ids (stored as integers, or bit-packed: unpacked 65536 at a time, which keeps the
    temporaries in the cache)."""
    if bits is None:
        return int(ids.max(initial=0))
    chunk = 1 << 16
    return max((int(_unpack_ids(ids, np.arange(start, min(start + chunk, n_entries)), bits).max())
                for start in range(0, n_entries, chunk)), default=0)


def require_teachers(store: TeacherStore, expected: Sequence[str], claim: str) -> None:
    """Refuse a store whose `teachers` are not `expected`, the names of the teacher that `claim` describes
    (e.g. "distill.teacher_members = 3 of runs/conll-iid"): one line naming the store and the first entry that
    differs."""
    stored, expected = list(store.manifest["teachers"]), list(expected)
    if stored != expected:
        difference = (f"{len(stored)} teachers in the store, {len(expected)} expected" if len(stored) != len(expected)
                      else _first_difference("teachers", stored, expected).replace(" now", " expected"))
        raise located(store.path, None, f"the store was memoized from other teachers than {claim} ({difference})"
                                        "; memoize that teacher into a new store")


def _ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + n) over (starts, lengths), without a Python loop."""
    segment_start = np.cumsum(lengths) - lengths
    return np.repeat(starts - segment_start, lengths) + np.arange(lengths.sum())


def _pad(size: int, fixed_width: int | None, parts: list) -> TeacherBatch:
    """Scatter each shard's part (rows of the batch, lengths, per-position ids, probs, remainder) into padded
    [B, T, K] tensors."""
    steps = max((int(lengths.max(initial=0)) for _, lengths, *_ in parts), default=0)
    width = fixed_width if fixed_width is not None else max((ids.shape[1] for *_, ids, _, _ in parts), default=0)
    out_lengths = np.zeros(size, np.int64)
    out_ids = np.zeros((size * steps, width), np.int64)
    out_probs = np.zeros((size * steps, width), np.float32)
    out_remainder = np.zeros(size * steps, np.float32)
    for rows, lengths, ids, probs, remainder in parts:
        out_lengths[rows] = lengths
        position = np.repeat(rows * steps, lengths) + _ragged_arange(np.zeros_like(lengths), lengths)
        out_ids[position, :ids.shape[1]] = ids
        out_probs[position, :ids.shape[1]] = probs
        out_remainder[position] = remainder
    return TeacherBatch(torch.from_numpy(out_ids).view(size, steps, width),
                        torch.from_numpy(out_probs).view(size, steps, width),
                        torch.from_numpy(out_remainder).view(size, steps), torch.from_numpy(out_lengths))


# ----------------------------------------------------------------------------------------------------------------
# For losses and tests


def to_dense(ids: torch.Tensor, probs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The kept entries as a [..., V] distribution (zeros elsewhere, so it sums to 1 - remainder)."""
    dense = torch.zeros(*ids.shape[:-1], vocab_size, dtype=probs.dtype)
    return dense.scatter_add_(-1, ids, probs)  # add, not assign: padding shares id 0 with a real entry
