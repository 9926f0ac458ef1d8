import itertools
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

import ensemble_distill.calibration.metrics as metrics
from ensemble_distill.calibration import (
    balanced_calibration,
    brier,
    dense_topk_events,
    ece,
    entity_type_confidences,
    gold_entity_types,
    precision_recall_curve,
    reliability_diagram,
    stratified_brier,
    topk_ece,
    topk_events,
)
from ensemble_distill.errors import UserError

# six events used by several hand cases
CONF6 = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
HIT6 = np.array([1, 1, 0, 1, 0, 0], dtype=bool)


# ------------------------------------------------------------------------------- ECE, hand cases


def test_ece_quantile_hand_case():
    # sorted: .2(0) .3(0) | .6(1) .7(0) | .8(1) .9(1)
    # |0 - .25| = .25, |.5 - .65| = .15, |1 - .85| = .15; each bin weighs 2/6 -> .55 / 3
    assert ece(CONF6, HIT6, n_bins=3) == pytest.approx(0.55 / 3, abs=1e-12)


def test_ece_uniform_hand_case_differs_from_quantile():
    # [0, 1/3): .2(0) .3(0) -> 2/6 * .25;  [1/3, 2/3): .6(1) -> 1/6 * .4;  [2/3, 1]: .7 .8 .9, acc 2/3, conf .8
    # -> 3/6 * (.8 - 2/3).  Total .25/3 + .4/6 + .4/6 = 0.21666...
    assert ece(CONF6, HIT6, n_bins=3, strategy="uniform") == pytest.approx(0.65 / 3, abs=1e-12)


def test_ece_quantile_uneven_and_fewer_events_than_bins():
    # 7 events into 3 bins: array_split sizes 3, 2, 2
    conf = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    hit = np.array([0, 0, 1, 1, 0, 1, 1], dtype=bool)
    # {.1 .2 .3}: |1 - .6| = .4;  {.4 .5}: |1 - .9| = .1;  {.6 .7}: |2 - 1.3| = .7  ->  1.2 / 7
    assert ece(conf, hit, n_bins=3) == pytest.approx(1.2 / 7, abs=1e-12)
    # 2 events, 5 bins: sizes 1, 1, 0, 0, 0 -> (|1 - .3| + |0 - .6|) / 2 = .65
    assert ece([0.6, 0.3], [0, 1], n_bins=5) == pytest.approx(0.65, abs=1e-12)


def test_ece_uniform_edges_go_up_and_one_goes_in_last_bin():
    conf = np.array([0.5, 1.0, 0.25])
    hit = np.array([1, 1, 0], dtype=bool)
    # ours: [0, .5): .25(0) -> 1/3 * .25;  [.5, 1]: .5(1) 1.0(1), acc 1, conf .75 -> 2/3 * .25  => .25
    assert ece(conf, hit, n_bins=2, strategy="uniform") == pytest.approx(0.25, abs=1e-12)
    # sklearn puts .5 in the lower bin: {.25, .5}: |.5 - .375| = .125;  {1.0}: 0  => unweighted mean .0625
    assert ece(conf, hit, n_bins=2, strategy="uniform", paper_compatible=True) == pytest.approx(0.0625, abs=1e-12)


def test_paper_quantile_ties_merge_bins_and_average_unweighted():
    conf = np.array([0.5, 0.5, 0.9, 0.5])
    hit = np.array([1, 0, 1, 0], dtype=bool)
    # median edge = .5: {.5 .5 .5}: |1/3 - .5| = 1/6;  {.9}: |1 - .9| = .1  => mean (1/6 + .1) / 2
    assert ece(conf, hit, n_bins=2, paper_compatible=True) == pytest.approx((1 / 6 + 0.1) / 2, abs=1e-12)
    # ours: bins of 2; the three .5 events (1 correct) are cut 2 | 1 and each counts as 1/3 correct:
    # {.5 .5}: |2/3 - 1| = 1/3;  {.5 .9}: |1/3 + 1 - 1.4| = 1/15  => (1/3 + 1/15) / 4 = .1
    assert ece(conf, hit, n_bins=2) == pytest.approx(0.1, abs=1e-12)


# ----------------------------------------------------------------- ECE, independent implementations


def _tie_shares(conf, hit):
    """Each event's correctness replaced by the share of correct events among all events of its confidence."""
    _, tie, ties = np.unique(conf, return_inverse=True, return_counts=True)
    return np.bincount(tie, weights=hit) [tie] / ties[tie]


def _brute_force_ece(conf, hit, n_bins):
    share = _tie_shares(conf, hit)  # equal within a tie: the order of tied events cannot matter
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for group in np.array_split(order, n_bins):
        if group.size:
            total += abs(share[group].sum() - conf[group].astype(np.float64).sum())
    return total / conf.size


def _random_events(rng, n, dtype):
    conf = rng.random(n).astype(dtype)
    conf = np.where(rng.random(n) < 0.3, np.round(conf, 1), conf).astype(dtype)  # ties, and values on edges
    return conf, rng.random(n) < conf


