"""Temperature scaling (Guo et al., 2017): one scalar T fitted on held-out data, p = softmax(scores / T).

`scores` may be logits or log-probabilities. An ensemble has no logits, but softmax(log p / T) is a
renormalised p^(1/T), and since softmax ignores a per-row shift, log-softmax(z) and z give the same fit.
"""

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from ..errors import UserError

# Search range for T: far beyond anything a trained model needs, and bounded so the fit cannot run off.
LOG_T_BOUNDS = (np.log(1e-2), np.log(1e2))


def fit_temperature(scores, gold) -> float:
    """The T minimising the mean negative log-likelihood of `gold` int [N] under softmax(scores [N, C] / T)."""
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if scores.ndim != 2 or gold.shape != (len(scores),) or len(gold) == 0:
        raise UserError(f"temperature fit needs scores [N, C] and gold [N], got {scores.shape} and {gold.shape}")
    gold_scores = scores[np.arange(len(gold)), gold]
    if not np.isfinite(gold_scores).all():
        raise UserError("temperature fit: a gold label has zero probability (score -inf or NaN)")

    def nll(log_t):
        t = np.exp(log_t)
        return np.mean(logsumexp(scores / t, axis=1) - gold_scores / t)

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def apply_temperature(scores, temperature: float, log: bool = False) -> np.ndarray:
    """softmax(scores / T) (or its log, with `log=True`) over the last axis."""
    scaled = np.asarray(scores, dtype=np.float64) / temperature
    out = log_softmax(scaled, axis=-1)
    return out if log else np.exp(out)
