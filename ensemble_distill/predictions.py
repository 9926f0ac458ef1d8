"""The predictions file: per-position distributions of one model on one data set, with the gold ids beside them.

Every stage that evaluates a model writes one of these; evaluation reads it and never needs the model.
The layout is documented in docs/predictions-format.md. A file is a single `.npz` (no pickles), written
atomically, validated on save and on load so that a bad file is reported in one line naming it. Probabilities
within PROB_TOLERANCE outside [0, 1] are accepted and clipped onto it, here and by the calibration functions alike.

    tagging       probs [N, C] dense, optional pred [N]
    translation   top_ids/top_probs [N, k], gold_prob [N], sum_sq [N], hypotheses/references [S], optional
                  tied_beyond [N]

Ties. The predicted label of a tagging position without a stored `pred` is its most probable label; among labels
of equal probability, "O", then the smallest label name (code-point order: "B-LOC" < "B-PER" < "I-LOC"), so it
never depends on the order of the labels in the file (`predicted_labels`). The calibration events share a tie's
correctness instead (calibration/metrics.py, "Class ties"); for translation files they read `gold_prob` and
`tied_beyond`, never the ids of tied tokens.
"""

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.tags import TagError, split_tag
from .errors import UserError
from .io_utils import atomic_path, strict_json

FORMAT_VERSION = 1
TASKS = ("tagging", "translation")
# How far probabilities may stray from [0, 1], and rows from summing to 1, through float rounding: the one
# tolerance of the file check, of loading and of the calibration functions, which clip values this close onto
# [0, 1]. A float32 row normalised in float32 sums to 1 within ~C * 6e-8, so 1e-3 only catches real mistakes
# (unnormalised scores, logits, a dropped class).
PROB_TOLERANCE = 1e-3
# Rows per chunk when compacting dense translation distributions: bounds the float64 temporaries.
COMPACT_CHUNK_ROWS = 4096

COMMON_KEYS = ("format_version", "task", "label_names", "sentence_offsets", "gold", "meta")
TASK_KEYS = {
    "tagging": ("probs",),
    "translation": ("top_ids", "top_probs", "gold_prob", "sum_sq", "hypotheses", "references"),
}
OPTIONAL_KEYS = {"tagging": ("pred",), "translation": ("tied_beyond",)}
PROBABILITY_KEYS = {"tagging": ("probs",), "translation": ("top_probs", "gold_prob", "sum_sq")}