def _brute_force_uniform_ece(conf, hit, n_bins):
    """[b/n, (b+1)/n) compared as real numbers (float64 holds both sides exactly), 1.0 in the last bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    in_bin = np.searchsorted(edges, conf.astype(np.float64), side="right")
    gap = np.bincount(in_bin, weights=hit, minlength=n_bins) - np.bincount(in_bin, weights=conf, minlength=n_bins)
    return np.abs(gap).sum() / conf.size


def _edge_events(rng, n, dtype):
    """Confidences piled on 0, 1, the bin edges k/20 (as the dtype rounds them) and a few tied values, with some
    spread between: runs of ties cross quantile bounds, sit on uniform edges, and small n leaves bins empty."""
    piles = np.concatenate([[0.0, 1.0, 0.5, 1 / 3], np.arange(1, 20) / 20]).astype(dtype)
    conf = np.where(rng.random(n) < 0.7, rng.choice(piles, n), rng.random(n).astype(dtype))
    return conf.astype(dtype), rng.random(n) < conf


EVENTS = [_random_events, _edge_events]


def _distributions_of(values, dtype):
    """Distributions [N, C + 1] that hold the given values [N, C] (non-negative, each row's sum at most 1) and, in
    a first column, the rest: the values keep their ties and edges, and the rows sum to 1 as the metrics demand."""
    rest = np.maximum(1 - values.sum(axis=1, dtype=np.float64), 0)
    return np.concatenate([rest[:, None], values], axis=1).astype(dtype)


def _capped(values):
    """values [N, C] with the entries from the first whose running row sum passes 1 on set to 0."""
    return np.where(np.cumsum(values.astype(np.float64), axis=1) <= 1, values, 0)


@pytest.mark.parametrize("events", EVENTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ece_matches_brute_force(dtype, events):
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 10, 11, 40, 257, 999, 5000):  # small n: empty bins
        conf, hit = events(rng, n, dtype)
        for n_bins in (1, 3, 4, 10, 20):
            assert ece(conf, hit, n_bins=n_bins) == pytest.approx(_brute_force_ece(conf, hit, n_bins), abs=1e-12)
            assert ece(conf, hit, n_bins, "uniform") == pytest.approx(_brute_force_uniform_ece(conf, hit, n_bins),
                                                                      abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_brier_types_and_balanced_match_brute_force_at_edges_and_ties(dtype):
    rng = np.random.default_rng(17)
    for n in (1, 2, 7, 40, 999, 6000):
        conf, _ = _edge_events(rng, n, dtype)
        # 9 labels, the 8 entity labels' probabilities from the piled values, gold ids drawn, every fourth position O
        probs = _distributions_of(_capped(np.where(rng.random((n, 8)) < 0.5, rng.choice(conf, (n, 8)), 0)), dtype)
        gold = rng.integers(0, 9, n)
        p = probs.astype(np.float64)
        expected = np.mean(np.sum((p - np.eye(9)[gold]) ** 2, axis=1))
        assert brier(probs, gold) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
        type_conf, types = entity_type_confidences(probs, labels)
        by_type = {name: [labels.index(f"B-{name}"), labels.index(f"I-{name}")] for name in types}
        np.testing.assert_array_equal(type_conf, np.stack(
            [np.minimum(probs[:, b] + probs[:, i], 1) for b, i in by_type.values()], axis=1))
        gold_type = gold_entity_types(np.where(np.arange(n) % 4 == 0, 0, gold), labels, types)
        is_gold = gold_type[:, None] == np.arange(len(types))
        t = type_conf.astype(np.float64)
        bs_plus, bs_minus = stratified_brier(type_conf, gold_type)
        if is_gold.any():
            assert bs_plus == pytest.approx(np.mean((1 - t[is_gold]) ** 2), rel=1e-12, abs=1e-15)
            result = balanced_calibration(type_conf, gold_type, n_bins=3)
            assert (result.b_ece, result.b_bs) == pytest.approx(_brute_force_balanced(type_conf, gold_type, 3),
                                                                 abs=1e-12)
        assert bs_minus == pytest.approx(np.mean(t[~is_gold] ** 2), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("events", EVENTS)
def test_paper_compatible_ece_matches_sklearn_calibration_curve(strategy, dtype, events):
    rng = np.random.default_rng(2)
    for n in (1, 2, 5, 11, 100, 1001, 20000):
        conf, hit = events(rng, n, dtype)
        for n_bins in (3, 10, 20):
            fop, mpv = calibration_curve(hit, conf, n_bins=n_bins, strategy=strategy)
            expected = np.mean(np.abs(fop - mpv))
            assert ece(conf, hit, n_bins, strategy, paper_compatible=True) == pytest.approx(expected, abs=1e-12)


def test_percentile_edges_are_numpys_bit_for_bit():
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 1000, 12345):
        for dtype in (np.float32, np.float64):
            conf = np.sort(rng.random(n).astype(dtype))
            keys, _ = metrics._event_keys(conf, np.zeros(n, dtype=bool))
            for n_bins in (1, 10, 20):
                expected = np.percentile(conf, np.linspace(0, 1, n_bins + 1) * 100)
                np.testing.assert_array_equal(metrics._sklearn_percentile_edges(keys, conf.dtype, n_bins), expected)


# ------------------------------------------------------------------------------------ ECE, properties


def test_calibrated_sample_has_small_ece_and_miscalibrated_large():
    rng = np.random.default_rng(4)
    conf = rng.random(200_000).astype(np.float32)
    calibrated = rng.random(conf.size) < conf
    overconfident = rng.random(conf.size) < conf**2
    assert ece(conf, calibrated) < 0.01
    assert ece(conf, overconfident) > 0.1  # E[c - c^2] = 1/6


def test_permuting_events_changes_nothing():
    rng = np.random.default_rng(5)
    conf, hit = _random_events(rng, 3001, np.float32)
    perm = rng.permutation(conf.size)
    for kwargs in ({}, {"strategy": "uniform"}, {"paper_compatible": True}, {"n_bins": 7}):
        assert ece(conf[perm], hit[perm], **kwargs) == ece(conf, hit, **kwargs)


def test_ece_accepts_float_and_int_inputs_alike():
    as_bool = ece(CONF6, HIT6, n_bins=3)
    assert ece(CONF6.astype(np.float32), HIT6.astype(np.int64), n_bins=3) == pytest.approx(as_bool, abs=1e-7)
    assert ece(list(CONF6), list(HIT6.astype(float)), n_bins=3) == as_bool
    assert ece(-np.zeros(2), [0, 0], n_bins=1) == 0.0  # -0.0 is a valid confidence of zero


# --------------------------------------------------- quantile ECE by selection equals the full sort, bit for bit


def _full_sort_ece(conf, hit, n_bins, paper_compatible):
    keys, _ = metrics._event_keys(conf, hit)
    keys.sort()
    return metrics._ece_of_sorted_keys(keys, conf.dtype, n_bins, "quantile", paper_compatible)


def _adversarial_events(rng):
    """(name, confidence float32, correct): ties, tie runs across bin bounds, tiny counts, zeros and subnormals."""
    f32 = lambda x: np.asarray(x, dtype=np.float32)
    runs = f32(np.repeat([0.1, 0.5, 0.9], [353, 300, 348]))  # bounds at multiples of ~50 and ~100 fall inside runs
    tiny = f32(np.concatenate([rng.random(500), 1e-30 * rng.random(300), np.zeros(50), [1e-45, 1.0]]))
    cases = [
        ("three values", f32(rng.choice([0.2, 0.6, 0.95], 2000))),
        ("all equal", f32(np.full(1000, 0.7))),
        ("all zero", f32(np.zeros(64))),
        ("one event", f32([0.4])),
        ("fewer than bins", f32(rng.random(7))),
        ("just above bins", f32(rng.random(21))),
        ("tie runs", runs),
        ("tiny and zero", tiny),
        ("rounded", f32(np.round(rng.random(5000), 2))),
    ]
    return [(name, rng.permutation(conf), rng.random(conf.size) < 0.5) for name, conf in cases]


@pytest.mark.parametrize("paper_compatible", [False, True])
def test_quantile_ece_by_selection_equals_full_sort_bit_for_bit(paper_compatible):
    rng = np.random.default_rng(11)
    for name, conf, hit in _adversarial_events(rng):
        for n_bins in (1, 2, 3, 10, 20):
            got = ece(conf, hit, n_bins=n_bins, paper_compatible=paper_compatible)
            assert got == _full_sort_ece(conf, hit, n_bins, paper_compatible), (name, n_bins)


def test_event_keys_in_blocks_are_shifted_bits_and_correct(monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 64)
    rng = np.random.default_rng(16)
    for dtype, uint in ((np.float32, np.uint32), (np.float64, np.uint64)):
        conf = rng.random(1000).astype(dtype)
        conf[:10] = -0.0  # the sign bit is shifted out
        hit = rng.random(1000) < 0.5
        expected = (np.abs(conf).view(uint) << 1) | hit
        np.testing.assert_array_equal(metrics._event_keys(conf, hit)[0], expected)
        np.testing.assert_array_equal(metrics._event_keys(conf[::3], hit[::3])[0], expected[::3])  # strided columns
        # float correctness: the bit where it is 1, and the fractions beside, at their indices across the blocks
        shares = np.where(rng.random(1000) < 0.2, rng.choice([1 / 3, 0.5], 1000), hit)
        keys, (index, values) = metrics._event_keys(conf, shares)
        np.testing.assert_array_equal(keys, (np.abs(conf).view(uint) << 1) | (shares == 1))
        np.testing.assert_array_equal(index, np.flatnonzero((shares > 0) & (shares < 1)))
        np.testing.assert_array_equal(values, shares[index])


def test_bins_whose_sum_depends_on_order_are_summed_exactly():
    rng = np.random.default_rng(12)
    conf = np.concatenate([rng.random(3000), 1e-15 * rng.random(3000)]).astype(np.float32)
    conf = rng.permutation(conf)
    conf[[0, np.argmax(conf)]] = conf[[np.argmax(conf), 0]]  # a large confidence first: not a bin's smallest
    hit = rng.random(conf.size) < conf
    # in one bin, the order of summation changes the float64 sum: unsorted, the result would differ
    assert np.sum(conf, dtype=np.float64) != np.sum(np.sort(conf), dtype=np.float64)
    assert ece(conf, hit, n_bins=1) == _full_sort_ece(conf, hit, 1, False)
    assert ece(conf, hit, n_bins=1, paper_compatible=True) == _full_sort_ece(conf, hit, 1, True)
    assert ece(conf, hit, n_bins=1) == abs(math.fsum(conf.astype(np.float64)) - hit.sum()) / conf.size


def _bins_of_every_kind(rng, dtype):
    """Confidences [N] of dtype and bin bounds [bins + 1] over them: bins whose float64 sum is exact in any order and
    bins where it is not (tiny values beside large ones, zeros, subnormals), one event, equal values, 0 and 1."""
    tiny = np.finfo(dtype).smallest_subnormal
    bins = [
        rng.uniform(0.5, 1.0, 4000),  # one binade: exact as float32
        np.concatenate([rng.random(3000), 1e-15 * rng.random(3000), np.zeros(5), [tiny, 3 * tiny]]),
        [0.3],
        np.full(777, 0.1),
        [0.0, 0.0, 1.0],
        np.round(rng.random(2000), 3),
        rng.random(5) ** 40,
    ]
    conf = np.concatenate([rng.permutation(np.asarray(b, dtype=dtype)) for b in bins])
    return conf, np.cumsum([0] + [len(b) for b in bins])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bin_sums_are_the_exact_sums_rounded_once(dtype):
    # math.fsum rounds the exact sum once: every bin's confidence sum must be that float, whatever the order
    rng = np.random.default_rng(13)
    conf, bounds = _bins_of_every_kind(rng, dtype)
    hit = rng.random(conf.size) < 0.5
    keys, _ = metrics._event_keys(conf, hit)
    starts, ends = bounds[:-1], bounds[1:]
    counts, conf_sums, hit_sums, lows, highs = metrics._bin_sums(keys, conf.dtype, starts, ends)
    for b, (lo, hi) in enumerate(zip(starts, ends)):
        assert conf_sums[b] == math.fsum(conf[lo:hi].astype(np.float64)), b
        assert (counts[b], hit_sums[b]) == (hi - lo, hit[lo:hi].sum())
        assert (lows[b], highs[b]) == (keys[lo:hi].min(), keys[lo:hi].max())
    exact = metrics._summed_exactly(counts, lows, highs, conf.dtype)
    assert list(exact[:2]) == ([True, False] if dtype == np.float32 else [False, False])
    assert metrics._exact_sum(keys, conf.dtype) == math.fsum(conf.astype(np.float64))


def test_partition_at_places_the_order_statistics_a_sort_would():
    rng = np.random.default_rng(14)
    keys = rng.integers(0, 50, 3000).astype(np.uint32)  # many ties
    ranks = np.array([0, 1, 999, 1000, 1500, 2998, 2999])
    metrics._partition_at(keys, ranks)
    expected = np.sort(keys)
    np.testing.assert_array_equal(keys[ranks], expected[ranks])
    for r in ranks:
        assert keys[:r].max(initial=0) <= keys[r] <= keys[r:].min()
    for limit in (0, 7, 25, 49, 60):
        assert metrics._count_at_most(keys, ranks, limit) == np.searchsorted(expected, limit, side="right")


# ------------------------------------------------------------------------------------------- ECE-k


def test_topk_ece_hand_case():
    probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.2, 0.1]])
    gold = np.array([1, 2])
    # events: (.5, 0) (.3, 1) (.6, 0) (.2, 1); sorted .2(1) .3(1) | .5(0) .6(0)
    # |2 - .5| + |0 - 1.1| = 2.6, over 4 events = .65
    assert topk_ece(probs, gold, k=2, n_bins=2) == pytest.approx(0.65, abs=1e-12)


def test_topk_events_pools_rows():
    conf, hit = topk_events([[0.5, 0.3], [0.6, 0.2]], [0.3, 0.2])  # the gold class: second in each row
    np.testing.assert_array_equal(conf, [0.5, 0.3, 0.6, 0.2])
    np.testing.assert_array_equal(hit, [False, True, False, True])
    assert hit.dtype == bool  # no tie: no fractions
    conf, hit = topk_events([[0.5, 0.3], [0.6, 0.2]], [0.05, 0.6], k=1)  # gold outside the top k, then first
    np.testing.assert_array_equal(conf, [0.5, 0.6])
    np.testing.assert_array_equal(hit, [False, True])


def test_ece1_is_top_label_ece():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.full(12, 0.3), size=2000)
    gold = np.array([rng.choice(12, p=p) for p in probs])
    top_label = ece(probs.max(axis=1), probs.argmax(axis=1) == gold)
    assert topk_ece(probs, gold, k=1) == pytest.approx(top_label, abs=1e-12)


def _reference_top_n_ece(labels, probs, top_n, bins=10):
    """The published script's top_n_ece, per position, on probabilities instead of log-probabilities."""
    top_hits = np.zeros((len(labels), top_n))
    top_probs = np.zeros_like(top_hits)
    for i, label in enumerate(labels):
        ind = np.argpartition(probs[i, :], -top_n)[-top_n:]
        top_hits[i, :] = np.where(ind == label, 1.0, 0.0)
        top_probs[i, :] = probs[i, :][ind]
    fop, mpv = calibration_curve(top_hits.flatten(), top_probs.flatten(), strategy="quantile", n_bins=bins)
    return np.mean(np.abs(fop - mpv))


def test_paper_topk_ece_matches_reference_script(monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 50 * 40)  # several chunks of rows
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(40, 0.2), size=700).astype(np.float32)
    gold = rng.integers(0, 40, size=700)
    for k in (1, 5):
        expected = _reference_top_n_ece(gold, probs, k)
        assert topk_ece(probs, gold, k, paper_compatible=True) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------- Brier


