"""Calibration metrics over events: (confidence, correct) pairs, numpy in, floats out.

An *event* is one probability a model gave to one outcome, with whether that outcome happened. NMT evaluation
turns each position into its top-1 (ECE-1) or top-k (ECE-k) predictions; NER evaluation turns each position into
one event per entity type (confidence of type X = min(1, p(B-X) + p(I-X))).

Two definitions of ECE live here.

Ours (the default), the textbook expected calibration error:

    ECE = sum_b (n_b / N) * |acc_b - conf_b|

- ``strategy="quantile"``: events sorted by confidence are cut into ``n_bins`` contiguous groups of sizes
  ``np.array_split`` would give (the first ``N % n_bins`` groups one event larger); when N < n_bins the extra
  groups are empty and contribute nothing.
- ``strategy="uniform"``: bin b holds confidences in [b/n_bins, (b+1)/n_bins); 1.0 falls in the last bin. b/n_bins
  is np.linspace's float64 (`uniform_bin_starts`, which the reliability diagrams bin by too).

``paper_compatible=True``, the published reference implementation (its NMT script calls scikit-learn):

    ECE = mean over non-empty bins b of |frac_pos_b - mean_pred_b|

with the bins scikit-learn's ``calibration_curve`` forms (checked against scikit-learn 1.9.1): for
``"quantile"`` the edges are ``np.percentile(conf, linspace(0, 100, n_bins + 1))`` (linear interpolation) and a
confidence goes to bin ``np.searchsorted(edges[1:-1], conf)`` (side="left": a confidence equal to an inner edge
belongs to the bin below it); for ``"uniform"`` the edges are ``linspace(0, 1, n_bins + 1)``, searched the same
way. Where it differs from ours: bins are averaged without weights (a bin of 3 events counts as much as a bin of
3 million); ties make percentile bins uneven or merge them, and merged/empty bins are dropped from the mean;
edge-equal confidences go down instead of up.

Ties. Where a cut (a quantile bin bound, the 2N cut of the balanced metrics, the paper's fixed-size bins or its
dropped remainder) falls inside a run of equal confidences, which of the tied events land on which side is
arbitrary, and must not decide the result: every event of that confidence counts as correct in the proportion
of the whole run (h/n for h correct among n tied events), in the bins and in the Brier score. That is the
average over the orders of the tied events of the correct counts each side receives, and the same for every
order. (Ordering ties by correctness instead would hand the incorrect ones to the lower bin: 20 events at 0.5,
10 correct, scored an ECE of 0.5.) Cuts that never fall inside a run (uniform bins, scikit-learn's percentile
edges) see whole runs, and there the rule changes nothing.

Class ties. Within one distribution, m classes may share a probability (a 50/50 row, float16 or quantised
scores). Which of them is "the" top-1, or enters the top k when the tie straddles the k-th place, is arbitrary
(argmax takes the first in label order), and must not decide the result. The same rule as above, over the orders
of the tied classes: an event whose confidence is shared by m classes, one of them gold, is correct at 1/m, and
at 0 when none is gold. A tie inside the top k contributes its m events, together correct once when it holds the
gold class; a tie of m classes for the r last slots contributes r events, each correct at 1/m: r/m in all, the
chance that the gold class is picked. So `topk_events` returns fractional `correct` where a tie holds the gold
class, and `ece` takes `correct` as the probability that each event is correct (bool, 0/1, or a fraction in
[0, 1]; a fractional event adds its fraction to its bin's correct count, and shares it with its run as above).
The events depend only on the probabilities, never on the order of the classes.

Balanced metrics for NER (paper section 4.2; its footnote 8 collapses B and I into entity types, so a type's
confidence is p(B-X) + p(I-X), clipped at 1 against rounding), per entity type with N gold positions (types with
N = 0 are skipped): keep the 2N most confident events of that type (all of them when fewer exist; equal confidences
at the cut share their correctness, see Ties). B-ECE is the sum over types of that type's ECE weighted by its share
of kept events, with quantile bins (``n_bins`` = 20); B-BS likewise of each type's Brier score mean
(c - 1[gold])^2. With ``paper_compatible=True`` a type's ECE uses ``n_bins`` bins of exactly floor(N'/n_bins)
events, N' = kept events, counted from the most confident end; the N' mod n_bins least confident events are
dropped (our reading of the authors' released code, "bins of floor(N'/20), remainder dropped": the top-2N selection
sorts by descending confidence). A type with N' < n_bins then has no bin: its ECE is NaN and it is left out of
B-ECE (weights renormalised over the others). The paper's text says only "adaptively binned": the bin count 20 and
the remainder rule are the released code's, and the text does not say whether bins are weighted by their events
(the default) or averaged alike (paper mode's ECE above).

All metrics are fractions (the paper prints them x100). Probabilities may stray from [0, 1] by float rounding up
to predictions.PROB_TOLERANCE, as the predictions file check allows; such values are clipped onto [0, 1], and
values further out (and NaN) raise UserError naming the first row holding one. Functions of full distributions
[positions, classes] (brier, dense_topk_events and topk_ece, entity_type_confidences) also refuse a row whose sum
strays from 1 by more than PROB_TOLERANCE, as the file check does; top-k probabilities and confidences need not sum
to 1.

How it is fast: an event becomes one unsigned integer, ``(float bits << 1) | correct``. Non-negative IEEE floats
order like their bit patterns, so one ``np.sort`` of these keys orders events by confidence (ties broken by the
correct bit) and carries the correct flag along: no argsort, no gather. Bins are then slices of the sorted keys.
The loops numpy would run as several passes (building the keys, per-bin counts, extremes and sums, the Brier
scores' squares and gold entries, the type confidences) are compiled single passes (kernels.py, numba). A run of
ties crossing a cut shows in the bins' smallest and largest keys; only then are its events counted, in the bins at
the run's two ends. Events correct at a fraction (class ties) are keyed as incorrect, and their fractions, summed
per confidence, are added to the bins afterwards: the common case, no such event, costs nothing.

Each bin's confidence sum is the exact sum, rounded once to float64: it cannot depend on the order of the events.
A vectorised float64 sum is that wherever every addition is exact (the usual case for float32 confidences: its
partial sums stay below 2**53 times the spacing at its smallest confidence); other bins (tiny confidences beside
large ones, most float64 bins) are summed exactly by binary exponent. So quantile bins skip the full sort: the keys
are only partitioned (np.partition, one rank at a time) at the ranks where bins start, or for ``paper_compatible``
at the order statistics ``np.percentile`` reads and then at the counts below its edges. Equal keys are identical
events, so each bin's slice then holds exactly the events sorting would put there, in another order, and the
result is bit for bit the full sort's. About 2.5x faster than sorting.
"""