@dataclass
class Predictions:
    """One model's per-position distributions over `label_names`, for sentences laid end to end.

    Sentence s owns positions sentence_offsets[s]:sentence_offsets[s+1]. Tagging keeps the dense
    distribution (`probs`); translation keeps its top-k, the gold token's probability and sum_c p_c^2,
    which is all the calibration metrics need.
    """

    task: str
    label_names: np.ndarray  # str [C]
    sentence_offsets: np.ndarray  # int64 [S+1]
    gold: np.ndarray  # int64 [N]
    meta: dict = field(default_factory=dict)
    probs: np.ndarray | None = None  # tagging: float32 [N, C]
    pred: np.ndarray | None = None  # tagging: int64 [N], the labels scored by F1 (default argmax)
    top_ids: np.ndarray | None = None  # translation: int32 [N, k]
    top_probs: np.ndarray | None = None  # translation: float32 [N, k], descending
    gold_prob: np.ndarray | None = None  # translation: float32 [N]
    sum_sq: np.ndarray | None = None  # translation: float32 [N]
    hypotheses: np.ndarray | None = None  # translation: str [S], detokenised
    references: np.ndarray | None = None  # translation: str [S], detokenised
    tied_beyond: np.ndarray | None = None  # translation: int32 [N], tokens outside top_ids tied with the last one

    @property
    def n_positions(self) -> int:
        return len(self.gold)

    @property
    def n_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    def predicted(self) -> np.ndarray:
        """Tagging: predicted label ids [N], the stored `pred` (e.g. CRF Viterbi) or the most probable label of each
        position with ties broken by name (`predicted_labels`)."""
        return self.pred if self.pred is not None else predicted_labels(self.probs, self.label_names)

    def sentence_labels(self, ids: np.ndarray) -> list[list[str]]:
        """Label ids [N] as one list of label strings per sentence (the input seqeval wants)."""
        names = self.label_names[ids].tolist()
        bounds = self.sentence_offsets.tolist()
        return [names[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    @classmethod
    def tagging(cls, probs, gold, sentence_offsets, label_names, pred=None, meta=None) -> "Predictions":
        """Tagging predictions from dense per-position label distributions."""
        return cls(
            task="tagging",
            label_names=np.asarray(label_names, dtype=str),
            sentence_offsets=np.asarray(sentence_offsets, dtype=np.int64),
            gold=np.asarray(gold, dtype=np.int64),
            meta=dict(meta or {}),
            probs=clip_near_unit_interval(np.asarray(probs, dtype=np.float32)),
            pred=None if pred is None else np.asarray(pred, dtype=np.int64),
        )

    @classmethod
    def translation(
        cls, probs, gold, sentence_offsets, label_names, hypotheses, references, k=5, meta=None
    ) -> "Predictions":
        """Translation predictions from dense next-token distributions [N, V], kept in compact form."""
        gold = np.asarray(gold, dtype=np.int64)
        top_ids, top_probs, gold_prob, sum_sq, tied_beyond = compact_distributions(probs, gold, k)
        return cls(
            task="translation",
            label_names=np.asarray(label_names, dtype=str),
            sentence_offsets=np.asarray(sentence_offsets, dtype=np.int64),
            gold=gold,
            meta=dict(meta or {}),
            top_ids=top_ids,
            top_probs=clip_near_unit_interval(top_probs),
            gold_prob=clip_near_unit_interval(gold_prob),
            sum_sq=clip_near_unit_interval(sum_sq),
            hypotheses=np.asarray(hypotheses, dtype=str),
            references=np.asarray(references, dtype=str),
            tied_beyond=tied_beyond,
        )


def predicted_labels(probs, label_names) -> np.ndarray:
    """The most probable label of each position, int64 [N], for probs [N, C] over label_names [C]; among labels of
    equal probability "O" first, then the smallest name (Python's string order, by code point: B- before I-, types
    alphabetical). The labels are the same whatever the order of the columns: permuting probs' columns together
    with label_names permutes the ids and keeps the names.

    Raises:
        ValueError: probs not [N, len(label_names)].
    """
    probs = np.asarray(probs)
    names = [str(name) for name in label_names]
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(f"probs must be [N, {len(names)}] (one column per label); got shape {probs.shape}")
    preference = np.array(sorted(range(len(names)), key=lambda i: (names[i] != "O", names[i])), dtype=np.int64)
    return preference[np.argmax(probs[:, preference], axis=1)]  # argmax takes the first of tied maxima


def label_rule(preds: Predictions) -> str:
    """How a tagging system's labels (those F1 scores) were made: "iob2" (its most probable valid IOB2 path,
    decoding.py), "stored path" (a single CRF's Viterbi path), or "argmax"."""
    if preds.meta.get("decode") == "iob2":
        return "iob2"
    return "stored path" if preds.pred is not None else "argmax"


def clip_near_unit_interval(x: np.ndarray) -> np.ndarray:
    """`x` with values at most PROB_TOLERANCE outside [0, 1] moved onto it (a new array when any are); values
    further out, and NaN, are left for validation to refuse."""
    near = ((x > 1) & (x <= 1 + PROB_TOLERANCE)) | ((x < 0) & (x >= -PROB_TOLERANCE))
    return np.where(near, np.clip(x, 0, 1), x) if near.any() else x


def compact_distributions(probs, gold, k: int, chunk_rows: int = COMPACT_CHUNK_ROWS):
    """Top-k (ids, probs, descending), gold probability, sum_c p_c^2 of dense distributions [N, V], and how many
    tokens outside the top k share the k-th probability (`tied_beyond`, int32 [N]: the calibration events share a
    tie that straddles the k-th place among all its tokens; which of them are stored is arbitrary).

    Works through `chunk_rows` rows at a time so that memory stays bounded for large vocabularies.
    `probs` may be a numpy array or anything np.asarray accepts per chunk (a memmap, a CPU tensor).
    """
    n, vocab = probs.shape
    if len(gold) != n or np.any((gold < 0) | (gold >= vocab)):
        raise UserError(f"gold must be {n} token ids in [0, {vocab}) to match the distributions")
    k = min(k, vocab)
    top_ids = np.empty((n, k), dtype=np.int32)
    top_probs = np.empty((n, k), dtype=np.float32)
    gold_prob = np.empty(n, dtype=np.float32)
    sum_sq = np.empty(n, dtype=np.float32)
    tied_beyond = np.empty(n, dtype=np.int32)
    for start in range(0, n, chunk_rows):
        rows = slice(start, min(start + chunk_rows, n))
        chunk = np.asarray(probs[rows], dtype=np.float32)
        unordered = np.argpartition(-chunk, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(chunk, unordered, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(unordered, order, axis=1)
        top_ids[rows] = ids
        top_probs[rows] = np.take_along_axis(chunk, ids, axis=1)
        gold_prob[rows] = chunk[np.arange(len(chunk)), gold[rows]]
        sum_sq[rows] = np.einsum("nv,nv->n", chunk, chunk, dtype=np.float64)
        last = top_probs[rows, -1:]
        tied_beyond[rows] = (chunk == last).sum(axis=1) - (top_probs[rows] == last).sum(axis=1)
    return top_ids, top_probs, gold_prob, sum_sq, tied_beyond


def save_predictions(path, preds: Predictions) -> None:
    """Validate `preds` and write them to `path` (.npz) atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    arrays = _to_arrays(preds)
    validate_arrays(arrays, path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def validate_predictions(preds: Predictions, where="predictions") -> None:
    """The checks of a predictions file, for predictions in memory; UserError messages start with `where`."""
    validate_arrays(_to_arrays(preds), where)


def load_predictions(path) -> Predictions:
    """Read and validate a predictions file; any problem raises UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such predictions file")
    with path.open("rb") as f:  # numpy's own message for other files talks of unpickling them
        if f.read(4) != b"PK\x03\x04":
            raise UserError(f"{path}: not a predictions .npz file (not a zip archive of named arrays; `predict`, "
                            "`evaluate --run` and `reproduce` write them)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named arrays")
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: not a predictions .npz file ({err})") from None
    validate_arrays(arrays, path)
    task = str(arrays["task"])
    fields = {key: arrays[key] for key in TASK_KEYS[task] + OPTIONAL_KEYS[task] if key in arrays}
    for key in PROBABILITY_KEYS[task]:  # validated: every value lies within the tolerance of [0, 1]
        fields[key] = np.clip(fields[key], 0, 1)
    return Predictions(
        task=task,
        label_names=arrays["label_names"],
        sentence_offsets=arrays["sentence_offsets"].astype(np.int64),
        gold=arrays["gold"].astype(np.int64),
        meta=json.loads(str(arrays["meta"])),
        **fields,
    )


def _to_arrays(preds: Predictions) -> dict[str, np.ndarray]:
    """The arrays written to disk, in their on-disk dtypes."""
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "task": np.array(preds.task),
        "label_names": np.asarray(preds.label_names, dtype=str),
        "sentence_offsets": np.asarray(preds.sentence_offsets, dtype=np.int64),
        "gold": np.asarray(preds.gold, dtype=np.int64),
        "meta": np.array(strict_json(preds.meta, sort_keys=True, default=str)),
    }
    dtypes = {
        "probs": np.float32, "pred": np.int64, "top_ids": np.int32, "top_probs": np.float32,
        "gold_prob": np.float32, "sum_sq": np.float32, "hypotheses": str, "references": str, "tied_beyond": np.int32,
    }  # fmt: skip
    for key in TASK_KEYS.get(preds.task, ()) + OPTIONAL_KEYS.get(preds.task, ()):
        value = getattr(preds, key)
        if value is not None:
            arrays[key] = np.asarray(value, dtype=dtypes[key])
    return arrays


def validate_arrays(arrays: dict[str, np.ndarray], path) -> None:
    """Check a predictions file's arrays for everything evaluation relies on; raise UserError on the first problem."""

    def fail(problem):
        raise UserError(f"{path}: {problem}")

    missing = [key for key in COMMON_KEYS if key not in arrays]
    if missing:
        fail(f"missing keys {missing} (is this a predictions file?)")
    if int(arrays["format_version"]) != FORMAT_VERSION:
        fail(f"format_version {int(arrays['format_version'])} is not supported (expected {FORMAT_VERSION})")
    task = str(arrays["task"])
    if task not in TASKS:
        fail(f"task {task!r} is not one of {list(TASKS)}")
    missing = [key for key in TASK_KEYS[task] if key not in arrays]
    if missing:
        fail(f"missing keys {missing} for task {task!r}")
    try:
        json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as err:
        fail(f"meta is not a JSON string ({err})")

    labels, offsets, gold = arrays["label_names"], arrays["sentence_offsets"], arrays["gold"]
    for key in ("label_names", "sentence_offsets", "gold"):
        if arrays[key].ndim != 1:
            fail(f"{key} must be one-dimensional, got shape {list(arrays[key].shape)}")
    n_classes, n = len(labels), len(gold)
    _check_strings(fail, "label_names", labels)
    _check_integer(fail, "gold", gold)
    _check_integer(fail, "sentence_offsets", offsets)
    if n == 0 or n_classes == 0 or len(offsets) < 2:
        fail(f"empty input: {n} positions, {len(offsets) - 1} sentences, {n_classes} labels")
    if offsets[0] != 0 or offsets[-1] != n:
        fail(f"sentence_offsets must start at 0 and end at N={n}, got {offsets[0]}..{offsets[-1]}")
    if np.any(np.diff(offsets) < 0):
        s = int(np.argmax(np.diff(offsets) < 0))
        fail(f"sentence_offsets are not monotone: offsets[{s}]={offsets[s]} > offsets[{s + 1}]={offsets[s + 1]}")
    bad = (gold < 0) | (gold >= n_classes)
    if bad.any():
        pos = int(np.argmax(bad))
        sentence = int(np.searchsorted(offsets, pos, side="right") - 1)
        fail(f"gold label {gold[pos]} at position {pos} (sentence {sentence}) is outside the {n_classes} labels")

    if task == "tagging":
        _validate_tagging(fail, arrays, n, n_classes)
    else:
        _validate_translation(fail, arrays, n, n_classes, n_sentences=len(offsets) - 1)


def _validate_tagging(fail, arrays, n, n_classes):
    probs = arrays["probs"]
    _check_shape(fail, "probs", probs, (n, n_classes))
    _check_probabilities(fail, "probs", probs)
    sums = probs.sum(axis=1, dtype=np.float64)
    _check_row_sums(fail, "probs", np.abs(sums - 1) > PROB_TOLERANCE, sums)
    _check_iob2(fail, arrays["label_names"], arrays["gold"], arrays["sentence_offsets"])
    if "pred" in arrays:
        pred = arrays["pred"]
        _check_shape(fail, "pred", pred, (n,))
        _check_integer(fail, "pred", pred)
        if np.any((pred < 0) | (pred >= n_classes)):
            fail(f"pred has label ids outside the {n_classes} labels")


def _validate_translation(fail, arrays, n, n_classes, n_sentences):
    top_ids, top_probs = arrays["top_ids"], arrays["top_probs"]
    if top_ids.ndim != 2 or top_ids.shape[1] == 0:
        fail(f"top_ids must have shape [N, k] with k >= 1, got {list(top_ids.shape)}")
    k = top_ids.shape[1]
    _check_shape(fail, "top_ids", top_ids, (n, k))
    _check_integer(fail, "top_ids", top_ids)
    _check_shape(fail, "top_probs", top_probs, (n, k))
    for key in ("gold_prob", "sum_sq"):
        _check_shape(fail, key, arrays[key], (n,))
    for key in ("hypotheses", "references"):
        _check_shape(fail, key, arrays[key], (n_sentences,))
        _check_strings(fail, key, arrays[key])
    if np.any((top_ids < 0) | (top_ids >= n_classes)):
        fail(f"top_ids has token ids outside the {n_classes} labels")
    for key in ("top_probs", "gold_prob", "sum_sq"):
        _check_probabilities(fail, key, arrays[key])
    sums = top_probs.sum(axis=1, dtype=np.float64)
    _check_row_sums(fail, "top_probs", sums > 1 + PROB_TOLERANCE, sums)
    if np.any(np.diff(top_probs, axis=1) > 0):
        fail("top_probs rows are not sorted in descending order")
    _check_gold_prob(fail, arrays, k, n_classes)


def _check_gold_prob(fail, arrays, k, n_classes):
    """The calibration events read the gold token's rank off `gold_prob` (a tie is a tie of probabilities), so it
    must agree with the top-k: equal to top_probs where top_ids holds the gold id, else at most the last stored
    probability; `tied_beyond` (optional) counts the tokens outside top_ids that share that last probability."""
    top_ids, top_probs, gold = arrays["top_ids"], arrays["top_probs"], arrays["gold"]
    gold_prob = arrays["gold_prob"].astype(top_probs.dtype)
    stored = top_ids == gold[:, None]
    differs = (stored & (top_probs != gold_prob[:, None])).any(axis=1)
    above = ~stored.any(axis=1) & (gold_prob > top_probs[:, -1])
    for bad, problem in ((differs, "differs from top_probs where top_ids holds the gold id"),
                         (above, "exceeds the last top_probs, but the gold id is not in top_ids")):
        if bad.any():
            pos = int(np.argmax(bad))
            fail(f"gold_prob at position {pos} {problem}: gold_prob must be the gold token's probability as "
                 "top_probs holds it")
    if "tied_beyond" not in arrays:
        return
    tied = arrays["tied_beyond"]
    _check_shape(fail, "tied_beyond", tied, (len(gold),))
    _check_integer(fail, "tied_beyond", tied)
    if np.any((tied < 0) | (tied > n_classes - k)):
        fail(f"tied_beyond must lie in [0, {n_classes - k}] (tokens outside the top {k})")
    unstored_tie = ~stored.any(axis=1) & (gold_prob == top_probs[:, -1]) & (tied == 0)
    if unstored_tie.any():
        fail(f"gold_prob at position {int(np.argmax(unstored_tie))} equals the last top_probs with the gold id not "
             "in top_ids, but tied_beyond says no token outside top_ids has that probability")


def _check_shape(fail, name, array, shape):
    if array.shape != shape:
        fail(f"{name} has shape {list(array.shape)}, expected {list(shape)}")


def _check_integer(fail, name, array):
    if not np.issubdtype(array.dtype, np.integer):
        fail(f"{name} must be integers, got {array.dtype}")


def _check_probabilities(fail, name, array):
    if not np.issubdtype(array.dtype, np.floating):
        fail(f"{name} must be floating point, got {array.dtype}")
    rows = array.reshape(len(array), -1)
    if np.isnan(rows).any():
        fail(f"{name} contains NaN at position {int(np.argmax(np.isnan(rows).any(axis=1)))}")
    outside = ((rows < -PROB_TOLERANCE) | (rows > 1 + PROB_TOLERANCE)).any(axis=1)
    if outside.any():
        pos = int(np.argmax(outside))
        value = rows[pos][np.argmax((rows[pos] < -PROB_TOLERANCE) | (rows[pos] > 1 + PROB_TOLERANCE))]
        fail(f"{name} has the value {str(value)} at position {pos}: probabilities must lie in [0, 1] "
             f"(within {PROB_TOLERANCE})")


def _check_iob2(fail, labels, gold, offsets):
    """Tagging labels must be IOB2 (O, B-TYPE, I-TYPE: what seqeval's strict IOB2 mode and the entity-type
    metrics read), each once, and every gold I-X must continue a B-X or I-X span in its sentence."""
    names = labels.tolist()
    for i, name in enumerate(names):
        problem = iob2_label_problem(name)
        if problem:
            fail(f"label {name!r} (label_names[{i}]) {problem}")
    if len(set(names)) < len(names):
        fail(f"label {next(name for name in names if names.count(name) > 1)!r} appears twice in label_names")
    prefix = np.array([name[0] for name in names])
    _, type_id = np.unique([name[2:] for name in names], return_inverse=True)  # O has type "", no span's
    sentence_start = np.zeros(len(gold), dtype=bool)
    sentence_start[offsets[:-1][offsets[:-1] < len(gold)]] = True
    previous = np.roll(gold, 1)
    stray = (prefix[gold] == "I") & (sentence_start | (type_id[previous] != type_id[gold]))
    if stray.any():
        pos = int(np.argmax(stray))
        sentence = int(np.searchsorted(offsets, pos, side="right") - 1)
        after = "opening its sentence" if sentence_start[pos] else f"after {names[previous[pos]]!r}"
        fail(f"gold label {names[gold[pos]]!r} at position {pos} (sentence {sentence}) {after} is not IOB2, where "
             "a span starts with B-; convert IOB1 gold to IOB2 (the CoNLL reader's scheme = \"iob1\" does)")


def iob2_label_problem(name: str) -> str | None:
    """Why `name` is not a tagging label evaluation reads, or None: O, B-TYPE or I-TYPE with an upper-case prefix
    and a TYPE of printable characters without whitespace ("B-PER " and "B- PER" would be types of their own)."""
    try:
        _, entity_type = split_tag(name)
    except TagError:
        return ("is not an IOB2 label: evaluation reads O, B-TYPE and I-TYPE (upper-case prefixes); relabel as "
                "IOB2 (IOBES, BILOU: S-X, U-X -> B-X and E-X, L-X -> I-X; a bare type X: B-X on a span's first "
                "token, I-X on the others)")
    if not entity_type.isprintable() or any(ch.isspace() for ch in entity_type):
        return f"has the entity type {entity_type!r}, with whitespace or unprintable characters: strip them"
    return None


def _check_strings(fail, name, array):
    if array.dtype.kind != "U":
        fail(f"{name} must be strings, got {array.dtype}")


def _check_row_sums(fail, name, bad, sums):
    if bad.any():
        pos = int(np.argmax(bad))
        fail(f"{name} row {pos} sums to {sums[pos]:.6f}; rows must sum to 1 within {PROB_TOLERANCE}")
