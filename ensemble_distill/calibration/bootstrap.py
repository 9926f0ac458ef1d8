"""Sentence-level bootstrap confidence intervals for any metric over per-position data.

Positions within a sentence are not independent (one ambiguous entity makes several tokens wrong), so the
unit of resampling is the sentence: each replicate draws S sentences with replacement and the metrics are
evaluated on the positions those sentences own. Metrics are computed by a function

    metrics_fn(positions: int [M], sentences: int [S]) -> {name: float}

that indexes its own arrays: per-position metrics use `positions`, corpus metrics built from per-sentence
statistics (span F1, BLEU) use `sentences`. One function computes all metrics of a replicate, so they can
share intermediate results.

Two intervals, from the replicates' percentiles q(p) (np.percentile, linear interpolation; replicates where a
metric is undefined are left out), with the estimate t (the metric on the data itself):

- **percentile** (the default): value t, interval [q(alpha/2), q(1 - alpha/2)]. Right for metrics that resampling
  does not bias (means, F1, BLEU, Brier scores).
- **bias-corrected** (the metrics named in `debiased`: ECE-type statistics): value 2t - q(1/2), interval
  [2t - q(1 - alpha/2), 2t - q(alpha/2)] (the bootstrap's basic interval), each clipped at 0. ECE is a sum of
  absolute gaps, biased upward: a resample duplicates sentences, its bins are noisier and its ECE larger than
  the data's, so the percentile interval sits above t (the NER demo printed B-ECE 6.66 [7.29, 9.54]). The basic
  interval turns the replicates' excess over t into a shift below t, as the bias of t over the true value; the
  value is t corrected by the same (median) shift. The value always lies in the interval (q(alpha/2) <= q(1/2)
  <= q(1 - alpha/2)), which neither the percentile nor the basic interval of t guarantees, nor does BCa when
  almost every replicate exceeds t. The uncorrected t is kept as `estimate`.

**Paired comparison** (`paired_bootstrap`): two systems evaluated on the same sentences, d = metric(A) - metric(B).
Each replicate draws the sentences once and evaluates both systems on them (the pairing: sentence difficulty
cancels), giving d*_b. With the same seed the draws are those of `bootstrap`, so each system's replicates are the
ones its own report used. p-value, two-sided, of "no difference", by the shift-to-null convention of
Berg-Kirkpatrick, Burkett & Klein (2012, "An empirical investigation of statistical significance in NLP"; the
paired bootstrap of Koehn 2004 with the replicates centred): under the null, d*_b - d is distributed as d is, so

    p = min(1, 2 (1 + #{b: sign(d) (d*_b - d) >= |d|}) / (1 + B)),

twice the one-sided tail beyond the observed d, over the B replicates where the metric is defined; d = 0 gives
p = 1. The +1 terms (Davison & Hinkley 1997, Bootstrap Methods, ch. 4) keep p a valid Monte Carlo p-value: never
0, at least 2 / (1 + B). Interval: for every metric the basic one, [2d - q(1 - alpha/2), 2d - q(alpha/2)] of the
d*_b, not clipped (a difference may be negative), because it is the interval this test inverts: p < alpha exactly
when it excludes 0, up to the +1 terms and percentile interpolation, so a table's mark and its interval never
disagree. Value: d, or 2d - q(1/2) for the metrics in `debiased` (two systems' ECE biases need not cancel).
Beside it, each system's own value on the same replicates (`value_a`, `value_b`): what `bootstrap` with the same
seed reports for it (for a bias-corrected metric its corrected value, not t; their difference is not the paired
value, since a median of differences is not the difference of the medians).
"""

import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..errors import UserError

MetricsFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class Interval:
    """A metric's (1 - alpha) bootstrap interval: `value` lies in [ci_low, ci_high]; `estimate` is the metric on the
    full data, which `value` equals unless the metric is bias-corrected (see the module docstring)."""

    value: float
    ci_low: float
    ci_high: float
    estimate: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], float], offsets, n_boot=1000, alpha=0.05, seed=0,
                 debiased=False):
    """Bootstrap Interval of one metric, metric_fn(positions, sentences) -> float; bias-corrected if `debiased`."""
    return bootstrap(lambda pos, sent: {"metric": metric_fn(pos, sent)}, offsets, n_boot, alpha, seed,
                     debiased=("metric",) if debiased else ())["metric"]


