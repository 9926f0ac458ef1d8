import numpy as np
import pytest

from ensemble_distill.calibration.bootstrap import bootstrap, bootstrap_ci, paired_bootstrap, sentence_positions
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


# decreasing offsets gave numpy's 'repeats may not contain negative values' (trial 3)
@pytest.mark.parametrize("offsets, message", [
    ([0, 3, 2, 5], r"offsets must be non-decreasing: sentence 1 ends at 2 before its start 3"),
    ([0, 2, 4, 1], r"offsets must be non-decreasing: sentence 2 ends"),
    ([1, 2, 4], "offsets must start at 0; got 1"),
    ([0, 1.5, 3], "offsets must hold integers"),
    ([0], "at least one sentence"),
    ([[0, 1], [1, 2]], "at least one sentence"),
])
def test_offsets_that_are_not_sentence_offsets_are_refused(offsets, message):
    metric = lambda pos, sent: float(pos.size)  # noqa: E731
    with pytest.raises(UserError, match=message):
        bootstrap_ci(metric, offsets, n_boot=5)
    with pytest.raises(UserError, match=message.replace("offsets", "offsets_b", 1)):
        paired_bootstrap(lambda pos, sent: {"m": 0.0}, lambda pos, sent: {"m": 0.0}, [0, 1, 2, 3], offsets, n_boot=5)


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


# --- paired comparison ---------------------------------------------------------------------------------------------


def paired_sample(seed, n_sentences=80, shift=0.0):
    """Two systems' per-position scores on the same sentences: a shared sentence difficulty plus each system's own
    noise; B's scores are `shift` lower."""
    rng = np.random.default_rng(seed)
    offsets = random_offsets(rng, n_sentences, max_len=10)
    difficulty = np.repeat(rng.normal(size=n_sentences), np.diff(offsets))
    a = difficulty + 0.3 * rng.normal(size=offsets[-1])
    b = difficulty + 0.3 * rng.normal(size=offsets[-1]) - shift
    return offsets, a, b


def mean_of(x):
    return lambda pos, sent: {"mean": x[pos].mean()}