def test_brier_hand_case():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    # (.3^2 + .2^2 + .1^2) = .14;  (.2^2 + .5^2 + .7^2) = .78;  mean .46
    assert brier(probs, [0, 2]) == pytest.approx(0.46, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_brier_and_stratified_brier_over_several_blocks_match_a_direct_computation(monkeypatch, dtype):
    monkeypatch.setattr(metrics, "_SQUARES_BLOCK", 7 * 50)  # blocks of 50 rows (7 classes), the last one shorter
    rng = np.random.default_rng(15)
    gold = rng.integers(0, 7, size=1234)
    gold_type = np.where(rng.random(1234) < 0.3, rng.integers(0, 7, 1234), -1)
    probs = rng.dirichlet(np.full(7, 0.3), size=1234).astype(dtype)
    for probs in (probs, _distributions_of(np.floor(probs[:, 1:] * 10) / 10, dtype)):  # many equal values
        p = probs.astype(np.float64)
        expected = np.mean(np.sum((p - np.eye(7)[gold]) ** 2, axis=1))
        assert brier(probs, gold) == pytest.approx(expected, rel=1e-12)
        is_gold = gold_type[:, None] == np.arange(7)
        bs_plus, bs_minus = stratified_brier(probs, gold_type)
        assert bs_plus == pytest.approx(np.mean((1 - p[is_gold]) ** 2), rel=1e-12)
        assert bs_minus == pytest.approx(np.mean(p[~is_gold] ** 2), rel=1e-12)


def test_two_class_brier_is_twice_sklearns_binary_brier():
    rng = np.random.default_rng(8)
    p1 = rng.random(1000)
    gold = (rng.random(1000) < p1).astype(int)
    probs = np.stack([1 - p1, p1], axis=1)
    # (p1 - y)^2 + (p0 - (1 - y))^2 = 2 (p1 - y)^2
    assert brier(probs, gold) == pytest.approx(2 * brier_score_loss(gold, p1), abs=1e-12)


# ------------------------------------------------------------------------------------- entity types

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_entity_type_confidences_adds_b_and_i_and_clips_at_one():
    probs = np.array([
        [0.1, 0.3, 0.2, 0.25, 0.15],
        [0.0, 0.6, 0.4005, 0.0, 0.0],  # a row sum within PROB_TOLERANCE of 1: PER would be 1.0005
    ], dtype=np.float32)
    conf, types = entity_type_confidences(probs, LABELS)
    assert types == ["LOC", "PER"]
    np.testing.assert_allclose(conf, [[0.4, 0.5], [0.0, 1.0]], atol=1e-7)
    assert conf.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_entity_type_confidences_are_the_float_sum_of_b_and_i_exactly(dtype):
    # the 0/1 matrix product must round each entry once, as p(B-X) + p(I-X) does: zeros, subnormals, ties, a type
    # with a B- label only, labels in no particular order
    rng = np.random.default_rng(10)
    labels = ["I-LOC", "O", "B-PER", "B-MISC", "B-LOC", "I-PER"]
    probs = rng.dirichlet(np.full(6, 0.3), size=3000).astype(dtype)
    probs[:500] = np.floor(probs[:500] * 10) / 10
    probs[500:600, 0] = 0
    probs[600:700, 4] = np.finfo(dtype).smallest_subnormal * rng.integers(0, 5, 100)
    probs[:700, 1] += 1 - probs[:700].sum(axis=1, dtype=np.float64)  # the rest to O: rows sum to 1
    conf, types = entity_type_confidences(probs, labels)
    assert types == ["LOC", "MISC", "PER"] and conf.dtype == dtype
    expected = np.stack([probs[:, 4] + probs[:, 0], probs[:, 3], probs[:, 2] + probs[:, 5]], axis=1)
    np.testing.assert_array_equal(conf, np.minimum(expected, 1))


def test_gold_entity_types():
    types = ["LOC", "PER"]
    gold_type = gold_entity_types([0, 1, 2, 3, 4, 0], LABELS, types)
    np.testing.assert_array_equal(gold_type, [-1, 1, 1, 0, 0, -1])
    assert gold_type.dtype == np.int8  # a small index: the per-type passes read 1 byte a position, not 8


def test_stratified_brier_hand_case():
    type_conf = np.array([[0.9, 0.1], [0.2, 0.3], [0.0, 0.6]])
    gold_type = np.array([0, -1, 1])
    # positives (0,0) .9 -> .01, (2,1) .6 -> .16: BS+ = .085
    # negatives .1, .2, .3, .0 -> .01 + .04 + .09 + 0 = .14 over 4: BS- = .035
    bs_plus, bs_minus = stratified_brier(type_conf, gold_type)
    assert bs_plus == pytest.approx(0.085, abs=1e-12)
    assert bs_minus == pytest.approx(0.035, abs=1e-12)


# ----------------------------------------------------------------------------------- B-ECE and B-BS

# type A (0): gold at positions 0, 3 -> N = 2, keep 4: .9(g) .8 .4 .3(g); drop .2 .1
# type B (1): gold at position 2 -> N = 1, keep 2: .7(g) .6
# type C (2): no gold -> skipped
TYPE_CONF = np.array([
    [0.9, 0.1, 0.5],
    [0.8, 0.2, 0.5],
    [0.4, 0.7, 0.5],
    [0.3, 0.1, 0.5],
    [0.2, 0.6, 0.5],
    [0.1, 0.05, 0.5],
])
GOLD_TYPE = np.array([0, -1, 1, 0, -1, -1])


def test_balanced_calibration_two_types_by_hand():
    result = balanced_calibration(TYPE_CONF, GOLD_TYPE, n_bins=2)
    a, b = result.per_type
    # A sorted .3(1) .4(0) | .8(0) .9(1): |1 - .7| + |1 - 1.7| = 1.0 over 4 = .25
    #   Brier (.49 + .16 + .64 + .01) / 4 = .325
    assert (a.type_index, a.n_gold, a.n_kept) == (0, 2, 4)
    assert a.ece == pytest.approx(0.25, abs=1e-12) and a.brier == pytest.approx(0.325, abs=1e-12)
    # B sorted .6(0) | .7(1): (.6 + .3) / 2 = .45;  Brier (.36 + .09) / 2 = .225
    assert (b.type_index, b.n_gold, b.n_kept) == (1, 1, 2)
    assert b.ece == pytest.approx(0.45, abs=1e-12) and b.brier == pytest.approx(0.225, abs=1e-12)
    # weights 4 : 2
    assert result.b_ece == pytest.approx((4 * 0.25 + 2 * 0.45) / 6, abs=1e-12)
    assert result.b_bs == pytest.approx((4 * 0.325 + 2 * 0.225) / 6, abs=1e-12)


def test_balanced_calibration_three_bins_ours_and_paper():
    ours = balanced_calibration(TYPE_CONF, GOLD_TYPE, n_bins=3)
    # A: 4 events, sizes 2, 1, 1: |1 - .7| + |0 - .8| + |1 - .9| = 1.2 over 4 = .3;  B: sizes 1, 1, 0: .45
    assert ours.b_ece == pytest.approx((4 * 0.3 + 2 * 0.45) / 6, abs=1e-12)
    paper = balanced_calibration(TYPE_CONF, GOLD_TYPE, n_bins=3, paper_compatible=True)
    # A: bins of floor(4/3) = 1 from the top, .3 dropped: (.4 + .8 + .1) / 3;  B: 2 < 3 events -> NaN, left out
    assert paper.per_type[0].ece == pytest.approx(1.3 / 3, abs=1e-12)
    assert np.isnan(paper.per_type[1].ece)
    assert paper.b_ece == pytest.approx(1.3 / 3, abs=1e-12)
    assert paper.b_bs == ours.b_bs


def test_balanced_keeps_all_events_when_fewer_than_2n():
    gold_type = np.array([0, 0, 0, 0, -1, 1])
    result = balanced_calibration(TYPE_CONF, gold_type, n_bins=2)
    assert [(p.n_gold, p.n_kept) for p in result.per_type] == [(4, 6), (1, 2)]


def _brute_force_balanced(type_conf, gold_type, n_bins):
    per_type = []
    for t in range(type_conf.shape[1]):
        is_gold = gold_type == t
        n_gold = int(is_gold.sum())
        if n_gold:
            share = _tie_shares(type_conf[:, t], is_gold)  # over the type's events, kept or not
            order = np.argsort(-type_conf[:, t], kind="stable")[: 2 * n_gold]
            conf, y = type_conf[order, t].astype(np.float64), share[order]
            order = np.argsort(conf, kind="stable")
            conf, y = conf[order], y[order]
            ece_t = sum(abs(y[g].sum() - conf[g].sum()) for g in np.array_split(np.arange(conf.size), n_bins))
            brier_t = np.mean(conf**2 - 2 * conf * y + y)  # E(c - y)^2 for y in {0, 1} with P(y = 1) = share
            per_type.append((order.size, ece_t / conf.size, brier_t))
    kept = np.array([p[0] for p in per_type])
    return kept @ [p[1] for p in per_type] / kept.sum(), kept @ [p[2] for p in per_type] / kept.sum()


def test_balanced_matches_brute_force_and_ignores_order():
    rng = np.random.default_rng(9)
    probs = rng.dirichlet(np.full(9, 0.3), size=3000).astype(np.float32)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    type_conf, types = entity_type_confidences(probs, labels)
    gold_type = gold_entity_types(rng.integers(0, 9, size=3000), labels, types)
    result = balanced_calibration(type_conf, gold_type)
    b_ece, b_bs = _brute_force_balanced(type_conf, gold_type, 20)
    assert result.b_ece == pytest.approx(b_ece, abs=1e-9)
    assert result.b_bs == pytest.approx(b_bs, abs=1e-9)
    perm = rng.permutation(3000)
    assert balanced_calibration(type_conf[perm], gold_type[perm]) == result
    stratified = stratified_brier(type_conf, gold_type)
    assert stratified_brier(type_conf[perm], gold_type[perm]) == pytest.approx(stratified, abs=1e-12)


# ------------------------------------------------------------------------ ties: equal confidences share


LEVELS = np.array([0.2, 0.4, 0.6, 0.8, 1.0])


def _calibrated_levels(per_level=2000, dtype=np.float32, seed=0):
    """per_level events at each of LEVELS, exactly round(level * per_level) of them correct, shuffled."""
    rng = np.random.default_rng(seed)
    conf = np.repeat(LEVELS, per_level).astype(dtype)
    hit = np.concatenate([np.arange(per_level) < round(level * per_level) for level in LEVELS])
    order = rng.permutation(conf.size)
    return conf[order], hit[order]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_calibrated_sample_with_tied_confidences_has_zero_ece(dtype):
    # 20 events at .5, 10 correct: was .5 (the 10 incorrect sorted into the lower bins), is 0
    conf, hit = np.full(20, 0.5, dtype=dtype), np.arange(20) < 10
    for n_bins in (2, 3, 10, 20):
        assert ece(conf, hit, n_bins=n_bins) == 0.0
    # five levels x 2000, accuracy = confidence: was .24, is 0, as scikit-learn's calibration_curve says
    conf, hit = _calibrated_levels(dtype=dtype)
    fop, mpv = calibration_curve(hit, conf, n_bins=10, strategy="quantile")
    assert np.mean(np.abs(fop - mpv)) == pytest.approx(0, abs=1e-7)
    for kwargs in ({}, {"n_bins": 7}, {"n_bins": 20}, {"strategy": "uniform"}, {"paper_compatible": True}):
        assert ece(conf, hit, **kwargs) == pytest.approx(0, abs=1e-7), kwargs


def test_topk_ece_of_tied_calibrated_distributions_is_zero():
    # every row a permutation of (.4, .3, .2, .1, 0); across 1000 rows the class given p is gold in p of them
    rng = np.random.default_rng(1)
    probs = np.array([rng.permutation([0.4, 0.3, 0.2, 0.1, 0.0]) for _ in range(1000)], dtype=np.float32)
    rank = np.concatenate([np.full(400, 0), np.full(300, 1), np.full(200, 2), np.full(100, 3)])
    gold = np.argsort(-probs, axis=1, kind="stable")[np.arange(1000), rank]
    for k in (1, 2, 5):
        assert topk_ece(probs, gold, k) == pytest.approx(0, abs=1e-7)
        assert topk_ece(probs, gold, k, paper_compatible=True) == pytest.approx(0, abs=1e-7)


def test_ties_at_the_2n_cut_share_their_correctness():
    # One type: the five calibrated levels (6000 gold), then 10000 events at .1 with 1000 gold. N = 7000: the 14000
    # most confident are the 10000 level events and 4000 of the .1 ones. Sorting by (confidence, correct) kept all
    # 1000 gold .1 events (accuracy .25 there); shared, the kept .1 events are gold at the tie's rate .1.
    conf, hit = _calibrated_levels(seed=2)
    conf = np.concatenate([conf, np.full(10000, 0.1, dtype=np.float32)])
    hit = np.concatenate([hit, np.arange(10000) < 1000])
    result = balanced_calibration(conf[:, None], np.where(hit, 0, -1))
    assert result.per_type[0].n_kept == 14000
    assert result.b_ece == pytest.approx(0, abs=1e-7)
    # by hand, E(c - y)^2 = c (1 - c) per event: 2000 (.16 + .24 + .24 + .16 + 0) + 4000 * .09 = 1960 over 14000
    assert result.b_bs == pytest.approx(1960 / 14000, abs=1e-7)  # was (1600 + 1000 * .81 + 3000 * .01) / 14000
    paper = balanced_calibration(conf[:, None], np.where(hit, 0, -1), paper_compatible=True)
    assert paper.b_ece == pytest.approx(0, abs=1e-7) and paper.b_bs == result.b_bs


def _tied_type_events(seed, n=3000, types=3):
    rng = np.random.default_rng(seed)
    type_conf = rng.choice([0.0, 0.05, 0.3, 0.5, 0.5, 0.9, 1.0], size=(n, types)).astype(np.float32)
    gold_type = np.where(rng.random(n) < 0.2, rng.integers(0, types, n), -1)
    return type_conf, gold_type


def _brute_force_paper_balanced_ece(type_conf, gold_type, n_bins):
    """The paper binning with tie shares: per type, the 2N most confident, bins of floor(N'/n_bins) from the top."""
    eces, kept = [], []
    for t in range(type_conf.shape[1]):
        is_gold = gold_type == t
        if not is_gold.any():
            continue
        share = _tie_shares(type_conf[:, t], is_gold)
        order = np.argsort(-type_conf[:, t], kind="stable")[: 2 * int(is_gold.sum())]
        size = order.size // n_bins
        if size:
            conf, y = type_conf[order, t].astype(np.float64), share[order]
            bins = [slice(b * size, (b + 1) * size) for b in range(n_bins)]
            eces.append(np.mean([abs(y[b].mean() - conf[b].mean()) for b in bins]))
            kept.append(order.size)
    return np.dot(kept, eces) / np.sum(kept)


@pytest.mark.parametrize("seed", range(4))
def test_balanced_calibration_with_many_ties_matches_brute_force(seed):
    type_conf, gold_type = _tied_type_events(seed)
    for n_bins in (3, 20):
        result = balanced_calibration(type_conf, gold_type, n_bins=n_bins)
        b_ece, b_bs = _brute_force_balanced(type_conf, gold_type, n_bins)
        assert result.b_ece == pytest.approx(b_ece, abs=1e-9) and result.b_bs == pytest.approx(b_bs, abs=1e-9)
        paper = balanced_calibration(type_conf, gold_type, n_bins=n_bins, paper_compatible=True)
        assert paper.b_ece == pytest.approx(_brute_force_paper_balanced_ece(type_conf, gold_type, n_bins), abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shuffling_tied_events_changes_no_metric(dtype):
    rng = np.random.default_rng(21)
    type_conf, gold_type = _tied_type_events(5)
    type_conf = type_conf.astype(dtype)
    conf, hit = type_conf[:, 0], gold_type == 0
    for _ in range(5):
        perm = rng.permutation(conf.size)
        for kwargs in ({}, {"n_bins": 7}, {"strategy": "uniform"}, {"paper_compatible": True}):
            assert ece(conf[perm], hit[perm], **kwargs) == ece(conf, hit, **kwargs)
        for paper in (False, True):
            a = balanced_calibration(type_conf[perm], gold_type[perm], paper_compatible=paper)
            b = balanced_calibration(type_conf, gold_type, paper_compatible=paper)
            assert a.b_ece == b.b_ece and a.b_bs == pytest.approx(b.b_bs, abs=1e-15)
        probs = np.stack([type_conf[:, 0], type_conf[:, 1], 2 - type_conf[:, 0] - type_conf[:, 1]], axis=1) / 2
        gold = np.maximum(gold_type, 0)
        assert topk_ece(probs[perm], gold[perm], 2) == topk_ece(probs, gold, 2)


def test_probabilities_a_rounding_step_outside_0_1_are_clipped():
    above = np.nextafter(np.float32(1), np.float32(2))
    conf = np.array([above, 0.5, -1e-7], dtype=np.float32)
    assert ece(conf, [1, 0, 0], n_bins=2) == ece(np.clip(conf, 0, 1), [1, 0, 0], n_bins=2)
    probs = np.array([[above, 0.0], [-1e-7, 1.0]], dtype=np.float32)
    assert brier(probs, [0, 1]) == brier(np.clip(probs, 0, 1), [0, 1])
    type_conf, _ = entity_type_confidences(np.array([[0.0, above, 0.0], [1.0, 0.0, -1e-7]], dtype=np.float32),
                                           ["O", "B-PER", "I-PER"])
    np.testing.assert_array_equal(type_conf, [[1], [0]])


def test_rows_within_the_tolerance_of_one_are_scored_as_given():
    """README "Bad input": rows may stray from summing to 1 by at most 1e-3 (predictions.PROB_TOLERANCE)."""
    for rest in (0.4991, 0.5009):  # rows summing to 0.9991 and 1.0009
        probs = np.array([[0.5, rest], [rest, 0.5]])
        expected = ((0.5 - 1) ** 2 + rest**2 + rest**2 + (0.5 - 1) ** 2) / 2  # gold 0, then 1
        assert brier(probs, [0, 1]) == pytest.approx(expected, abs=1e-15)
        np.testing.assert_array_equal(dense_topk_events(probs, [0, 1], 1)[0], [max(0.5, rest)] * 2)
        assert entity_type_confidences(probs, ["O", "B-PER"])[0][:, 0].tolist() == [rest, 0.5]


# ------------------------------------------------------------- class ties: tied classes share the gold's correctness


def _sklearn_style_ece(conf, correct, n_bins, strategy):
    """The paper's unweighted ECE over scikit-learn's bins, for fractional correctness (calibration_curve wants 0/1)."""
    conf64 = conf.astype(np.float64)
    if strategy == "quantile":
        edges = np.percentile(conf, np.linspace(0, 1, n_bins + 1) * 100)
    else:
        edges = np.linspace(0, 1, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    used = np.unique(bins)
    return np.mean([abs(correct[bins == b].mean() - conf64[bins == b].mean()) for b in used])


def _uniform_ece(conf, correct, n_bins):
    bins = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], conf, side="right")  # [b/n, (b+1)/n), 1.0 last
    return sum(abs(correct[bins == b].sum() - conf[bins == b].astype(np.float64).sum())
               for b in range(n_bins)) / conf.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ece_of_fractional_correctness_matches_brute_force(dtype):
    rng = np.random.default_rng(31)
    for n in (1, 3, 11, 257, 5000):
        conf, _ = _random_events(rng, n, dtype)
        correct = rng.choice([0, 0, 1, 1, 1 / 2, 1 / 3, 1 / 4], size=n)
        for n_bins in (1, 4, 10, 20):
            assert ece(conf, correct, n_bins=n_bins) == pytest.approx(_brute_force_ece(conf, correct, n_bins),
                                                                      abs=1e-9)
            assert ece(conf, correct, n_bins, "uniform") == pytest.approx(_uniform_ece(conf, correct, n_bins),
                                                                          abs=1e-9)
            for strategy in ("quantile", "uniform"):
                expected = _sklearn_style_ece(conf, correct, n_bins, strategy)
                assert ece(conf, correct, n_bins, strategy, paper_compatible=True) == pytest.approx(expected,
                                                                                                     abs=1e-9)


def test_ece_of_fractional_correctness_by_hand():
    # .2 (1/2), .2 (0) | .8 (1), .8 (1/2): |1/2 - .4| + |3/2 - 1.6| = .2 over 4 events
    assert ece([0.2, 0.2, 0.8, 0.8], [0.5, 0, 1, 0.5], n_bins=2) == pytest.approx(0.05, abs=1e-12)
    # a run of three .5 events (correct 1/3 + 0 + 1) cut by the bound: each counts 4/9. Bins .5 .5 | .5 .9:
    # |8/9 - 1| + |4/9 + 1 - 1.4| = 1/9 + 2/45 = 7/45, over 4 events
    assert ece([0.5, 0.9, 0.5, 0.5], [1 / 3, 1, 0, 1], n_bins=2) == pytest.approx(7 / 180, abs=1e-12)
    # float 0/1 correctness is bool correctness
    conf, hit = _random_events(np.random.default_rng(3), 500, np.float32)
    assert ece(conf, hit.astype(np.float64)) == ece(conf, hit)


def test_tied_classes_share_correctness_by_hand():
    probs = np.array([[0.4, 0.2, 0.2, 0.2]], dtype=np.float32)
    assert dense_topk_events(probs, [0], 2)[1].tolist() == [True, False]  # the untied top class is gold
    for gold in (1, 2, 3):  # gold one of three classes tied for places 2-4: each of those events correct at 1/3
        for k, expected in ((1, [0]), (2, [0, 1 / 3]), (3, [0, 1 / 3, 1 / 3]), (4, [0, 1 / 3, 1 / 3, 1 / 3])):
            conf, correct = dense_topk_events(probs, [gold], k)
            np.testing.assert_array_equal(conf, probs[0, :k])
            np.testing.assert_allclose(correct, expected, rtol=1e-15)
    # the rows: .5 on O and on B-PER, gold alternating. Either order of the classes: top-1 accuracy 1/2
    # against confidence 1/2 (was accuracy 1 or 0 by the order): ECE-1 0
    probs = np.tile(np.array([[0.5, 0.5, 0.0]], dtype=np.float32), (40, 1))
    gold = np.tile([0, 1], 20)
    for order in ([0, 1, 2], [1, 0, 2]):
        assert dense_topk_events(probs[:, order], np.argsort(order)[gold], 1)[1].tolist() == [0.5] * 40
        assert topk_ece(probs[:, order], np.argsort(order)[gold], 1) == 0.0


def _quantised_rows(rng, n, classes, steps=8):
    """Rows of multiples of 1/steps summing to 1: many ties, and exact sums in any order."""
    counts = rng.multinomial(steps, rng.dirichlet(np.ones(classes)), size=n)
    return (counts / steps).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_topk_events_are_the_mean_over_every_order_of_the_classes(seed):
    # brute force: for each of the 5! orders of the classes, the top k an order-dependent sort picks (a stable
    # argsort, so the first of tied classes in that order), and the mean over the orders of each slot's correctness
    rng = np.random.default_rng(seed)
    probs = _quantised_rows(rng, 60, 5)
    gold = rng.integers(0, 5, 60)
    orders = list(itertools.permutations(range(5)))
    for k in range(1, 6):
        mean = np.zeros((60, k))
        for order in orders:
            order = np.array(order)
            picked = order[np.argsort(-probs[:, order], axis=1, kind="stable")[:, :k]]
            mean += picked == gold[:, None]
        conf, correct = dense_topk_events(probs, gold, k)
        np.testing.assert_array_equal(conf.reshape(60, k), -np.sort(-probs, axis=1)[:, :k])
        np.testing.assert_allclose(correct.reshape(60, k), mean / len(orders), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_no_calibration_metric_depends_on_the_order_of_the_classes(seed):
    rng = np.random.default_rng(seed)
    probs = _quantised_rows(rng, 400, 6)
    gold = rng.integers(0, 6, 400)
    for _ in range(3):
        perm = rng.permutation(6)
        for k in range(1, 7):
            for paper in (False, True):
                assert topk_ece(probs[:, perm], np.argsort(perm)[gold], k, paper_compatible=paper) == \
                    topk_ece(probs, gold, k, paper_compatible=paper)


def test_compact_topk_events_count_the_ties_past_the_stored_k():
    # full row .3 .2 .2 .2 .1, gold the fourth class (.2); two of the three .2 classes stored with K = 3, one not
    row = np.array([[0.3, 0.2, 0.2, 0.2, 0.1]], dtype=np.float32)
    top = row[:, :3]
    for k in (1, 2, 3):
        conf, correct = topk_events(top, row[:, 3], k, tied_beyond=[1])
        dense_conf, dense_correct = dense_topk_events(row, [3], k)
        np.testing.assert_array_equal(conf, dense_conf)
        np.testing.assert_array_equal(correct, dense_correct)
        np.testing.assert_allclose(correct, [0, 1 / 3, 1 / 3][:k], rtol=1e-15)
    # without tied_beyond (unknown: counted as 0) the tie is two classes
    np.testing.assert_allclose(topk_events(top, row[:, 3])[1], [0, 1 / 2, 1 / 2], rtol=1e-15)
    # a tie that does not hold the gold class changes nothing, and leaves the events bool
    conf, correct = topk_events(top, np.float32([0.3]), tied_beyond=[1])
    assert correct.dtype == bool and correct.tolist() == [True, False, False]


def test_topk_events_match_the_gold_probability_across_float_types():
    """float32 top_probs beside a float64 gold_prob found no correct event (exact == across dtypes; trial 3): the
    events must be those of the full float32 distributions, and likewise the other way round."""
    rng = np.random.default_rng(5)
    probs64 = rng.dirichlet(np.full(20, 0.3), size=2000)
    probs32 = probs64.astype(np.float32)
    gold = (rng.random((2000, 1)) > np.cumsum(probs64, axis=1)).sum(axis=1).clip(max=19)
    rows = np.arange(2000)
    for top, gold_prob, dense in ((-np.sort(-probs32, axis=1)[:, :5], probs64[rows, gold], probs32),
                                  (-np.sort(-probs64, axis=1)[:, :5], probs32[rows, gold], probs64)):
        for k in (1, 5):
            conf, correct = topk_events(top, gold_prob, k)
            dense_conf, dense_correct = dense_topk_events(dense, gold, k)
            np.testing.assert_array_equal(conf, dense_conf)
            np.testing.assert_array_equal(correct, dense_correct)
            assert ece(conf, correct) == ece(dense_conf, dense_correct)
        assert 0.1 < np.mean(topk_events(top, gold_prob, 1)[1]) < 0.5  # the gold is the top class at times


# -------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, message", [
    (lambda: ece([0.1, 0.2], [1]), "same length"),
    (lambda: ece([0.1, np.nan], [1, 0]), "NaN"),
    (lambda: ece([0.1, 1.5], [1, 0]), r"\[0, 1\]"),
    (lambda: ece(np.array([-0.1, 0.5], dtype=np.float32), [1, 0]), r"\[0, 1\]"),
    (lambda: ece([0.1, np.inf], [1, 0]), r"\[0, 1\]"),
    (lambda: ece([0.1, 0.2], [1, 2]), "0/1"),
    (lambda: ece([0.1, 0.2], [1, 1.5]), r"probability in \[0, 1\]"),
    (lambda: ece([0.1, 0.2], [1, np.nan]), r"probability in \[0, 1\]"),
    (lambda: topk_events([[0.2, 0.5]], [0.5]), "descending"),
    (lambda: topk_events([[0.5, 0.2]], [0.5], k=3), "k must be"),
    (lambda: topk_events([[0.5, 0.2]], [0.5, 0.2]), "gold_prob must be"),
    (lambda: topk_events([[0.5, 0.2]], [0.5], tied_beyond=[-1]), "tied_beyond must be >= 0"),
    (lambda: topk_events([[0.5, 0.2]], [0.5], tied_beyond=[0.5]), "integers"),
    (lambda: entity_type_confidences(np.full((2, 3), 1 / 3), ["O", "B-PER ", "I-PER "]), "whitespace"),
    (lambda: entity_type_confidences(np.full((2, 3), 1 / 3), ["O", "B- PER", "I- PER"]), "whitespace"),
    (lambda: ece([], []), "no events"),
    (lambda: ece([0.1], [1], n_bins=0), "n_bins"),
    (lambda: ece([0.1], [1], strategy="equal"), "strategy"),
    (lambda: topk_ece(np.full((2, 3), 1 / 3), [0, 1], k=4), "k must be"),
    (lambda: topk_ece(np.full((2, 3), 1 / 3), [0, 3], k=1), "ids must lie"),
    (lambda: brier(np.full((2, 3), 1 / 3), [0]), "gold must be"),
    (lambda: brier(np.full((2, 3), 1 / 3), [0.0, 1.0]), "integers"),
    (lambda: entity_type_confidences(np.full((2, 3), 1 / 3), ["O", "B-PER", "PER"]), "IOB2"),
    (lambda: entity_type_confidences(np.full((2, 3), 1 / 3), ["O", "B-PER"]), "2 label names"),
    (lambda: entity_type_confidences(np.full((2, 3), 1 / 3), ["O", "B-PER", "B-PER"]), "'B-PER' appears twice"),
    (lambda: gold_entity_types([1], LABELS, ["PER"]), "LOC"),
    (lambda: stratified_brier(np.full((2, 2), 0.5), [0, 2]), "gold_type must lie"),
    (lambda: balanced_calibration(np.full((2, 2), 0.5), [-1, -1]), "no position"),
    # rows of full distributions must sum to 1 within 1e-3 (README "Bad input"; they were scored: trial 3)
    (lambda: brier([[0.5, 0.5], [0.3, 0.3]], [0, 1]), r"probs row 1 sums to 0\.600000; each row must sum to 1"),
    (lambda: brier(np.full((2, 3), 0.5), [0, 1]), r"probs row 0 sums to 1\.500000"),
    (lambda: brier([[1.0, 0.0], [0.4995, 0.4995]], [0, 1]), r"probs row 1 sums to 0\.999000"),
    (lambda: topk_ece([[0.5, 0.5], [0.1, 0.2]], [0, 1], k=1), "probs row 1 sums to 0.3"),
    (lambda: dense_topk_events([[0.2, 0.1]], [0], k=1), "probs row 0 sums to 0.3"),
    (lambda: entity_type_confidences(np.full((2, 3), 0.2), ["O", "B-PER", "I-PER"]), "probs row 0 sums to 0.6"),
    (lambda: brier([[0.5, 0.5], [np.nan, 1.0]], [0, 1]), r"probs contains NaN \(first in row 1\)"),
    (lambda: brier([[0.5, 0.5], [0.5, 0.5], [1.5, -0.5]], [0, 1, 0]), r"\[0, 1\].*first outside in row 2"),
    (lambda: ece([0.1, 0.2, np.nan], [1, 0, 1]), r"NaN \(first in index 2\)"),
    (lambda: brier(np.full((3, 2), 0.5), [0, 2, 5]), r"ids must lie in 0..1; found 0..5 \(first outside in row 1\)"),
    (lambda: stratified_brier(np.full((3, 2), 0.5), [0, -1, 2]), r"gold_type must lie.*first outside in row 2"),
    # the PR curve had no checks: a wrong AP for gold types out of range, NaN or > 1 scored, numpy's IndexError
    (lambda: precision_recall_curve(np.full((3, 2), 0.5), [0, 7, -1]), r"gold_type must lie in -1..1.*row 1"),
    (lambda: precision_recall_curve(np.full((3, 2), 0.5), [0, -1, -5]), r"gold_type must lie in -1..1.*row 2"),
    (lambda: precision_recall_curve([[0.5, np.nan]], [0]), r"type_conf contains NaN \(first in row 0\)"),
    (lambda: precision_recall_curve([[0.5, 0.2], [5.0, 0.1]], [0, 1]), r"type_conf must lie in \[0, 1\].*row 1"),
    (lambda: precision_recall_curve(np.full((3, 2), 0.5), [0, 1]), r"gold_type must be \[positions\] = \[3\]"),
    (lambda: precision_recall_curve([0.5, 0.2], [0, 1]), r"type_conf must be \[positions, types\]"),
    (lambda: precision_recall_curve(np.zeros((0, 2)), np.zeros(0, dtype=int)), "precision_recall_curve: no events"),
    # the diagram drew NaN as numpy's error, confidences above 1 silently, and [] as an empty figure
    (lambda: reliability_diagram([0.5, np.nan], [1, 0], "/nonexistent/r.png"), r"confidence contains NaN"),
    (lambda: reliability_diagram([0.5, 3.0], [1, 0], "/nonexistent/r.png"), r"confidence must lie in \[0, 1\]"),
    (lambda: reliability_diagram([0.5, -0.2], [1, 0], "/nonexistent/r.png"), r"confidence must lie in \[0, 1\]"),
    (lambda: reliability_diagram([0.5], [1], "/nonexistent/r.png", n_bins=0), "n_bins must be a positive integer"),
    (lambda: reliability_diagram([], [], "/nonexistent/r.png"), "reliability_bins: no events"),
    (lambda: reliability_diagram([0.5, 0.2], [1, 2], "/nonexistent/r.png"), "0/1"),
    (lambda: reliability_diagram([0.5, 0.2], [1, 1.5], "/nonexistent/r.png"), r"probability in \[0, 1\]"),
    (lambda: reliability_diagram([0.5, 0.2], [1], "/nonexistent/r.png"), "same length"),
])
def test_bad_input_raises_user_error(call, message):
    with pytest.raises(UserError, match=message) as refused:
        call()
    assert isinstance(refused.value, ValueError)  # a library caller's `except ValueError` catches it too