def bootstrap(metrics_fn: MetricsFn, offsets, n_boot=1000, alpha=0.05, seed=0, progress=True,
              debiased=()) -> dict[str, Interval]:
    """Value and interval of each metric metrics_fn returns, over `n_boot` sentence resamples.

    `offsets` int [S+1]: sentence s owns positions offsets[s]:offsets[s+1]. Draws: one
    np.random.default_rng(seed).integers(0, S, size=(n_boot, S)) array, row b the sentences of replicate b, so
    the same seed gives the same intervals. Metrics named in `debiased` (non-negative statistics biased upward on
    resamples, such as ECE) get the bias-corrected value and basic interval, the others the percentile interval
    (module docstring). Replicates where a metric is undefined (NaN) are left out of its percentiles; a metric
    undefined on every replicate gets NaN bounds.

    Raises:
        UserError: n_boot < 1, alpha outside (0, 1), offsets that are not sentence offsets (`as_offsets`).
    """
    _check_alpha(alpha)
    values, replicates = resample(metrics_fn, offsets, n_boot, seed, progress)
    lows, medians, highs = _percentiles(replicates, alpha)
    intervals = {}
    for name, low, median, high in zip(values, lows, medians, highs):
        t = float(values[name])
        if name in debiased:
            low, high = np.maximum(0.0, [2 * t - high, 2 * t - low])
        intervals[name] = Interval(_corrected(t, median, name in debiased), float(low), float(high), t)
    return intervals


def _corrected(t: float, median: float, debiased: bool) -> float:
    """A metric's reported value: t, or for a bias-corrected one 2t - q(1/2) clipped at 0 (module docstring)."""
    return float(np.maximum(0.0, 2 * t - median)) if debiased else float(t)  # NaN stays NaN


@dataclass(frozen=True)
class Difference(Interval):
    """A paired difference metric(A) - metric(B): `value` (bias-corrected for the `debiased` metrics, else equal to
    `estimate`, the difference on the full data), its (1 - alpha) basic interval and the two-sided p-value of
    "no difference" (module docstring); `value_a`, `value_b`: each system's own reported value (`bootstrap`'s with
    the same seed: bias-corrected for the `debiased` metrics)."""

    p_value: float
    value_a: float
    value_b: float


def paired_bootstrap(metrics_a: MetricsFn, metrics_b: MetricsFn, offsets_a, offsets_b=None, n_boot=1000, alpha=0.05,
                     seed=0, progress=True, debiased=()) -> dict[str, Difference]:
    """Paired sentence-bootstrap of metric(A) - metric(B) for each metric `metrics_a` returns.

    metrics_a, metrics_b: the two systems' metrics functions (positions, sentences) -> {name: float}, over the same
    S sentences; offsets_a int [S+1] the positions of A's sentences, offsets_b those of B's (default: the same;
    they differ when the systems tokenise a sentence differently). Both draw on np.random.default_rng(seed) as
    `bootstrap` does. A metric undefined on the data (NaN) gets NaN throughout; replicates where it is undefined
    are left out.

    Raises:
        UserError (a ValueError): offsets of different numbers of sentences, or that are not sentence offsets
            (`as_offsets`); metrics_b lacking a metric metrics_a returns; n_boot < 1, alpha outside (0, 1).
    """
    _check_alpha(alpha)
    offsets_a = as_offsets(offsets_a, "offsets_a")
    offsets_b = offsets_a if offsets_b is None else as_offsets(offsets_b, "offsets_b")
    if len(offsets_b) != len(offsets_a):
        raise UserError(f"the systems must cover the same sentences: {len(offsets_a) - 1} and {len(offsets_b) - 1}")

    def both(positions, sentences):  # A's metrics, then B's
        a, b = metrics_a(positions, sentences), metrics_b(sentence_positions(offsets_b, sentences), sentences)
        missing = a.keys() - b.keys()
        if missing:
            raise UserError(f"metrics_b does not return {sorted(missing)}")
        return {**{("a", name): a[name] for name in a}, **{("b", name): b[name] for name in a}}

    on_data, per_system = resample(both, offsets_a, n_boot, seed, progress)
    names = [name for system, name in on_data if system == "a"]
    on_data = np.array(list(on_data.values()), dtype=np.float64).reshape(2, len(names))  # [system, metric]
    per_system = per_system.reshape(n_boot, 2, len(names))
    corrected = np.isin(names, list(debiased))
    systems = [[_corrected(t, median, c) for t, median, c in
                zip(on_data[i], _percentiles(per_system[:, i], alpha)[1], corrected)] for i in (0, 1)]
    d, replicates = on_data[0] - on_data[1], per_system[:, 0] - per_system[:, 1]
    lows, medians, highs = _percentiles(replicates, alpha)
    value = np.where(corrected, 2 * d - medians, d)
    defined = ~np.isnan(replicates)
    with np.errstate(invalid="ignore"):  # NaN replicates compare False and are not counted
        beyond = (np.sign(d) * (replicates - d) >= np.abs(d)).sum(axis=0)
    p_value = np.minimum(1.0, 2 * (1 + beyond) / (1 + defined.sum(axis=0)))
    p_value[np.isnan(d) | ~defined.any(axis=0)] = np.nan
    return {name: Difference(float(v), float(2 * t - high), float(2 * t - low), float(t), float(p), a, b)
            for name, v, t, low, high, p, a, b in zip(names, value, d, lows, highs, p_value, *systems)}


