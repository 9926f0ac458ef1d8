import warnings

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from ensemble_distill.calibration.temperature import (
    T_BOUNDS,
    TemperatureBoundWarning,
    apply_temperature,
    at_bound,
    fit_temperature,
    temperature_label,
)


def sample(true_temperature, n=20000, classes=6, seed=0, scale=3.0):
    """Logits z and labels drawn from softmax(z / T*): T* is the temperature that calibrates z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, classes))
    p = softmax(z / true_temperature, axis=1)
    gold = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return z, gold


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_recovers_a_known_temperature(true_temperature):
    z, gold = sample(true_temperature)
    assert fit_temperature(z, gold) == pytest.approx(true_temperature, rel=0.05)


def test_calibrated_sample_is_a_fixed_point():
    z, gold = sample(1.0, seed=1)
    assert fit_temperature(z, gold) == pytest.approx(1.0, rel=0.05)


def test_log_probabilities_give_the_same_fit_as_logits():
    z, gold = sample(2.0, seed=2)
    log_p = log_softmax(z, axis=1)
    assert fit_temperature(log_p, gold) == pytest.approx(fit_temperature(z, gold), rel=1e-4)


def test_fit_minimises_the_nll():
    z, gold = sample(1.5, n=3000, seed=3)
    t = fit_temperature(z, gold)

    def nll(temp):
        return -np.log(apply_temperature(z, temp)[np.arange(len(gold)), gold]).mean()

    assert nll(t) <= min(nll(t * 0.98), nll(t * 1.02))


def test_apply_temperature_renormalises_powered_probabilities():
    p = np.array([[0.7, 0.2, 0.1]])
    scaled = apply_temperature(np.log(p), 0.5)
    np.testing.assert_allclose(scaled, p**2 / (p**2).sum())
    np.testing.assert_allclose(apply_temperature(np.log(p), 0.5, log=True), np.log(scaled))


@pytest.mark.parametrize("temperature", [0.0, -1.0, np.inf, np.nan])
def test_apply_temperature_refuses_a_temperature_that_is_not_positive(temperature):
    """T = -1 would return the inverted distribution and T = 0 NaN, silently."""
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        apply_temperature(np.log([[0.7, 0.2, 0.1]]), temperature)


def test_recovers_a_planted_temperature_far_from_one():
    # A search on T instead of log T (bounds log 0.01..log 100 read as T) cannot reach 8: it returned 4.6.
    z, gold = sample(8.0, scale=10.0)
    assert fit_temperature(z, gold) == pytest.approx(8.0, rel=0.05)


def no_bound_warning(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TemperatureBoundWarning)
        return fn(*args)


@pytest.mark.parametrize("seed", range(3))
def test_anti_calibrated_set_stops_at_the_upper_bound_with_a_warning(seed):
    # Labels drawn from softmax(-z): gold scores sit below their rows' mean, so the NLL falls as T grows without
    # end. The fit must say so, never return T <= 0 (a linear search on log-bounds gave a negative T here).
    z, gold = sample(-1.0, n=2000, seed=seed)
    with pytest.warns(TemperatureBoundWarning, match="fit of member-1 on dev stopped at the upper bound T = 100"):
        t = fit_temperature(z, gold, what="member-1 on dev")
    assert t == T_BOUNDS[1] and at_bound(t) and temperature_label(t) == ">= 100"


@pytest.mark.parametrize(
    "pick, bound, which",
    [(np.argmax, 0, "lower bound T = 0.01"), (np.argmin, 1, "upper bound T = 100")],
)
def test_gold_always_the_argmax_or_argmin_has_no_finite_optimum(pick, bound, which):
    z = np.random.default_rng(0).normal(scale=3.0, size=(500, 5))
    with pytest.warns(TemperatureBoundWarning, match=which):
        t = fit_temperature(z, pick(z, axis=1))
    assert t == T_BOUNDS[bound]
    # Independently: the NLL at the returned bound is below the NLL anywhere inside the range.
    nll = [-apply_temperature(z, temp, log=True)[np.arange(500), pick(z, axis=1)].mean()
           for temp in np.geomspace(*T_BOUNDS, 41)]
    assert np.argmin(nll) == (0 if bound == 0 else 40)


def test_an_optimum_beyond_the_range_is_reported_as_the_bound():
    z, gold = sample(0.004, n=5000, seed=4)  # a true T below 0.01: the NLL still falls at the lower bound
    with pytest.warns(TemperatureBoundWarning, match="lower bound"):
        assert fit_temperature(z, gold) == T_BOUNDS[0]
    assert temperature_label(T_BOUNDS[0]) == "<= 0.01" and temperature_label(0.93612) == "0.94"


def test_interior_fits_do_not_warn_and_constant_rows_give_one():
    z, gold = sample(2.0, n=2000, seed=5)
    assert not at_bound(no_bound_warning(fit_temperature, z, gold))
    assert no_bound_warning(fit_temperature, np.full((4, 3), 0.7), np.array([0, 1, 2, 0])) == 1.0


def test_zero_probability_classes_are_ignored():
    # -inf scores (log 0) outside the gold class: the same fit as without those classes.
    z, gold = sample(1.5, n=3000, seed=6)
    padded = np.concatenate([z, np.full((len(z), 2), -np.inf)], axis=1)
    assert fit_temperature(padded, gold) == pytest.approx(fit_temperature(z, gold), rel=1e-9)


@pytest.mark.parametrize(
    "scores, gold, match",
    [
        (np.zeros((3, 2)), np.zeros(4, dtype=int), "scores \\[N, C\\] and gold \\[N\\]"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "N, C >= 1"),
        (np.zeros(3), np.zeros(3, dtype=int), "scores \\[N, C\\]"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "integer gold"),
        (np.zeros((2, 3)), np.array([0, 3]), "gold id 3 \\(row 1\\) is not a class in \\[0, 3\\)"),
        (np.zeros((2, 3)), np.array([-1, 0]), "gold id -1 \\(row 0\\)"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 0]), "row 0 has a NaN or \\+inf"),
        (np.array([[0.0, 1.0], [np.inf, 2.0]]), np.array([0, 1]), "row 1 has a NaN or \\+inf"),
        (np.array([[0.0, -np.inf]]), np.array([1]), "zero probability"),
    ],
)
def test_inputs_it_cannot_fit_raise_one_value_error(scores, gold, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(scores, gold)


def test_tables_and_teacher_names_show_a_fit_at_the_bound():
    from types import SimpleNamespace

    from ensemble_distill.distill.memoize import TEMPERATURE_PREFIX, teacher_name
    from ensemble_distill.evaluation import System
    from ensemble_distill.tables import format_rows, table_rows
    from ensemble_distill.tasks.nmt import TASK

    def name(t):
        return teacher_name(SimpleNamespace(manifest={"teachers": ["m1", "m2", f"{TEMPERATURE_PREFIX}{t!r}"]}))

    assert name(0.93612) == "ensemble of 2, temperature-scaled (T = 0.936)"
    assert name(T_BOUNDS[1]) == ("ensemble of 2, temperature-scaled (T = 100.000 at the fit's bound: dev had no "
                                 "finite optimum)")

    systems = [System("member-1", "member-1", (0,), "members"), System("member-2", "member-2", (1,), "members"),
               System("ensemble-2", "ensemble of 2", (0, 1))]
    metrics = ("bleu", "ece_1", "ece_5", "bs_plus", "conf_gap")
    score = {m: {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6} for m in metrics}
    scores = {f"{s.name}{suffix}": score for s in systems for suffix in ("", "-ts")}
    rows = table_rows(systems, scores, {"member-1": 1.19, "member-2": T_BOUNDS[0], "ensemble-2": T_BOUNDS[1]},
                      TASK.columns)
    table = format_rows(rows, TASK.columns)
    t_cells = [line.split(" | ")[1] for line in table.splitlines()[2:] if line.startswith("| ")]
    assert table.splitlines()[-1].startswith("* bias-corrected")  # its ECE-1 and ECE-5 columns
    assert t_cells == ["1.00", "0.60 (1 of 2 at the fit's bound)", "1.00", ">= 100"]
