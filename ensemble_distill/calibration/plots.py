"""Calibration figures (PNG, drawn with matplotlib's Agg canvas, no pyplot state): reliability diagrams and
precision-recall curves of NER entity confidences.

The PR curve follows the paper's appendix B: thresholding per-position marginal probabilities. Every
(position, entity type) pair is an event with confidence min(1, p(B-X) + p(I-X)); it is a true positive
when the position's gold type is X. Lowering the threshold sweeps out (recall, precision) points, recall
being over all positions with a gold entity type. The area is the average precision (step-wise, as in
scikit-learn), which unlike the trapezoid rule does not reward interpolating between operating points.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..io_utils import atomic_path
from .metrics import checked_events, checked_type_events, ece, uniform_bin_starts


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall at each distinct threshold (descending), and the average precision."""

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    average_precision: float


def precision_recall_curve(type_conf, gold_type) -> PRCurve:
    """PR curve of entity-type events: type_conf float [N, T] in [0, 1], gold_type int [N] in -1..T-1 (-1 for O).

    Raises:
        UserError: as EventRanking.
    """
    return EventRanking(type_conf, gold_type).curve()


class EventRanking:
    """Entity-type events sorted once by descending confidence, for the PR curve of any reweighting of positions.

    A bootstrap replicate is a multiset of positions, i.e. a count per position; with those counts as
    weights, the curve of the replicate needs cumulative sums in the stored order, not a new sort.
    """

    def __init__(self, type_conf, gold_type):
        """type_conf float [N, T] in [0, 1], gold_type int [N] in -1..T-1 (-1 for O).

        Raises:
            UserError: no events; shapes that do not match; NaN or confidences outside [0, 1] (beyond
                PROB_TOLERANCE); gold types out of range (a type index past T moved events out of the ranking's
                gold count and gave a wrong AP), naming the first bad row.
        """
        type_conf, gold_type = checked_type_events(type_conf, gold_type)
        if type_conf.size == 0:
            raise UserError(f"precision_recall_curve: no events (type_conf has shape {type_conf.shape})")
        scores = type_conf.ravel()
        order = np.argsort(-scores)
        self.n_positions = type_conf.shape[0]
        self.position = order // type_conf.shape[1]  # the position each sorted event belongs to
        self.is_gold = gold_type[self.position] == order % type_conf.shape[1]
        # One point per distinct threshold: the last event of each run of equal scores (so the order within
        # a run, which an unstable sort leaves arbitrary, does not matter).
        sorted_scores = scores[order]
        self.run_ends = np.flatnonzero(np.diff(sorted_scores, append=-np.inf))
        self.thresholds = sorted_scores[self.run_ends]

    def curve(self, position_weights=None) -> PRCurve:
        """The PR curve with each position counted `position_weights[n]` times (default once)."""
        if position_weights is None:
            weight = np.ones(len(self.position))
        else:
            weight = np.asarray(position_weights, dtype=np.float64)[self.position]
        predicted = np.cumsum(weight)[self.run_ends]
        true_pos = np.cumsum(weight * self.is_gold)[self.run_ends]
        kept = np.diff(predicted, prepend=0.0) > 0  # thresholds whose events all have weight 0 add no point
        predicted, true_pos = predicted[kept], true_pos[kept]
        n_gold = true_pos[-1] if len(true_pos) else 0.0
        precision = true_pos / predicted
        recall = true_pos / n_gold if n_gold else np.full(len(true_pos), np.nan)
        average_precision = float(np.sum(np.diff(recall, prepend=0.0) * precision))
        return PRCurve(precision, recall, self.thresholds[kept], average_precision)