def resample(metrics_fn: MetricsFn, offsets, n_boot, seed, progress=True) -> tuple[dict[str, float], np.ndarray]:
    """The metrics on the data, and float64 [n_boot, M] their values on each replicate (columns in the dict's
    order); replicate b is the sentences np.random.default_rng(seed).integers(0, S, size=(n_boot, S))[b].

    Raises:
        UserError: n_boot < 1; offsets that are not sentence offsets (`as_offsets`).
    """
    if n_boot < 1:
        raise UserError(f"n_boot must be at least 1, got {n_boot}")
    offsets = as_offsets(offsets, "offsets")
    n_sentences = len(offsets) - 1
    values = metrics_fn(np.arange(offsets[-1]), np.arange(n_sentences))

    draws = np.random.default_rng(seed).integers(0, n_sentences, size=(n_boot, n_sentences))
    replicates = np.empty((n_boot, len(values)))
    for b in tqdm(range(n_boot), desc="bootstrap", unit="resample", disable=not progress or None, leave=False):
        metrics = metrics_fn(sentence_positions(offsets, draws[b]), draws[b])
        replicates[b] = [metrics[name] for name in values]
    return values, replicates


def as_offsets(offsets, name: str) -> np.ndarray:
    """Sentence offsets as int64 [S+1]: integers from 0, non-decreasing, at least one sentence. The estimate on the
    data reads positions 0..offsets[-1] - 1, so a first offset above 0 would score positions no replicate can draw.

    Raises:
        UserError: naming `name` and, for a decrease, the first sentence whose end lies before its start.
    """
    array = np.asarray(offsets)
    if array.ndim != 1 or array.size < 2:
        raise UserError(f"{name} must be [sentences + 1] with at least one sentence; got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise UserError(f"{name} must hold integers; got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array[0] != 0:
        raise UserError(f"{name} must start at 0; got {array[0]}")
    decreasing = np.flatnonzero(np.diff(array) < 0)
    if decreasing.size:
        s = decreasing[0]
        raise UserError(f"{name} must be non-decreasing: sentence {s} ends at {array[s + 1]} before its start "
                        f"{array[s]}")
    return array


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie in (0, 1), got {alpha}")


def _percentiles(replicates: np.ndarray, alpha: float) -> np.ndarray:
    """[3, M]: each column's alpha/2, 1/2 and 1 - alpha/2 percentiles over its defined (non-NaN) replicates."""
    with warnings.catch_warnings():  # a metric undefined on every replicate: NaN bounds, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(replicates, [100 * alpha / 2, 50, 100 * (1 - alpha / 2)], axis=0)


def sentence_positions(offsets: np.ndarray, sentences: np.ndarray) -> np.ndarray:
    """The positions owned by `sentences` (in that order, repeats included), without a loop over sentences.

    Output position j of a sentence that starts at output index `out_start` is offsets[s] + (j - out_start):
    an arange over the output plus, repeated over each sentence's length, the shift offsets[s] - out_start.
    """
    starts = offsets[sentences]
    lengths = offsets[sentences + 1] - starts
    out_starts = np.cumsum(lengths) - lengths
    return np.arange(lengths.sum()) + np.repeat(starts - out_starts, lengths)
