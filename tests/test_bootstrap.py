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


def independent_replicates(metric, offsets, n_boot, seed):
    """The documented draws (row b: the sentences of replicate b), each replicate computed by a loop."""
    draws = np.random.default_rng(seed).integers(0, len(offsets) - 1, size=(n_boot, len(offsets) - 1))
    return np.array([metric(naive_positions(offsets, d)) for d in draws])


def test_default_interval_is_the_2_5_and_97_5_percentiles_of_the_replicates():
    rng = np.random.default_rng(11)
    offsets = random_offsets(rng, 40)
    x = rng.normal(size=offsets[-1])
    result = bootstrap_ci(lambda pos, sent: x[pos].mean(), offsets, n_boot=300, seed=5)  # the default alpha
    replicates = independent_replicates(lambda pos: x[pos].mean(), offsets, 300, 5)
    assert (result.ci_low, result.ci_high) == tuple(np.percentile(replicates, [2.5, 97.5]))
    assert result.value == result.estimate == x.mean()


def test_debiased_interval_is_the_basic_interval_around_the_median_corrected_value():
    offsets, conf, correct = calibration_sample(3, n=4000, power=1.5)
    metric = lambda pos: ece(conf[pos], correct[pos])  # noqa: E731
    result = bootstrap_ci(lambda pos, sent: metric(pos), offsets, n_boot=200, seed=9, debiased=True)
    t = metric(np.arange(offsets[-1]))
    low, median, high = np.percentile(independent_replicates(metric, offsets, 200, 9), [2.5, 50, 97.5])
    assert result.estimate == t
    assert (result.value, result.ci_low, result.ci_high) == (2 * t - median, 2 * t - high, 2 * t - low)
    assert result.ci_low > 0  # this sample's ECE is far from 0: nothing was clipped


def test_debiased_values_are_clipped_at_zero():
    offsets, conf, correct = calibration_sample(0)  # calibrated: true ECE 0
    metric = lambda pos: ece(conf[pos], correct[pos])  # noqa: E731
    result = bootstrap_ci(lambda pos, sent: metric(pos), offsets, n_boot=100, seed=0, debiased=True)
    t = metric(np.arange(offsets[-1]))
    low, median, high = np.percentile(independent_replicates(metric, offsets, 100, 0), [2.5, 50, 97.5])
    assert 2 * t - high < 0  # the basic interval reaches below 0 ...
    assert (result.value, result.ci_low, result.ci_high) == (max(0, 2 * t - median), 0.0, 2 * t - low)  # ... cut


def test_an_ece_always_lies_in_its_bias_corrected_interval():
    missed_by_percentile = 0
    for seed in range(12):
        offsets, conf, correct = calibration_sample(seed, n=1000, power=[1.0, 1.3, 2.0][seed % 3])
        fn = lambda pos, sent: {"ece": ece(conf[pos], correct[pos]),  # noqa: E731
                                "ece_paper": ece(conf[pos], correct[pos], paper_compatible=True)}
        debiased = bootstrap(fn, offsets, n_boot=60, seed=seed, progress=False, debiased=("ece", "ece_paper"))
        percentile = bootstrap(fn, offsets, n_boot=60, seed=seed, progress=False)
        for name, ci in debiased.items():
            assert ci.ci_low <= ci.value <= ci.ci_high, (seed, name, ci)
            missed_by_percentile += not percentile[name].ci_low <= percentile[name].value <= percentile[name].ci_high
    assert missed_by_percentile > 0  # the percentile interval does miss the estimate on these samples


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


def test_a_metric_undefined_everywhere_has_nan_bounds_without_a_warning(recwarn):
    ci = bootstrap_ci(lambda pos, sent: float("nan"), [0, 1, 2], n_boot=10, debiased=True)
    assert np.isnan([ci.value, ci.ci_low, ci.ci_high, ci.estimate]).all() and not recwarn.list


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


def test_ece_interval_of_a_perfectly_calibrated_sample_reaches_zero():
    offsets, conf, correct = calibration_sample(0)
    ci = bootstrap_ci(lambda pos, sent: ece(conf[pos], correct[pos]), offsets, n_boot=100, debiased=True)
    # the estimate is biased up a little; the corrected value is below it, and the interval reaches 0
    assert ci.ci_low == 0 <= ci.value < ci.estimate and ci.ci_high < 0.01


def test_ece_interval_of_a_miscalibrated_sample_covers_its_true_error():
    # P(correct) = c^2 <= c: every bin's gap is mean(c - c^2), so ECE = E[c - c^2] = 1/6 for c ~ U(0.5, 1).
    offsets, conf, correct = calibration_sample(1, power=2.0)
    ci = bootstrap_ci(lambda pos, sent: ece(conf[pos], correct[pos]), offsets, n_boot=100, debiased=True)
    assert ci.ci_low < 1 / 6 < ci.ci_high and ci.ci_low > 0.1