import math
from dataclasses import dataclass

import numpy as np

from ensemble_distill.calibration import kernels
from ensemble_distill.errors import UserError
from ensemble_distill.predictions import PROB_TOLERANCE, iob2_label_problem

STRATEGIES = ("quantile", "uniform")
_UINT_OF_FLOAT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
# elements per block in blocked loops: a block of 32-bit values (1 MB) stays in cache between the operations on
# it, and numpy's cost per call (microseconds) is small against one
_BLOCK_ELEMENTS = 1 << 18
_SQUARES_BLOCK = 1 << 13  # values per block of _squares_and_gold: 32 KB of float32 stay in the L1 cache


# --------------------------------------------------------------------------------------------- ECE


def ece(confidence, correct, n_bins=10, strategy="quantile", paper_compatible=False):
    """Expected calibration error of events: confidence [N] in [0, 1]; correct [N] bool (or 0/1), or float in
    [0, 1], the probability that the event is correct (a class tie's share, see the module docstring).

    Raises:
        UserError: no events, shapes that differ, confidences outside [0, 1] (beyond PROB_TOLERANCE) or NaN,
            `correct` outside [0, 1], a bad n_bins or strategy.
    """
    _check_bins(n_bins, strategy)
    conf, correct = _as_events(confidence, correct, "ece")
    keys, fractions = _event_keys(conf, correct)
    partial = _partial_by_confidence(keys, fractions)  # before the keys are reordered in place
    if strategy == "quantile":
        return _quantile_ece_by_selection(keys, conf.dtype, n_bins, paper_compatible, partial=partial)
    keys.sort()
    return _ece_of_sorted_keys(keys, conf.dtype, n_bins, strategy, paper_compatible, partial=partial)


def topk_events(top_probs, gold_prob, k=None, tied_beyond=0):
    """ECE-k events of compact top-k predictions: each row's first k probabilities, and whether each is the gold
    class's, with class ties shared (module docstring, "Class ties").

    top_probs [N, K] float: each row's K largest probabilities, in descending order (the predictions file's
    `top_probs`); gold_prob [N]: the gold class's probability, exactly as top_probs holds it where the gold class
    is among the K (compared in the coarser float type of the two: float32 top_probs match a float64 gold_prob
    rounded to float32); k: events per row, 1..K (default K); tied_beyond int [N] or a scalar: how many classes outside
    the K share top_probs[:, -1] (the file's `tied_beyond`; 0 when unknown). The gold class is tied with slot j
    when their probabilities are equal; it then counts as correct at 1/m, m the classes of that probability.

    Returns confidence [N*k] and correct [N*k], row by row: bool, or float64 when a tie shares the gold's
    correctness. Class ids are not needed: the events depend only on the probabilities.

    Raises:
        UserError: shapes that do not match, rows not in descending order, probabilities outside [0, 1], k outside
            1..K, tied_beyond negative or not integers.
    """
    top_probs, gold_prob = np.asarray(top_probs), np.asarray(gold_prob)
    if top_probs.ndim != 2 or top_probs.shape[1] == 0:
        raise UserError(f"topk_events: top_probs must be [N, K] with K >= 1; got shape {top_probs.shape}")
    n, stored = top_probs.shape
    k = stored if k is None else _check_k(k, stored, "topk_events", "the number stored")
    if gold_prob.shape != (n,):
        raise UserError(f"topk_events: gold_prob must be [N] = [{n}]; got shape {gold_prob.shape}")
    tied_beyond = np.asarray(tied_beyond)
    if tied_beyond.shape not in ((), (n,)):
        raise UserError(f"topk_events: tied_beyond must be a scalar or [N] = [{n}]; got shape {tied_beyond.shape}")
    _check_integer(tied_beyond, "tied_beyond")
    if tied_beyond.size and tied_beyond.min() < 0:
        raise UserError("topk_events: tied_beyond must be >= 0")
    top_probs = _as_probs(top_probs, "top_probs")
    gold_prob = _as_confidence(gold_prob, "gold_prob")
    if _neighbours_in_rows(top_probs, np.greater).any():
        raise UserError("topk_events: top_probs rows must be in descending order")
    at_gold = _equal_in_coarser_type(top_probs, gold_prob[:, None])  # [N, K] slots at the gold class's probability
    confidence, hit = top_probs[:, :k].reshape(-1), at_gold[:, :k].reshape(-1)
    # Equal probabilities sit side by side in sorted rows: a tie holding the gold class shows as two neighbouring
    # slots at the gold's probability, or as the last slot at it with tied_beyond > 0. Rare: only those rows are
    # counted, and the events are floats only when one exists.
    tied_rows = np.flatnonzero(_neighbours_in_rows(at_gold, np.logical_and)) // stored
    if tied_beyond.any():
        tied_rows = np.union1d(tied_rows, np.flatnonzero(at_gold[:, -1] & (tied_beyond > 0)))
    if not tied_rows.size:
        return confidence, hit
    beyond = tied_beyond[tied_rows] if tied_beyond.ndim else tied_beyond
    classes = at_gold[tied_rows].sum(axis=1) + np.where(at_gold[tied_rows, -1], beyond, 0)  # at the gold's prob.
    correct = hit.astype(np.float64)
    correct.reshape(n, k)[tied_rows] /= classes[:, None]
    return confidence, correct


