"""Temperature scaling (Guo et al., 2017): one scalar T fitted on held-out data, p = softmax(scores / T).

`scores` may be logits or log-probabilities. An ensemble has no logits, but softmax(log p / T) is a
renormalised p^(1/T), and since softmax ignores a per-row shift, log-softmax(z) and z give the same fit.
"""

import warnings

import numpy as np
from scipy.optimize import brentq
from scipy.special import log_softmax, softmax

# Search range for T: far beyond anything a trained model needs, and bounded so the fit cannot run off.
T_BOUNDS = (1e-2, 1e2)


class TemperatureBoundWarning(UserWarning):
    """The NLL keeps falling towards a bound of T_BOUNDS: the data have no optimum inside the search range."""


def fit_temperature(scores, gold, what: str = "") -> float:
    """The T in T_BOUNDS minimising the mean negative log-likelihood of `gold` under softmax(scores / T).

    scores: float [N, C] logits or log-probabilities; -inf marks a zero probability (never the gold class's).
    gold:   int [N] class ids in [0, C).
    what:   what is fitted, for the warning (e.g. "member-1 on dev").
    With s = 1/T the NLL is convex in s, and its slope is mean(E_softmax(s z)[z - z_gold]). So the optimum is the
    zero of that slope, found on log T; when the slope keeps one sign over the whole range the NLL falls all the way
    to a bound, which is returned with a TemperatureBoundWarning that names it: T_BOUNDS[0] when the gold class is
    an argmax in every row or nearly (the sharper the better), T_BOUNDS[1] when sharpening never helps (gold scores
    at or below their rows' mean on average: an anti-calibrated or uninformative set). Scores constant within
    every row make the NLL independent of T: returns 1.
    Raises ValueError: wrong shapes, no rows, NaN or +inf scores, non-integer gold or ids outside [0, C), or a
    gold class with score -inf (zero probability at every T).
    """
    scores, gold = _checked(scores, gold)
    # z_j - z_gold, and 0 where z_j = -inf (weight 0 at every T). As differences, the slope of a row whose gold is
    # its argmax is <= 0 exactly, however the softmax rounds.
    gaps = np.where(np.isneginf(scores), 0.0, scores - scores[np.arange(len(gold)), gold][:, None])

    def slope(log_t):  # d NLL / d(1/T) at T = exp(log_t); increasing in 1/T
        return np.mean((softmax(scores / np.exp(log_t), axis=1) * gaps).sum(1))

    low, high = np.log(T_BOUNDS)
    sharpening, softening = slope(low) <= 0, slope(high) >= 0
    if sharpening and softening:
        return 1.0
    if sharpening:
        return _at_bound(what, 0, "the gold class is the most probable in every row or nearly, so the NLL falls as "
                                  "T -> 0")
    if softening:
        return _at_bound(what, 1, "the gold scores are on average no higher than their rows' mean, so the NLL falls "
                                  "as T grows")
    return float(np.exp(brentq(slope, low, high, xtol=1e-10)))


def at_bound(temperature: float) -> bool:
    """Whether a fitted T is a bound of T_BOUNDS (the fit warned: the data had no optimum inside the range)."""
    return temperature in T_BOUNDS


def temperature_label(temperature: float, digits: int = 2) -> str:
    """T for a table: 'T' to `digits` places, or '<= 0.01' / '>= 100' when the fit stopped at a bound."""
    if at_bound(temperature):
        return f"{'<=' if temperature == T_BOUNDS[0] else '>='} {temperature:g}"
    return f"{temperature:.{digits}f}"


def _at_bound(what: str, which: int, why: str) -> float:
    bound = T_BOUNDS[which]
    warnings.warn(f"temperature fit{' of ' + what if what else ''} stopped at the {('lower', 'upper')[which]} "
                  f"bound T = {bound:g}: {why}; "
                  "no finite temperature calibrates these scores", TemperatureBoundWarning, stacklevel=3)
    return bound


def _checked(scores, gold) -> tuple[np.ndarray, np.ndarray]:
    """scores as float64 [N, C] and gold as int64 [N], or a ValueError that says what is wrong."""
    scores, gold = np.asarray(scores), np.asarray(gold)
    if scores.ndim != 2 or gold.shape != scores.shape[:1] or len(gold) == 0 or scores.shape[1] == 0:
        raise ValueError(f"temperature fit needs scores [N, C] and gold [N] with N, C >= 1, "
                         f"got {scores.shape} and {gold.shape}")
    if scores.dtype.kind not in "iuf" or gold.dtype.kind not in "iu":
        raise ValueError(f"temperature fit needs real scores and integer gold ids, got {scores.dtype} and {gold.dtype}")
    scores, gold = scores.astype(np.float64), gold.astype(np.int64)
    bad = np.flatnonzero((gold < 0) | (gold >= scores.shape[1]))
    if len(bad):
        raise ValueError(f"temperature fit: gold id {gold[bad[0]]} (row {bad[0]}) is not a class in [0, "
                         f"{scores.shape[1]}); {len(bad)} rows have such ids")
    bad = np.flatnonzero(np.isnan(scores).any(1) | np.isposinf(scores).any(1))
    if len(bad):
        raise ValueError(f"temperature fit: row {bad[0]} has a NaN or +inf score ({len(bad)} such rows)")
    bad = np.flatnonzero(np.isneginf(scores[np.arange(len(gold)), gold]))
    if len(bad):
        raise ValueError(f"temperature fit: the gold class of row {bad[0]} has zero probability (score -inf; "
                         f"{len(bad)} such rows)")
    return scores, gold


def apply_temperature(scores, temperature: float, log: bool = False) -> np.ndarray:
    """softmax(scores / T) (or its log, with `log=True`) over the last axis, float64.

    Raises:
        ValueError: T is not a finite number > 0 (T = 0 divides by zero, T < 0 inverts the distribution).
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"apply_temperature: the temperature must be a finite number > 0, got {temperature!r}")
    scaled = np.asarray(scores, dtype=np.float64) / temperature
    out = log_softmax(scaled, axis=-1)
    return out if log else np.exp(out)


def log_floor(probs: np.ndarray) -> np.ndarray:
    """log p, with exact zeros (float32 underflows of a mean of softmaxes) at the smallest normal float32."""
    return np.log(np.maximum(probs, np.finfo(np.float32).tiny))


def temperature_scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the last axis, float32 (computed in float64): a renormalised p^(1/T), the
    temperature-scaled distribution of any system, a model or the mean of an ensemble's (evaluation.py)."""
    return apply_temperature(log_floor(probs), temperature).astype(np.float32)
