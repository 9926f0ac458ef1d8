import numpy as np
import pytest

from ensemble_distill.calibration.bootstrap import bootstrap, bootstrap_ci, sentence_positions
from ensemble_distill.calibration.metrics import ece
from ensemble_distill.errors import UserError


def random_offsets(rng, n_sentences, max_len=8):
    lengths = rng.integers(0, max_len, size=n_sentences)  # empty sentences included
    return np.concatenate([[0], np.cumsum(lengths)])


def naive_positions(offsets, sentences):
    return np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in sentences]).astype(np.int64)


def test_sentence_positions_match_a_loop_over_sentences():
    rng = np.random.default_rng(0)
    offsets = random_offsets(rng, 40)
    sentences = rng.integers(0, 40, size=100)
    np.testing.assert_array_equal(sentence_positions(offsets, sentences), naive_positions(offsets, sentences))


def test_interval_is_the_percentile_interval_of_sentence_resamples():
    rng = np.random.default_rng(1)
    offsets = random_offsets(rng, 30)
    x = rng.normal(size=offsets[-1])
    result = bootstrap_ci(lambda pos, sent: x[pos].mean(), offsets, n_boot=200, alpha=0.1, seed=7)

    draws = np.random.default_rng(7).integers(0, 30, size=(200, 30))
    replicates = [x[naive_positions(offsets, d)].mean() for d in draws]
    assert result.value == x.mean()
    assert (result.ci_low, result.ci_high) == tuple(np.percentile(replicates, [5, 95]))


def test_intervals_of_a_mean_cover_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    covered = []
    for seed in range(60):
        offsets = random_offsets(rng, 100, max_len=10)
        x = rng.normal(loc=0.3, scale=1.0, size=offsets[-1])
        ci = bootstrap_ci(lambda pos, sent: x[pos].mean(), offsets, n_boot=200, seed=seed)
        covered.append(ci.ci_low < 0.3 < ci.ci_high)
    assert 0.85 <= np.mean(covered) <= 1.0  # Binomial(60, 0.95): below 0.85 has probability < 0.5%


def test_interval_width_of_a_mean_of_independent_positions():
    rng = np.random.default_rng(3)
    offsets = random_offsets(rng, 400, max_len=10)
    x = rng.normal(scale=1.0, size=offsets[-1])
    ci = bootstrap_ci(lambda pos, sent: x[pos].mean(), offsets, n_boot=300, seed=0)
    # Independent positions: about the normal interval's width, 2 * 1.96 * sd / sqrt(N).
    assert ci.ci_high - ci.ci_low == pytest.approx(2 * 1.96 / np.sqrt(len(x)), rel=0.25)


def test_sentence_level_metrics_see_the_drawn_sentences():
    rng = np.random.default_rng(3)
    offsets = random_offsets(rng, 50)
    per_sentence = rng.random(50)
    lengths = np.diff(offsets)
    intervals = bootstrap(
        lambda pos, sent: {"sentences": per_sentence[sent].sum(), "lengths": len(pos) - lengths[sent].sum()},
        offsets, n_boot=50, seed=0,
    )  # fmt: skip
    assert intervals["sentences"].value == pytest.approx(per_sentence.sum())
    assert intervals["lengths"].ci_low == intervals["lengths"].ci_high == 0.0


def test_permuting_sentences_changes_the_value_not_and_the_interval_little():
    rng = np.random.default_rng(4)
    offsets = random_offsets(rng, 300)
    x = rng.random(offsets[-1])
    order = rng.permutation(300)
    permuted = np.concatenate([x[offsets[s] : offsets[s + 1]] for s in order])
    permuted_offsets = np.concatenate([[0], np.cumsum(np.diff(offsets)[order])])
    a = bootstrap_ci(lambda pos, sent: x[pos].mean(), offsets, n_boot=400, seed=0)
    b = bootstrap_ci(lambda pos, sent: permuted[pos].mean(), permuted_offsets, n_boot=400, seed=0)
    assert a.value == pytest.approx(b.value, rel=1e-12)
    width = a.ci_high - a.ci_low
    assert abs(a.ci_low - b.ci_low) < 0.2 * width and abs(a.ci_high - b.ci_high) < 0.2 * width


def test_seeded():
    offsets = np.arange(0, 101, 5)
    x = np.random.default_rng(5).random(100)
    fn = lambda pos, sent: x[pos].mean()  # noqa: E731
    assert bootstrap_ci(fn, offsets, n_boot=50, seed=1) == bootstrap_ci(fn, offsets, n_boot=50, seed=1)
    assert bootstrap_ci(fn, offsets, n_boot=50, seed=1) != bootstrap_ci(fn, offsets, n_boot=50, seed=2)


def test_undefined_replicates_are_left_out():
    offsets = np.array([0, 1, 2])
    x = np.array([np.nan, 1.0])
    ci = bootstrap_ci(lambda pos, sent: x[pos].max(), offsets, n_boot=100, seed=0)
    assert np.isnan(ci.value) and ci.ci_low == ci.ci_high == 1.0


def test_bad_arguments():
    with pytest.raises(UserError, match="n_boot"):
        bootstrap_ci(lambda pos, sent: 0.0, [0, 1], n_boot=0)
    with pytest.raises(UserError, match="alpha"):
        bootstrap_ci(lambda pos, sent: 0.0, [0, 1], alpha=1.5)


def calibration_sample(seed, n=20000, power=1.0):
    """Confidences U(0.5, 1) and outcomes that are correct with probability confidence**power."""
    rng = np.random.default_rng(seed)
    offsets = random_offsets(rng, n // 4, max_len=8)
    conf = rng.uniform(0.5, 1.0, size=offsets[-1])
    correct = rng.random(offsets[-1]) < conf**power
    return offsets, conf, correct


def test_ece_interval_of_a_perfectly_calibrated_sample_is_near_zero():
    offsets, conf, correct = calibration_sample(0)
    ci = bootstrap_ci(lambda pos, sent: ece(conf[pos], correct[pos]), offsets, n_boot=100)
    assert 0 <= ci.ci_low < ci.ci_high < 0.02  # finite-sample ECE is biased up a little, never negative


def test_ece_interval_of_a_miscalibrated_sample_covers_its_true_error():
    # P(correct) = c^2 <= c: every bin's gap is mean(c - c^2), so ECE = E[c - c^2] = 1/6 for c ~ U(0.5, 1).
    offsets, conf, correct = calibration_sample(1, power=2.0)
    ci = bootstrap_ci(lambda pos, sent: ece(conf[pos], correct[pos]), offsets, n_boot=100)
    assert ci.ci_low < 1 / 6 < ci.ci_high and ci.ci_low > 0.1