def test_paired_difference_equals_a_loop_over_the_documented_draws():
    offsets, a, b = paired_sample(0, shift=0.1)
    result = paired_bootstrap(mean_of(a), mean_of(b), offsets, n_boot=300, alpha=0.1, seed=4)["mean"]
    d = a.mean() - b.mean()
    draws = np.random.default_rng(4).integers(0, len(offsets) - 1, size=(300, len(offsets) - 1))
    replicates = np.array([a[naive_positions(offsets, s)].mean() - b[naive_positions(offsets, s)].mean()
                           for s in draws])
    low, high = np.percentile(replicates, [5, 95])
    beyond = sum(r - d >= d for r in replicates) if d > 0 else sum(r - d <= d for r in replicates)
    assert result.value == result.estimate == pytest.approx(d, abs=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((2 * d - high, 2 * d - low), abs=1e-12)
    assert result.p_value == pytest.approx(min(1, 2 * (1 + beyond) / 301))


def test_each_system_sees_the_draws_its_own_report_used():
    offsets, a, b = paired_sample(1)
    seed, n_boot = 3, 200
    single_a = bootstrap(mean_of(a), offsets, n_boot=n_boot, seed=seed, progress=False)["mean"]
    single_b = bootstrap(mean_of(b), offsets, n_boot=n_boot, seed=seed, progress=False)["mean"]
    zero = lambda pos, sent: {"mean": 0.0}  # noqa: E731
    against_zero = paired_bootstrap(mean_of(a), zero, offsets, n_boot=n_boot, seed=seed, progress=False)["mean"]
    # a - 0 has a's replicates: the basic interval is the percentile one reflected about the estimate
    assert against_zero.ci_low == pytest.approx(2 * single_a.value - single_a.ci_high)
    assert against_zero.ci_high == pytest.approx(2 * single_a.value - single_a.ci_low)
    pair = paired_bootstrap(mean_of(a), mean_of(b), offsets, n_boot=n_boot, seed=seed, progress=False)["mean"]
    assert pair.estimate == pytest.approx(single_a.value - single_b.value)


def test_pairing_removes_the_shared_sentence_difficulty():
    offsets, a, b = paired_sample(2, n_sentences=200, shift=0.05)
    pair = paired_bootstrap(mean_of(a), mean_of(b), offsets, n_boot=300, seed=0, progress=False)["mean"]
    single = [bootstrap_ci(lambda pos, sent, x=x: x[pos].mean(), offsets, n_boot=300, seed=0) for x in (a, b)]
    unpaired_width = np.hypot(*[ci.ci_high - ci.ci_low for ci in single])  # independent samples' width
    assert pair.ci_high - pair.ci_low < 0.3 * unpaired_width
    assert pair.ci_low > 0 and pair.p_value < 0.01  # 0.05 is far outside the paired interval's noise


def test_identical_systems_differ_by_nothing_with_p_one():
    offsets, a, _ = paired_sample(3)
    result = paired_bootstrap(mean_of(a), mean_of(a), offsets, n_boot=50, seed=0, progress=False)["mean"]
    assert (result.value, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_a_difference_no_replicate_reaches_back_to_zero_has_the_smallest_p():
    offsets, a, b = paired_sample(4, shift=1.0)
    result = paired_bootstrap(mean_of(a), mean_of(b), offsets, n_boot=99, seed=0, progress=False)["mean"]
    assert result.p_value == 2 / 100 and result.ci_low > 0.8
    reverse = paired_bootstrap(mean_of(b), mean_of(a), offsets, n_boot=99, seed=0, progress=False)["mean"]
    assert reverse.p_value == 2 / 100 and reverse.ci_high < -0.8 and reverse.estimate == -result.estimate


def test_p_value_below_alpha_exactly_when_the_interval_excludes_zero():
    agree = 0
    for seed in range(40):
        offsets, a, b = paired_sample(seed, n_sentences=60, shift=0.04 * (seed % 5))
        r = paired_bootstrap(mean_of(a), mean_of(b), offsets, n_boot=400, seed=seed, progress=False)["mean"]
        excludes = r.ci_low > 0 or r.ci_high < 0
        if abs(r.p_value - 0.05) > 0.01:  # away from the +1 terms' and interpolation's reach
            assert (r.p_value < 0.05) == excludes, (seed, r)
            agree += 1
    assert agree >= 30


def test_p_values_under_the_null_reject_about_alpha_of_the_time():
    rejected = []
    for seed in range(100):
        offsets, a, b = paired_sample(100 + seed, n_sentences=60)  # no true difference
        r = paired_bootstrap(mean_of(a), mean_of(b), offsets, n_boot=200, seed=seed, progress=False)["mean"]
        rejected.append(r.p_value < 0.05)
    assert np.mean(rejected) <= 0.12  # Binomial(100, 0.05): above 12 has probability < 0.5%


def test_debiased_difference_is_corrected_by_the_median_and_not_clipped():
    offsets, conf, correct = calibration_sample(5, n=2000, power=1.0)
    worse = np.clip(conf + 0.1, 0, 1)  # B over-confident: ECE(A) - ECE(B) < 0
    fn = lambda c: lambda pos, sent: {"ece": ece(c[pos], correct[pos])}  # noqa: E731
    result = paired_bootstrap(fn(conf), fn(worse), offsets, n_boot=100, seed=0, progress=False,
                              debiased=("ece",))["ece"]
    draws = np.random.default_rng(0).integers(0, len(offsets) - 1, size=(100, len(offsets) - 1))
    replicates = [ece(conf[p], correct[p]) - ece(worse[p], correct[p])
                  for p in (naive_positions(offsets, s) for s in draws)]
    d = ece(conf, correct) - ece(worse, correct)
    assert result.estimate == pytest.approx(d) and d < 0
    assert result.value == pytest.approx(2 * d - np.median(replicates))
    assert result.ci_high < 0 and result.ci_low == pytest.approx(2 * d - np.percentile(replicates, 97.5))


def test_systems_with_their_own_positions_per_sentence():
    # the same sentences tokenised differently: each system's metric reads its own positions
    rng = np.random.default_rng(6)
    offsets_a, offsets_b = random_offsets(rng, 30), random_offsets(rng, 30)
    assert (np.diff(offsets_a) != np.diff(offsets_b)).any()
    # number of positions received minus the number the system's own offsets give the drawn sentences
    surplus = lambda offsets: lambda pos, sent: {"n": len(pos) - np.diff(offsets)[sent].sum()}  # noqa: E731
    result = paired_bootstrap(surplus(offsets_a), surplus(offsets_b), offsets_a, offsets_b, n_boot=20, progress=False)
    assert result["n"].ci_low == result["n"].ci_high == 0


def test_undefined_replicates_are_left_out_and_a_metric_undefined_on_the_data_is_nan():
    offsets, a, b = paired_sample(7, n_sentences=6)
    # defined only on replicates that draw sentence 0: (5/6)^6 ~ 1/3 of them are left out
    fn = lambda x: lambda pos, sent: {"m": x[pos].mean() if 0 in sent else np.nan, "none": np.nan}  # noqa: E731
    result = paired_bootstrap(fn(a), fn(b), offsets, n_boot=200, seed=1, progress=False)
    draws = np.random.default_rng(1).integers(0, 6, size=(200, 6))
    replicates = np.array([a[naive_positions(offsets, s)].mean() - b[naive_positions(offsets, s)].mean()
                           for s in draws if 0 in s])
    d = a.mean() - b.mean()
    low, high = np.percentile(replicates, [2.5, 97.5])
    beyond = np.sum(np.sign(d) * (replicates - d) >= abs(d))
    assert 100 < len(replicates) < 180
    assert (result["m"].ci_low, result["m"].ci_high) == pytest.approx((2 * d - high, 2 * d - low))
    assert result["m"].p_value == pytest.approx(min(1, 2 * (1 + beyond) / (1 + len(replicates))))
    none = result["none"]
    assert np.isnan([none.value, none.ci_low, none.ci_high, none.estimate, none.p_value]).all()


def test_paired_misuse_is_refused():
    fn = lambda pos, sent: {"m": 0.0}  # noqa: E731
    with pytest.raises(ValueError, match="same sentences: 2 and 3"):
        paired_bootstrap(fn, fn, [0, 1, 2], [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"does not return \['m'\]"):
        paired_bootstrap(fn, lambda pos, sent: {"other": 0.0}, [0, 1, 2])
    with pytest.raises(UserError, match="alpha"):
        paired_bootstrap(fn, fn, [0, 1, 2], alpha=0)
    with pytest.raises(UserError, match="n_boot"):
        paired_bootstrap(fn, fn, [0, 1, 2], n_boot=0)
