import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve as sklearn_pr_curve

from ensemble_distill.calibration import ece, plots
from ensemble_distill.calibration.plots import (
    EventRanking,
    pr_curve_plot,
    precision_recall_curve,
    reliability_bins,
    reliability_diagram,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_pr_curve_on_a_hand_example():
    # Events by descending confidence: 0.9 (pos 0, type 0) wrong, 0.6 (pos 1, type 0) gold,
    # 0.3 (pos 1, type 1) wrong, 0.1 (pos 0, type 1) gold. Two gold events in all.
    curve = precision_recall_curve(np.array([[0.9, 0.1], [0.6, 0.3]]), np.array([1, 0]))
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.6, 0.3, 0.1])
    np.testing.assert_allclose(curve.precision, [0, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(curve.recall, [0, 1 / 2, 1 / 2, 1])
    assert curve.average_precision == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)


def random_events(seed, n=500, types=4, ties=False):
    rng = np.random.default_rng(seed)
    conf = rng.random((n, types))
    if ties:
        conf = np.round(conf, 1)
    gold_type = np.where(rng.random(n) < 0.3, rng.integers(0, types, n), -1)
    return conf, gold_type


@pytest.mark.parametrize("ties", [False, True])
def test_pr_curve_matches_scikit_learn(ties):
    conf, gold_type = random_events(0, ties=ties)
    y = (gold_type[:, None] == np.arange(4)).ravel()
    curve = precision_recall_curve(conf, gold_type)
    precision, recall, thresholds = sklearn_pr_curve(y, conf.ravel())
    # scikit-learn lists thresholds ascending and appends the point (recall 0, precision 1).
    np.testing.assert_allclose(curve.thresholds, thresholds[::-1])
    np.testing.assert_allclose(curve.precision, precision[:-1][::-1])
    np.testing.assert_allclose(curve.recall, recall[:-1][::-1])
    assert curve.average_precision == pytest.approx(average_precision_score(y, conf.ravel()))


def test_shuffling_tied_events_leaves_the_pr_curve_unchanged():
    conf, gold_type = random_events(4, ties=True)  # 11 confidence levels over 2000 events
    curve = precision_recall_curve(conf, gold_type)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(conf))
        shuffled = precision_recall_curve(conf[perm], gold_type[perm])
        for field in ("precision", "recall", "thresholds"):
            np.testing.assert_array_equal(getattr(shuffled, field), getattr(curve, field))
        assert shuffled.average_precision == curve.average_precision


def test_weighted_curve_equals_the_curve_of_repeated_positions():
    conf, gold_type = random_events(1, ties=True)
    positions = np.random.default_rng(2).integers(0, 500, size=500)
    weighted = EventRanking(conf, gold_type).curve(np.bincount(positions, minlength=500))
    repeated = precision_recall_curve(conf[positions], gold_type[positions])
    for field in ("precision", "recall", "thresholds"):
        np.testing.assert_allclose(getattr(weighted, field), getattr(repeated, field))
    assert weighted.average_precision == pytest.approx(repeated.average_precision)


def test_reliability_bins_match_a_loop_over_bins():
    rng = np.random.default_rng(3)
    conf = np.concatenate([rng.random(300) * 0.5 + 0.5, [0.0, 1.0]])  # half the bins stay empty
    correct = rng.random(302) < conf
    counts, accuracy, mean_conf = reliability_bins(conf, correct, n_bins=10)
    for b in range(10):
        inside = (conf >= b / 10) & ((conf < (b + 1) / 10) | (b == 9))
        assert counts[b] == inside.sum()
        if inside.any():
            assert accuracy[b] == pytest.approx(correct[inside].mean())
            assert mean_conf[b] == pytest.approx(conf[inside].mean())
        else:
            assert np.isnan(accuracy[b])
    assert counts.sum() == 302


def test_plots_are_written_as_png(tmp_path):
    conf, gold_type = random_events(4)
    reliability_diagram(conf.max(axis=1), conf.argmax(axis=1) == gold_type, tmp_path / "rel.png")
    pr_curve_plot({"a": precision_recall_curve(conf, gold_type)}, tmp_path / "pr.png")
    for name in ("rel.png", "pr.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pr.png", "rel.png"]


def _brute_force_bins(confidence, n_bins):
    """Each confidence's bin [b/n, (b+1)/n) compared as exact rationals (1.0 in the last): float64 0.3 is
    0.2999999999999999889, below 3/10, so bin 2 of 10; float32 0.3 is 0.30000001192..., so bin 3."""
    return np.array([min(math.floor(Fraction(float(c)) * n_bins), n_bins - 1) for c in confidence])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_diagrams_bins_and_title_are_eces_uniform_ones_on_1_decimal_confidences(monkeypatch, dtype):
    """The diagram binned by int(10 c), which puts float64 0.3, 0.6 and 0.7 one bin up, while ece(uniform) did not:
    its title said 0.00918 where ece said 0.00870 (trial 3). Now both bin by metrics.uniform_bin_starts."""
    rng = np.random.default_rng(3)
    confidence = rng.integers(0, 11, 2000).astype(dtype) / dtype(10)  # 0.0, 0.1, ..., 1.0 as the dtype rounds them
    correct = rng.uniform(size=confidence.size) < confidence ** 1.5
    bins = _brute_force_bins(confidence, 10)
    counts, accuracy, mean_conf = reliability_bins(confidence, correct, 10)
    np.testing.assert_array_equal(counts, np.bincount(bins, minlength=10))
    expected = sum(abs(correct[bins == b].sum() - confidence[bins == b].astype(np.float64).sum())
                   for b in range(10)) / confidence.size
    drawn = np.nansum(counts * np.abs(accuracy - mean_conf)) / counts.sum()
    assert drawn == pytest.approx(expected, rel=1e-12)
    assert ece(confidence, correct, 10, strategy="uniform") == pytest.approx(expected, rel=1e-12)

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    reliability_diagram(confidence, correct, "unused.png")
    assert f"ECE of these 10 bins {100 * expected:.2f}%" in figures[0].axes[0].get_title()

