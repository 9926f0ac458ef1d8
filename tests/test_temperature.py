import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from ensemble_distill.calibration.temperature import apply_temperature, fit_temperature
from ensemble_distill.errors import UserError


def sample(true_temperature, n=20000, classes=6, seed=0):
    """Logits z and labels drawn from softmax(z / T*): T* is the temperature that calibrates z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3.0, size=(n, classes))
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


def test_bad_input():
    with pytest.raises(UserError):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(UserError, match="zero probability"):
        fit_temperature(np.array([[0.0, -np.inf]]), np.array([1]))