def _equal_in_coarser_type(a, b):
    """a == b (broadcast), compared in the coarser of their float types: the gold probability is matched by equality,
    and one probability held as float32 in top_probs and as float64 in gold_prob would never equal itself across
    the two (float32 top_probs beside a float64 gold_prob found no correct event: ECE-1 0.181 for 0.025)."""
    coarse = min(a.dtype, b.dtype, key=lambda dtype: dtype.itemsize)
    return a.astype(coarse, copy=False) == b.astype(coarse, copy=False)


def _neighbours_in_rows(x, op):
    """op(x[:, j + 1], x[:, j]) for each row's neighbouring pairs, laid out flat [N*K - 1] with the pairs that join
    one row's last element to the next row's first set False: contiguous passes, several times faster than on the
    [N, K - 1] strided views."""
    flat = x.reshape(-1)
    pairs = op(flat[1:], flat[:-1])
    pairs[x.shape[1] - 1::x.shape[1]] = False
    return pairs


def dense_topk_events(probs, gold, k):
    """`topk_events` of full distributions: probs [N, C] in [0, 1], each row summing to 1 (within PROB_TOLERANCE),
    gold [N] class ids, k in 1..C.

    Returns confidence [N*k] (each row's k largest probabilities, descending) and correct [N*k] (bool, or float64
    where a class tie holding the gold class shares its correctness).

    Raises:
        UserError: probs not [N, C] distributions (naming the first bad row), gold ids outside 0..C-1, k outside
            1..C.
    """
    probs = _as_distributions(probs, "probs")
    gold = _as_labels(gold, probs.shape, "gold")
    k = _check_k(k, probs.shape[1], "topk_ece", "the number of classes")
    top_probs, gold_prob, tied_beyond = _top_k_values(probs, gold, k)
    return topk_events(top_probs, gold_prob, tied_beyond=tied_beyond)


def topk_ece(probs, gold, k, n_bins=10, paper_compatible=False):
    """ECE-k: each position's k most probable classes become k events (is it gold?), pooled; quantile bins. Class
    ties share the gold's correctness (`dense_topk_events`, whose Raises apply)."""
    confidence, correct = dense_topk_events(probs, gold, k)
    return ece(confidence, correct, n_bins=n_bins, strategy="quantile", paper_compatible=paper_compatible)