def reliability_bins(confidence, correct, n_bins=10):
    """Per equal-width confidence bin [b/n, (b+1)/n) (1.0 in the last; the bins of ece(strategy="uniform"),
    metrics.uniform_bin_starts): event count int [n_bins], accuracy and mean confidence float [n_bins] (NaN for
    empty bins). confidence [N] in [0, 1]; correct [N] bool, 0/1 or the probability of being correct.

    Raises:
        UserError: as `ece` (no events, NaN or confidences outside [0, 1], a bad n_bins, ...).
    """
    confidence, correct = checked_events(confidence, correct, n_bins, "reliability_bins")
    bins = np.searchsorted(uniform_bin_starts(n_bins, confidence.dtype), confidence, side="right")
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / counts
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
    return counts, accuracy, mean_conf


def reliability_diagram(confidence, correct, path, n_bins=10, title="Reliability diagram") -> None:
    """Accuracy against confidence in equal-width bins, with the diagonal, and the events per bin beneath; the
    title gives the ECE of the bins drawn, ece(strategy="uniform") (Σ n_b |acc_b - conf_b| / N over the same
    bins), so that it is the picture's own number (the report's ECE-1 is bias-corrected and binned by its own
    rule).

    Raises:
        UserError: as `ece` (no events, NaN or confidences outside [0, 1], a bad n_bins, ...); nothing is written.
    """
    counts, accuracy, mean_conf = reliability_bins(confidence, correct, n_bins)
    drawn_ece = ece(confidence, correct, n_bins, strategy="uniform")
    left = np.arange(n_bins) / n_bins
    width = 1 / n_bins

    fig = _figure(figsize=(5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(left, np.nan_to_num(accuracy), width=width, align="edge", edgecolor="black", alpha=0.8, label="accuracy")
    top.plot(mean_conf, accuracy, "o", color="tab:red", markersize=4, label="mean confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{title}\nECE of these {n_bins} bins {100 * drawn_ece:.2f}%", fontsize="medium")
    top.legend(loc="upper left", fontsize="small", framealpha=0.8)
    bottom.bar(left, counts, width=width, align="edge", edgecolor="black", color="tab:gray")
    for x, n in zip(left + width / 2, counts):
        bottom.annotate(f"{n}", (x, n), ha="center", va="bottom", fontsize=7)
    bottom.set(xlabel="confidence", ylabel="events", yscale="symlog")
    fig.tight_layout()
    save_figure(fig, path)


def reliability_curves(panels: dict[str, dict[str, tuple]], path, n_bins=10) -> None:
    """Side-by-side panels (paper Figure 2), each comparing systems' reliability: per system, accuracy against
    mean confidence in equal-width bins (empty bins left out), with the diagonal. panels: {panel title: {system:
    (confidence [N], correct [N])}}.

    Raises:
        UserError: a system's events refused as by reliability_bins.
    """
    fig = _figure(figsize=(4.5 * len(panels), 4.5))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, systems) in zip(axes, panels.items()):
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for name, (confidence, correct) in systems.items():
            counts, accuracy, mean_conf = reliability_bins(confidence, correct, n_bins)
            ax.plot(mean_conf[counts > 0], accuracy[counts > 0], "o-", markersize=4, label=name)
        ax.set(xlabel="confidence", xlim=(0, 1), ylim=(0, 1), title=title)
        ax.legend(loc="upper left", fontsize="small")
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def pr_curve_plot(curves: dict[str, PRCurve], path, title="Precision-recall of entity-type confidences") -> None:
    """One or more PR curves (e.g. several models, as the paper's figure 3), each labelled with its area."""
    fig = _figure(figsize=(5.5, 5 + 0.25 * len(curves)), layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        ax.step(curve.recall, curve.precision, where="pre", label=f"{name} (AP {100 * curve.average_precision:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    fig.legend(loc="outside lower center", fontsize="small")  # below the axes: inside, it covered the curves
    save_figure(fig, path)


def _figure(**settings):
    """A matplotlib Figure on the Agg canvas. matplotlib is imported here, on first drawing: the report's metrics
    (EventRanking, reliability_bins) and the tables that mark its bias-corrected columns import this module
    without drawing, and matplotlib takes about half a second to load."""
    from matplotlib.figure import Figure

    return Figure(**settings)


def save_figure(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
