"""Sentence-level bootstrap confidence intervals for any metric over per-position data.

Positions within a sentence are not independent (one ambiguous entity makes several tokens wrong), so the
unit of resampling is the sentence: each replicate draws S sentences with replacement and the metrics are
evaluated on the positions those sentences own. Metrics are computed by a function

    metrics_fn(positions: int [M], sentences: int [S]) -> {name: float}

that indexes its own arrays: per-position metrics use `positions`, corpus metrics built from per-sentence
statistics (span F1, BLEU) use `sentences`. One function computes all metrics of a replicate, so they can
share intermediate results. Each interval is the percentile interval of that metric's replicates.
"""

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..errors import UserError

MetricsFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class Interval:
    """A metric's value on the full data and its (1 - alpha) bootstrap percentile interval."""

    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], float], offsets, n_boot=1000, alpha=0.05, seed=0):
    """Bootstrap Interval of one metric, metric_fn(positions, sentences) -> float."""
    return bootstrap(lambda pos, sent: {"metric": metric_fn(pos, sent)}, offsets, n_boot, alpha, seed)["metric"]


def bootstrap(metrics_fn: MetricsFn, offsets, n_boot=1000, alpha=0.05, seed=0, progress=True) -> dict[str, Interval]:
    """Value and percentile interval of each metric metrics_fn returns, over `n_boot` sentence resamples.

    `offsets` int [S+1]: sentence s owns positions offsets[s]:offsets[s+1]. All replicates' draws are made
    up front from `seed`: the same seed gives the same intervals. Replicates where a metric is undefined
    (NaN) are left out of its percentiles.
    """
    if n_boot < 1:
        raise UserError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie in (0, 1), got {alpha}")
    offsets = np.asarray(offsets, dtype=np.int64)
    n_sentences = len(offsets) - 1
    values = metrics_fn(np.arange(offsets[-1]), np.arange(n_sentences))

    draws = np.random.default_rng(seed).integers(0, n_sentences, size=(n_boot, n_sentences))
    replicates = np.empty((n_boot, len(values)))
    for b in tqdm(range(n_boot), desc="bootstrap", unit="resample", disable=not progress or None, leave=False):
        metrics = metrics_fn(sentence_positions(offsets, draws[b]), draws[b])
        replicates[b] = [metrics[name] for name in values]

    lows, highs = np.nanpercentile(replicates, 100 * np.array([alpha / 2, 1 - alpha / 2]), axis=0)
    return {name: Interval(float(values[name]), float(lo), float(hi)) for name, lo, hi in zip(values, lows, highs)}


def sentence_positions(offsets: np.ndarray, sentences: np.ndarray) -> np.ndarray:
    """The positions owned by `sentences` (in that order, repeats included), without a loop over sentences.

    Output position j of a sentence that starts at output index `out_start` is offsets[s] + (j - out_start):
    an arange over the output plus, repeated over each sentence's length, the shift offsets[s] - out_start.
    """
    starts = offsets[sentences]
    lengths = offsets[sentences + 1] - starts
    out_starts = np.cumsum(lengths) - lengths
    return np.arange(lengths.sum()) + np.repeat(starts - out_starts, lengths)