def _top_k_values(probs, gold, k):
    """Each row's k largest probabilities in descending order [N, k]; the gold class's probability [N]; and, in the
    rows where that equals the k-th largest, how many classes outside the k share it (0 elsewhere) [N] int64."""
    n, c = probs.shape
    top_probs = np.empty((n, k), dtype=probs.dtype)
    tied_beyond = np.zeros(n, dtype=np.int64)
    gold_prob = np.take_along_axis(probs, gold[:, None], axis=1)[:, 0]
    rows = max(1, _BLOCK_ELEMENTS // c)
    for start in range(0, n, rows):  # blocks of rows: partition's copy stays small
        block, block_top = probs[start:start + rows], top_probs[start:start + rows]
        block_top[:] = np.partition(block, c - k, axis=1)[:, c - k:]
        block_top.sort(axis=1)
        block_top[:] = block_top[:, ::-1]
        at_last = np.flatnonzero(gold_prob[start:start + rows] == block_top[:, -1])
        if at_last.size:
            value = block_top[at_last, -1:]
            tied_beyond[start + at_last] = ((block[at_last] == value).sum(axis=1)
                                            - (block_top[at_last] == value).sum(axis=1))
    return top_probs, gold_prob, tied_beyond


def _check_k(k, limit, caller, what):
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= limit:
        raise UserError(f"{caller}: k must be an integer in 1..{limit} ({what}); got {k!r}")
    return int(k)


# ------------------------------------------------------------------------------------------- Brier


def brier(probs, gold):
    """Multiclass Brier score: mean over positions of sum_c (p_c - 1[c = gold])^2. probs [N, C] float, each row a
    distribution (summing to 1 within PROB_TOLERANCE), gold [N] ints.

    Raises:
        UserError: probs not [N, C] distributions (naming the first bad row), gold not [N] ids in 0..C-1, N = 0.
    """
    probs = _as_distributions(probs, "probs")
    gold = _as_labels(gold, probs.shape, "gold")
    n, c = probs.shape
    if n == 0:
        raise UserError("brier: no positions (probs is empty)")
    # sum_c (p_c - y_c)^2 = sum_c p_c^2 - 2 p_gold + 1
    sum_sq, _, sum_gold, _ = _squares_and_gold(probs, gold)
    return float((sum_sq - 2.0 * sum_gold) / n + 1.0)


def _squares_and_gold(values, gold):
    """One pass over values [N, C] (float): the sum of all squares, and over the rows with a gold column (gold[n] >=
    0; -1 for none) the count, sum and sum of squares of values[n, gold[n]]; float64 (kernels.squares_and_gold, in
    blocks of rows that stay in cache between the squares and the gold entries)."""
    values = np.ascontiguousarray(values)
    return kernels.squares_and_gold(values, gold, max(1, _SQUARES_BLOCK // max(values.shape[1], 1)))


# ------------------------------------------------------------------------------------ NER entity types


def entity_type_confidences(probs, label_names):
    """Per-type confidences [N, T] = min(1, p(B-X) + p(I-X)) and the sorted type names; "O" is not a type. probs
    [N, C] float, each row a distribution over the C labels (summing to 1 within PROB_TOLERANCE); label_names [C].

    Raises:
        UserError: probs not [N, C] distributions (naming the first bad row); label names that are not IOB2,
            named twice, or not C of them.
    """
    probs = _as_distributions(probs, "probs")
    label_types = _label_types(label_names, probs.shape[1])
    type_names = sorted({t for t in label_types if t is not None})
    # a type has one or two labels (B-X, I-X; unique names): each entry is the float sum p(B-X) + p(I-X), rounded
    # once, in one compiled pass
    labels = [[c for c, t in enumerate(label_types) if t == name] for name in type_names]
    first = np.array([c[0] for c in labels], dtype=np.intp)
    second = np.array([c[1] if len(c) > 1 else -1 for c in labels], dtype=np.intp)
    confidences = np.empty((probs.shape[0], len(type_names)), dtype=probs.dtype)
    kernels.type_confidences(probs, first, second, confidences)
    return confidences, type_names


def gold_entity_types(gold, label_names, type_names):
    """For gold label ids [N], the index in type_names of each gold label's entity type; -1 for O. int8 [N] (intp
    past 127 types): the per-type passes of the NER metrics read an eighth of the bytes of intp."""
    label_types = _label_types(label_names, len(label_names))
    unknown = sorted({t for t in label_types if t is not None} - set(type_names))
    if unknown:
        raise UserError(f"gold_entity_types: label types {unknown} are not among type_names {list(type_names)}")
    type_index = {name: i for i, name in enumerate(type_names)}
    dtype = np.int8 if len(type_names) <= np.iinfo(np.int8).max else np.intp
    lookup = np.array([-1 if t is None else type_index[t] for t in label_types], dtype=dtype)
    gold = _as_labels(gold, (None, len(label_names)), "gold")
    return np.take(lookup, gold)


def _label_types(label_names, n_classes):
    """Entity type of each IOB2 label name ("B-PER" -> "PER"), None for "O"."""
    names = [str(name) for name in label_names]
    if len(names) != n_classes:
        raise UserError(f"{len(names)} label names for {n_classes} classes in probs")
    if len(set(names)) < len(names):
        raise UserError(f"label {next(name for name in names if names.count(name) > 1)!r} appears twice")
    problem = next(((name, p) for name in names if (p := iob2_label_problem(name))), None)
    if problem:
        raise UserError(f"label {problem[0]!r} {problem[1]}")
    return [None if name == "O" else name[2:] for name in names]


# --------------------------------------------------------------------------- stratified and balanced


def stratified_brier(type_conf, gold_type):
    """(BS+, BS-): mean (1-c)^2 over (position, type) events of the gold type; mean c^2 over all other events."""
    type_conf, gold_type = checked_type_events(type_conf, gold_type)
    sum_sq_all, n_pos, sum_pos, sum_sq_pos = _squares_and_gold(type_conf, gold_type)
    n_neg = type_conf.size - n_pos
    bs_plus = (n_pos - 2.0 * sum_pos + sum_sq_pos) / n_pos if n_pos else float("nan")
    bs_minus = (sum_sq_all - sum_sq_pos) / n_neg if n_neg else float("nan")
    return float(bs_plus), float(bs_minus)


@dataclass(frozen=True)
class TypeCalibration:
    """One entity type's share of the balanced metrics."""

    type_index: int
    n_gold: int  # positions whose gold type is this type (N)
    n_kept: int  # events kept: min(2N, positions)
    ece: float  # NaN in paper mode when n_kept < n_bins
    brier: float


@dataclass(frozen=True)
class BalancedCalibration:
    """B-ECE and B-BS (fractions) with the per-type values they are weighted sums of."""

    b_ece: float
    b_bs: float
    per_type: tuple[TypeCalibration, ...]


def balanced_calibration(type_conf, gold_type, n_bins=20, paper_compatible=False):
    """The paper's B-ECE and B-BS: per type, the 2N most confident events; weighted by kept events."""
    _check_bins(n_bins, "quantile")
    type_conf, gold_type = checked_type_events(type_conf, gold_type)
    per_type = tuple(
        _type_calibration(type_conf[:, t], gold_type == t, t, n_bins, paper_compatible)
        for t in range(type_conf.shape[1])
    )
    per_type = tuple(p for p in per_type if p is not None)
    if not per_type:
        raise UserError("balanced_calibration: no position has a gold entity type")
    kept = np.array([p.n_kept for p in per_type], dtype=np.float64)
    briers = np.array([p.brier for p in per_type])
    eces = np.array([p.ece for p in per_type])
    has_ece = ~np.isnan(eces)
    b_ece = float(np.sum(kept[has_ece] * eces[has_ece]) / kept[has_ece].sum()) if has_ece.any() else float("nan")
    return BalancedCalibration(b_ece=b_ece, b_bs=float(np.sum(kept * briers) / kept.sum()), per_type=per_type)


def _type_calibration(conf, is_gold, type_index, n_bins, paper_compatible):
    """ECE and Brier of one type's 2N most confident events; None when no position has this gold type."""
    n_gold = int(np.count_nonzero(is_gold))
    if n_gold == 0:
        return None
    n_kept = min(2 * n_gold, conf.shape[0])
    keys, _ = _event_keys(conf, is_gold)
    keys.partition(keys.size - n_kept)  # the n_kept largest keys end up last: the most confident events
    dropped, kept = keys[: keys.size - n_kept], keys[keys.size - n_kept:]
    # Events tied with the least confident kept one may have been dropped (the keys kept its correct ones first):
    # the kept ones of that confidence count as correct in the proportion of the whole tie, in the Brier score
    # ((c - y)^2 = c^2 + y (1 - 2c) for y in {0, 1}) and in the bins.
    below = _run_at_top(dropped, kept[0])
    tie_shift = 0.0
    if below[0]:
        events, correct = _run_at_bottom(kept, kept[0])
        share = (correct + below[1]) / (events + below[0])
        tie_shift = (events * share - correct) * (1 - 2 * float(_key_confidences(kept[:1], conf.dtype)[0]))
    if paper_compatible:
        kept.sort()
        type_ece = _paper_fixed_size_ece(kept, conf.dtype, n_bins, below)
    else:  # as in `ece`: partitioned at the bin bounds, the same float as sorting
        type_ece = _quantile_ece_by_selection(kept, conf.dtype, n_bins, False, below)
    sq_err = kernels.squared_errors(kept) + tie_shift
    return TypeCalibration(type_index=type_index, n_gold=n_gold, n_kept=n_kept, ece=type_ece,
                           brier=float(sq_err / n_kept))


def _paper_fixed_size_ece(sorted_keys, dtype, n_bins, below=(0, 0)):
    """Reference B-ECE binning: n_bins bins of floor(N'/n_bins) events from the most confident end. `below`:
    dropped events with the confidence of sorted_keys[0] (see _share_ties)."""
    size = sorted_keys.size // n_bins
    if size == 0:
        return float("nan")
    first = sorted_keys.size - size * n_bins
    top = sorted_keys[first:]
    # the remainder left out, and the dropped events when the remainder is all of the first bin's confidence
    left_out = np.array(_run_at_top(sorted_keys[:first], top[0]))
    if sorted_keys[0] >> 1 == top[0] >> 1:
        left_out += below
    return _ece_of_bins(top, dtype, np.arange(n_bins + 1) * size, True, tuple(left_out))


# ------------------------------------------------------------------------- event keys and bins


def _event_keys(conf, correct):
    """Events as sortable unsigned ints (float bits << 1) | correct; the sign bit of -0.0 is shifted out. One
    compiled pass (kernels.event_keys); `conf` may be a strided column.

    `correct`: bool, or float (the probability of being correct). Float events correct at 1 get the bit; those
    strictly between 0 and 1 do not, and are returned as (indices [P], float64 values [P]), else None. The pass
    counts the float values other than 0 and 1; only when there are some are they found and checked: anything else
    than a value in between (NaN, < 0, > 1) raises UserError."""
    keys = np.empty(conf.shape, dtype=_UINT_OF_FLOAT[conf.dtype])
    flags = correct.view(np.uint8) if correct.dtype == np.bool_ else correct
    if not kernels.event_keys(conf.view(keys.dtype), flags, keys):
        return keys, None
    index = np.flatnonzero((correct != 0) & (correct != 1))
    shares = correct[index].astype(np.float64)
    if not np.all((shares > 0) & (shares < 1)):
        raise UserError("correct must be bool, 0/1 or a probability in [0, 1]")
    return keys, (index, shares)


def _key_confidences(keys, dtype):
    """The confidences held in event keys (a new array)."""
    return np.right_shift(keys, 1).view(dtype)


def _ece_of_sorted_keys(keys, dtype, n_bins, strategy, paper_compatible, below=(0, 0), partial=None):
    bounds = _bin_bounds(keys, dtype, n_bins, strategy, paper_compatible)
    return _ece_of_bins(keys, dtype, bounds, paper_compatible, below, partial=partial)


def _ece_of_bins(keys, dtype, bounds, paper_compatible, below=(0, 0), partial=None):
    """ECE of the bins keys[bounds[b]:bounds[b + 1]]: bins in order, each holding its bin's events in any order.
    `below`, `partial`: see _share_ties."""
    starts, ends = _nonempty_bins(bounds)
    counts, conf_sums, hit_sums, lows, highs = _bin_sums(keys, dtype, starts, ends)
    hit_sums = _share_ties(keys, starts, ends, lows, highs, counts, hit_sums, below, partial)
    if paper_compatible:  # as sklearn's calibration_curve, then the reference's np.mean(np.abs(fop - mpv))
        return float(np.mean(np.abs(hit_sums / counts - conf_sums / counts)))
    return float(np.abs(hit_sums - conf_sums).sum() / keys.size)


def _nonempty_bins(bounds):
    """Start and end [bins] of each non-empty bin."""
    starts, ends = bounds[:-1], bounds[1:]
    nonempty = ends > starts
    return starts[nonempty], ends[nonempty]


def _share_ties(keys, starts, ends, lows, highs, counts, hit_sums, below=(0, 0), partial=None):
    """Correct events per bin [bins] (float64) after events of one confidence cut apart by bin bounds share their
    correctness, and fractional events add theirs.

    The sorted keys put a confidence's incorrect events before its correct ones, so a bound inside a run of equal
    confidences would hand the bin below its incorrect events and the bin above its correct ones. Instead each bin
    counts its events of that confidence as correct in the run's proportion: what the run gives on average over
    the orders of its events, the same for every order. A run met by no bound changes nothing, so this costs
    nothing unless a run crosses a bound; then one or two passes over the bins at the run's ends.

    `lows`, `highs`: each bin's smallest and largest key. `below` = (events, correct) outside the bins and beneath
    them with the first bin's lowest confidence (events a selection dropped), which share that run too. `partial`:
    None, or (confidence bits [P] ascending, float64 [P]) the summed correctness of events correct with a
    probability between 0 and 1, whose keys say incorrect (_partial_by_confidence): each sum goes to the bin
    holding its confidence, or, for a run that bins share, into the run's proportion."""
    conf_lo, conf_hi = lows >> 1, highs >> 1
    shared = conf_hi[:-1][conf_hi[:-1] == conf_lo[1:]]
    if below[0]:
        shared = np.append(shared, conf_lo[:1])
    sums = hit_sums
    if partial is not None:
        partial_conf, partial_sums = partial
        alone = ~np.isin(partial_conf, shared)
        in_bin = np.searchsorted(conf_hi, partial_conf[alone])  # the first bin reaching it: the one holding it
        sums = hit_sums + np.bincount(in_bin, weights=partial_sums[alone], minlength=hit_sums.size)
    if shared.size == 0:
        return sums
    shared_sums = sums.copy()
    for conf in np.unique(shared):
        in_run = np.flatnonzero((conf_lo <= conf) & (conf <= conf_hi))  # consecutive bins
        runs = np.array([_run_in_bin(keys[starts[b]:ends[b]], conf, lows[b], highs[b], counts[b], hit_sums[b])
                         for b in in_run], dtype=np.float64)
        events, correct = runs.sum(axis=0) + (below if below[0] and conf == conf_lo[0] else 0)
        if partial is not None:
            at = np.searchsorted(partial_conf, conf)
            correct += partial_sums[at] if at < partial_conf.size and partial_conf[at] == conf else 0.0
        shared_sums[in_run] += runs[:, 0] * (correct / events) - runs[:, 1]
    return shared_sums


def _run_in_bin(segment, conf, low, high, count, correct):
    """(events, correct events) of confidence bits `conf` in one bin: its keys `segment`, smallest `low`, largest
    `high`, `count` events of which `correct` correct. The run is the whole bin, its top or its bottom."""
    if low >> 1 == conf == high >> 1:
        return count, correct
    return _run_at_top(segment, high) if high >> 1 == conf else _run_at_bottom(segment, low)


def _run_at_top(segment, bound):
    """(events, correct events) in `segment` with the confidence of key `bound`; no key of the segment exceeds it."""
    incorrect_key = bound >> 1 << 1
    events = np.count_nonzero(segment >= incorrect_key)
    return events, (np.count_nonzero(segment > incorrect_key) if bound & 1 and events else 0)


def _run_at_bottom(segment, bound):
    """(events, correct events) in `segment` with the confidence of key `bound`; no key of the segment is below it."""
    events = np.count_nonzero(segment <= bound | 1)
    return events, (events - np.count_nonzero(segment <= bound) if not bound & 1 and events else events)


def _bin_bounds(keys, dtype, n_bins, strategy, paper_compatible):
    """Positions in the sorted keys where bins start, with keys.size appended: [n_bins + 1]."""
    n = keys.size
    if strategy == "quantile" and not paper_compatible:
        sizes = np.full(n_bins, n // n_bins)
        sizes[: n % n_bins] += 1
        return np.concatenate(([0], np.cumsum(sizes)))
    if not paper_compatible:  # ours, uniform: [b/n, (b+1)/n), conf == edge goes up
        starts = uniform_bin_starts(n_bins, dtype).view(_UINT_OF_FLOAT[dtype]) << 1  # smallest key of each bin
        return np.concatenate(([0], np.searchsorted(keys, starts, side="left"), [n]))
    if strategy == "quantile":
        inner_edges = _sklearn_percentile_edges(keys, dtype, n_bins)[1:-1]
    else:
        inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # sklearn: searchsorted(edges, conf, side="left") puts conf == edge in the lower bin
    inner = np.searchsorted(keys, _keys_at_most(inner_edges, dtype), side="right")
    return np.concatenate(([0], inner, [n]))


def uniform_bin_starts(n_bins, dtype):
    """The smallest confidence of float type `dtype` in each uniform bin but the first, [n_bins - 1] dtype: bin b
    holds [b/n, (b+1)/n) with b/n as np.linspace computes it in float64 (3/10 as 0.30000000000000004, so float64
    0.3 lies in bin 2 and float32 0.3, 0.30000001..., in bin 3); 1.0 falls in the last bin.

    ece(strategy="uniform") and the reliability diagrams (plots.reliability_bins) both bin by these, so they never
    put an event in different bins: the diagram's int(10 c) put float64 0.3, 0.6 and 0.7 one bin up, and its ECE
    of 1-decimal confidences read 0.00918 where ece's was 0.00870 (trial 3)."""
    dtype = np.dtype(dtype)
    edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    starts = edges.astype(dtype)
    return np.where(starts < edges, np.nextafter(starts, dtype.type(np.inf)), starts)


def _keys_at_most(edges, dtype):
    """Largest key whose confidence is <= each float64 edge: (bits(largest float <= edge) << 1) | 1."""
    f = edges.astype(dtype)
    f = np.where(f > edges, np.nextafter(f, dtype.type(-np.inf)), f)
    return (f.view(_UINT_OF_FLOAT[dtype]) << 1) | 1


def _sklearn_percentile_edges(sorted_keys, dtype, n_bins):
    """np.percentile(conf, np.linspace(0, 1, n_bins + 1) * 100), bit for bit, read off the sorted keys (only the
    ranks _percentile_ranks names are read: keys partitioned at those ranks do as well)."""
    previous, following, gamma = _percentile_ranks(sorted_keys.size, n_bins)
    a = _key_confidences(sorted_keys[previous], dtype)
    b = _key_confidences(sorted_keys[following], dtype)
    diff = b - a
    # numpy's _lerp, same operations in the same dtypes
    edges = a + diff * gamma
    upper = gamma >= 0.5
    edges[upper] = (b - diff * (1 - gamma))[upper]
    return edges


def _percentile_ranks(n, n_bins):
    """The order statistics np.percentile interpolates between, and the weights: as numpy's "linear" method."""
    q = np.true_divide(np.linspace(0, 1, n_bins + 1) * 100, 100)
    virtual = (n - 1) * q
    previous = np.floor(virtual)
    following = previous + 1
    at_top = virtual >= n - 1
    previous[at_top] = n - 1
    following[at_top] = n - 1
    previous = previous.astype(np.intp)
    following = following.astype(np.intp)
    return previous, following, virtual - previous


def _bin_sums(keys, dtype, starts, ends):
    """Per non-empty bin keys[starts[b]:ends[b]], its events in any order: event count, sum of confidences and
    correct events (float64 [bins]), smallest and largest key ([bins], keys.dtype).

    Each confidence sum is the exact sum rounded once to float64, so it cannot depend on the order of the events.
    One compiled pass (kernels.bin_stats) gives a vectorised float64 sum, which is that wherever every addition is
    exact (_summed_exactly: the usual case for float32 confidences); the other bins are summed again, exactly
    (_exact_sum)."""
    lows, highs = np.empty(starts.size, dtype=keys.dtype), np.empty(starts.size, dtype=keys.dtype)
    hit_sums, conf_sums = np.empty(starts.size), np.empty(starts.size)
    kernels.bin_stats(keys, starts, ends, lows, highs, hit_sums, conf_sums)
    counts = (ends - starts).astype(np.float64)
    for b in np.flatnonzero(~_summed_exactly(counts, lows, highs, dtype)):
        conf_sums[b] = _exact_sum(keys[starts[b]:ends[b]], dtype)
    return counts, conf_sums, hit_sums, lows, highs


def _summed_exactly(counts, lows, highs, dtype):
    """Whether each bin's float64 confidence sum is exact whatever the order and grouping of the additions [bins].

    A bin's confidences are all multiples of the spacing q of floats at its smallest one. While every partial sum
    stays below 2**53 q, each float64 addition is exact. count * largest bounds any partial sum; 2**52, not 2**53,
    leaves room for the rounding of that product. `lows`, `highs`: each bin's smallest and largest key."""
    info = np.finfo(dtype)
    exponents = (lows >> 1) >> info.nmant  # biased; 0 for subnormals and zero, whose spacing is that of exponent 1
    spacing = np.ldexp(1.0, np.maximum(exponents, 1).astype(np.int64) - (info.maxexp - 1) - info.nmant)
    return counts * _key_confidences(highs, dtype).astype(np.float64) < 2.0**52 * spacing


def _exact_sum(keys, dtype):
    """The sum of the confidences held in `keys`, exact, rounded once to float64.

    kernels.exponent_sums adds the significands (as integers, in two parts) per binary exponent, exactly; the
    parts times their powers of two, each split into halves that float64 holds exactly, go to math.fsum, which
    rounds their sum once."""
    info = np.finfo(dtype)
    high, low = np.zeros(1 << info.nexp, dtype=np.int64), np.zeros(1 << info.nexp, dtype=np.int64)
    kernels.exponent_sums(keys, info.nmant, high, low)
    exponents = np.flatnonzero(high | low)
    scale = np.ldexp(1.0, np.maximum(exponents, 1) - (info.maxexp - 1) - info.nmant)  # one unit of significand
    terms = [np.ldexp((part >> 31).astype(np.float64), 31 + shift) * scale for part, shift in
             ((high[exponents], 26), (low[exponents], 0))]
    terms += [np.ldexp((part & 0x7FFFFFFF).astype(np.float64), shift) * scale for part, shift in
              ((high[exponents], 26), (low[exponents], 0))]
    return math.fsum(np.concatenate(terms))


# ------------------------------------------------------------------ quantile bins by selection (no full sort)


def _quantile_ece_by_selection(keys, dtype, n_bins, paper_compatible, below=(0, 0), partial=None):
    """Quantile ECE with the keys partitioned at the bin bounds instead of sorted; the same float as sorting.

    Equal keys are identical events, so a bin's slice after partitioning holds exactly the events it holds after a
    full sort, only in another order, which _bin_sums's exact sums do not see."""
    n = keys.size
    if paper_compatible:  # the percentile edges need a few order statistics; bin bounds are counts below edges
        previous, following, _ = _percentile_ranks(n, n_bins)
        order_ranks = np.union1d(previous, following)
        _partition_at(keys, order_ranks)
        inner_edges = _sklearn_percentile_edges(keys, dtype, n_bins)[1:-1]
        inner = [_count_at_most(keys, order_ranks, limit) for limit in _keys_at_most(inner_edges, dtype)]
        bounds = np.array([0, *inner, n])
    else:
        bounds = _bin_bounds(keys, dtype, n_bins, "quantile", False)
    _partition_at(keys, bounds[1:-1])
    return _ece_of_bins(keys, dtype, bounds, paper_compatible, below, partial)


def _partition_at(keys, ranks):
    """Reorder keys in place so that each given rank holds the key a sort would put there, all smaller keys before
    it and all larger after. One np.partition per rank, each on the segment between ranks already placed: numpy's
    single-kth partition is vectorised, its multi-kth one is not."""
    ranks = np.unique(ranks)
    segments = [(0, keys.size, ranks[(ranks >= 0) & (ranks < keys.size)])]
    while segments:
        lo, hi, inside = segments.pop()
        if inside.size == 0:
            continue
        middle = inside[inside.size // 2]
        keys[lo:hi].partition(middle - lo)
        segments.append((lo, middle, inside[inside < middle]))
        segments.append((middle + 1, hi, inside[inside > middle]))


def _count_at_most(keys, ranks, limit):
    """How many keys are <= limit, for keys partitioned at the sorted ranks: only one segment between them is read."""
    placed = keys[ranks]  # non-decreasing, as the ranks
    i = np.searchsorted(placed, limit, side="right")  # keys at or before ranks[i - 1] are all <= limit
    lo = ranks[i - 1] + 1 if i > 0 else 0
    hi = ranks[i] if i < ranks.size else keys.size  # keys at or after ranks[i] are all > limit
    return lo + int(np.count_nonzero(keys[lo:hi] <= limit))


# ---------------------------------------------------------------------------------------- input checks


def _check_bins(n_bins, strategy):
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise UserError(f"n_bins must be a positive integer; got {n_bins!r}")
    if strategy not in STRATEGIES:
        raise UserError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")


def _as_events(confidence, correct, caller):
    """confidence as a float32/float64 [N] array in [0, 1], N >= 1, and correct as bool [N] or float [N] (the
    fractions are checked where they are read: _event_keys)."""
    conf = _as_confidence(confidence, "confidence")
    correct = _as_correct(correct, conf.shape[0], "correct")
    if conf.size == 0:
        raise UserError(f"{caller}: no events (confidence is empty)")
    return conf, correct


def checked_events(confidence, correct, n_bins, caller):
    """`ece`'s events, checked as it checks them, for callers that bin them themselves (plots.reliability_bins):
    confidence float32/float64 [N] in [0, 1] (clipped within PROB_TOLERANCE), correct bool [N] or float [N] in
    [0, 1]; n_bins a positive integer.

    Raises:
        UserError: naming the argument (and `caller` for no events), as `ece`.
    """
    _check_bins(n_bins, "uniform")
    conf, correct = _as_events(confidence, correct, caller)
    if correct.dtype.kind == "f" and not np.all((correct >= 0) & (correct <= 1)):
        raise UserError("correct must be bool, 0/1 or a probability in [0, 1]")
    return conf, correct


def _as_confidence(x, name):
    """A 1-D float32/float64 array of values in [0, 1] (float16 and integers are converted)."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise UserError(f"{name} must be 1-D; got shape {x.shape}")
    return _in_unit_interval(_as_float(x, name), name)


def _as_float(x, name):
    if x.dtype in _UINT_OF_FLOAT:
        return x
    if x.dtype.kind in "biu" or x.dtype == np.float16:
        return x.astype(np.float32 if x.dtype == np.float16 else np.float64)
    if x.dtype.kind == "f":
        return x.astype(np.float64)
    raise UserError(f"{name} must hold numbers; got dtype {x.dtype}")


def _in_unit_interval(x, name):
    """`x`, or a copy clipped onto [0, 1] when values stray from it by at most PROB_TOLERANCE (float rounding, as the
    predictions file check accepts); NaN and values further out are refused, naming the first row (or index)
    holding one. The common case costs one pass over the bits and no temporaries."""
    if _bits_at_most_one(x):
        return x
    lo, hi = x.min(), x.max()
    if np.isnan(lo) or np.isnan(hi):
        raise UserError(f"{name} contains NaN (first in {_first_row(np.isnan(x))})")
    if lo < -PROB_TOLERANCE or hi > 1 + PROB_TOLERANCE:
        where = _first_row((x < -PROB_TOLERANCE) | (x > 1 + PROB_TOLERANCE))
        raise UserError(f"{name} must lie in [0, 1] (within {PROB_TOLERANCE}); found values from {lo} to {hi} "
                        f"(first outside in {where})")
    return np.clip(x, 0, 1) if lo < 0 or hi > 1 else x  # else only -0.0 strayed: a zero like any other


def _first_row(bad, unit=None):
    """'row r' ('index i' for a 1-D array, unless `unit` names it): the first row of the bool array `bad` holding a
    True."""
    rows = bad.reshape(bad.shape[0], -1).any(axis=1)
    return f"{unit or ('row' if bad.ndim > 1 else 'index')} {int(np.argmax(rows))}"


def _bits_at_most_one(x):
    """Whether every value of the float array x is +0.0 .. 1.0, in one pass over the bits and no temporaries: NaN,
    infinities, negatives (-0.0 too) and values above 1 all have bit patterns above that of 1.0."""
    uint = _UINT_OF_FLOAT[x.dtype]
    return x.size == 0 or x.view(uint).max() <= np.array(1, dtype=x.dtype).view(uint)


def _as_correct(x, n, name):
    """A bool [n] array, or a float [n] one of probabilities of being correct (checked by _event_keys, which reads
    it anyway); 0/1 integers become bools."""
    x = np.asarray(x)
    if x.shape != (n,):
        raise UserError(f"{name} must have the same length as confidence ({n}); got shape {x.shape}")
    if x.dtype == np.bool_ or x.dtype.kind == "f":
        return x
    if x.dtype.kind not in "iu" or x.size and not np.all((x == 0) | (x == 1)):
        raise UserError(f"{name} must be bool, 0/1 or a probability in [0, 1]")
    return x.astype(np.bool_)


def _partial_by_confidence(keys, fractions):
    """The fractional events of `ece` summed per confidence: (confidence bits [P] ascending, as keys hold them;
    float64 [P] summed fractions), or None. Their keys say incorrect; _share_ties adds these sums."""
    if fractions is None:
        return None
    index, values = fractions
    conf_bits, inverse = np.unique(keys[index] >> 1, return_inverse=True)
    return conf_bits, np.bincount(inverse, weights=values, minlength=conf_bits.size)


def _as_probs(x, name):
    """A 2-D [N, C] float array of values in [0, 1]."""
    return _in_unit_interval(_as_2d_float(x, name), name)


def _as_2d_float(x, name):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise UserError(f"{name} must be [positions, classes] with at least one class; got shape {x.shape}")
    return _as_float(x, name)


def _as_distributions(x, name):
    """A 2-D [N, C] float array of distributions: values in [0, 1] and each row summing to 1 within PROB_TOLERANCE,
    as the predictions file check demands (the sums of the values as given, before clipping, as there). Only full
    distributions: top-k probabilities sum to less. One compiled pass over the rows (kernels.first_row_off_sum),
    after the range check, so that NaN and values outside [0, 1] are named as such."""
    raw = _as_2d_float(x, name)
    probs = _in_unit_interval(raw, name)
    row = kernels.first_row_off_sum(raw, PROB_TOLERANCE)
    if row >= 0:
        raise UserError(f"{name} row {row} sums to {raw[row].sum(dtype=np.float64):.6f}; each row must sum to 1 "
                        f"(within {PROB_TOLERANCE})")
    return probs


def _as_labels(gold, probs_shape, name):
    """Integer ids [N] within 0..C-1, N = probs_shape[0] (None: any length)."""
    gold = np.asarray(gold)
    n, c = probs_shape
    if gold.ndim != 1 or (n is not None and gold.shape[0] != n):
        raise UserError(f"{name} must be [positions] = [{n}]; got shape {gold.shape}")
    _check_integer(gold, name)
    if gold.size and (gold.min() < 0 or gold.max() >= c):
        raise UserError(f"{name} ids must lie in 0..{c - 1}; found {gold.min()}..{gold.max()} "
                        f"(first outside in {_first_row((gold < 0) | (gold >= c), 'row')})")
    return gold


def _check_integer(x, name):
    if x.dtype.kind not in "iu":
        raise UserError(f"{name} must hold integers; got dtype {x.dtype}")


def checked_type_events(type_conf, gold_type):
    """Entity-type events checked: type_conf as a float32/float64 [N, T] array in [0, 1] (clipped within
    PROB_TOLERANCE), gold_type [N] ints in -1..T-1 (-1 for O).

    Raises:
        UserError: naming the argument, and for values out of range the first row holding one.
    """
    type_conf = np.asarray(type_conf)
    if type_conf.ndim != 2:
        raise UserError(f"type_conf must be [positions, types]; got shape {type_conf.shape}")
    type_conf = _in_unit_interval(_as_float(type_conf, "type_conf"), "type_conf")
    gold_type = np.asarray(gold_type)
    if gold_type.shape != (type_conf.shape[0],):
        raise UserError(f"gold_type must be [positions] = [{type_conf.shape[0]}]; got shape {gold_type.shape}")
    _check_integer(gold_type, "gold_type")
    if gold_type.size and (gold_type.min() < -1 or gold_type.max() >= type_conf.shape[1]):
        raise UserError(f"gold_type must lie in -1..{type_conf.shape[1] - 1} (-1 for O); found "
                        f"{gold_type.min()}..{gold_type.max()} (first outside in "
                        f"{_first_row((gold_type < -1) | (gold_type >= type_conf.shape[1]), 'row')})")
    return type_conf, gold_type
