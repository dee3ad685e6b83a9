"""The confidence maths on synthetic data with a known answer (temperature, ECE, thresholds for a precision or a
coverage goal), and the one rule that turns outputs into calibrated scores."""
import numpy as np
import pytest

from edgesight.converters import confidence as C
from edgesight.runtimes.postprocess import accepted, accepted_rows, softmax, to_probabilities

LABELS = ["a", "b", "c", "d"]


def sample_logits(n, k=4, scale=2.0, seed=0):
    """True logits and labels drawn from their softmax: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (n, k))
    p = softmax(z).astype(np.float64)
    truth = np.array([rng.choice(k, p=row / row.sum()) for row in p])
    return z, truth


def test_temperature_is_recovered_from_over_confident_logits():
    z, truth = sample_logits(6000)
    for t_true in (0.5, 3.0):
        over = z / t_true  # T < 1 sharpens: a model 1/T times too confident
        t = C.fit_temperature(over, truth)
        assert t == pytest.approx(1.0 / t_true, rel=0.08), (t_true, t)
        before = C.ece(to_probabilities(over, "logits"), truth)
        after = C.ece(to_probabilities(over, "logits", t), truth)
        assert after < before and after < 0.03, (before, after)


def test_probabilities_output_calibrates_like_its_logits():
    z, truth = sample_logits(3000, seed=1)
    p = softmax(z * 2.5)
    t_logits = C.fit_temperature(z * 2.5, truth, "logits")
    t_probs = C.fit_temperature(p, truth, "probabilities")
    assert t_probs == pytest.approx(t_logits, rel=1e-3)
    np.testing.assert_allclose(to_probabilities(p, "probabilities", 2.5), softmax(z), atol=1e-5)


def test_ece_and_reliability_on_a_known_example():
    # 100 images all at confidence 0.8, 60 right: ECE = |0.6 - 0.8| = 0.2, one full bin
    probs = np.tile([0.8, 0.1, 0.05, 0.05], (100, 1))
    truth = np.array([0] * 60 + [1] * 40)
    assert C.ece(probs, truth) == pytest.approx(0.2)
    bins = C.reliability(probs, truth)
    full = [b for b in bins if b["count"]]
    assert len(bins) == 15 and len(full) == 1 and full[0]["count"] == 100
    assert full[0]["accuracy"] == pytest.approx(0.6) and full[0]["confidence"] == pytest.approx(0.8)


def test_binomial_p_value_and_the_fewest_images_that_can_meet_a_goal():
    assert C.precision_p_value(50, 50, 0.98) == pytest.approx(0.98 ** 50)
    assert C.min_accepted(0.98, 0.9) == 114  # 0.98 ** 114 <= 0.1 < 0.98 ** 113
    assert 0.98 ** 114 <= 0.1 < 0.98 ** 113


def selective_data(n, seed):
    """Scores uniform in [0.25, 1], each right with probability equal to its score (calibrated), class a."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.25, 1.0, n)
    right = rng.random(n) < s
    probs = np.zeros((n, 4))
    probs[:, 0] = s
    probs[:, 1:] = ((1 - s) / 3)[:, None]
    truth = np.where(right, 0, 1)
    return probs, truth


def test_precision_threshold_meets_a_known_precision_on_fresh_data():
    # precision of the accepted images above t is E[s | s >= t] = (1 + t) / 2: >= 0.95 needs t >= 0.9
    probs, truth = selective_data(40000, 0)
    th, unmet = C.fit_precision_thresholds(probs, truth, LABELS, 0.95, 0.9)
    assert "a" not in unmet
    assert 0.895 <= th["a"] <= 0.94, th["a"]  # at the true answer, a little above (the bound is conservative)
    fresh, fresh_truth = selective_data(40000, 1)
    sel = C.selective(fresh, fresh_truth, LABELS, 1.0, th)
    assert sel["per_class"]["a"]["precision"] >= 0.95
    assert sel["coverage"] == pytest.approx((1 - th["a"]) / 0.75, abs=0.02)


def test_a_class_without_enough_images_gets_the_strictest_threshold_and_is_named():
    probs, truth = selective_data(100, 2)  # 100 images cannot show precision 0.99 at confidence 0.9
    th, unmet = C.fit_precision_thresholds(probs, truth, LABELS, 0.99, 0.9)
    assert "a" in unmet and th["a"] == C.NEVER
    assert not accepted_rows(probs, LABELS, 1.0, th).any()  # 1.0 accepts nothing, not even a score of 1.0
    assert not accepted(1.0, 1.0) and accepted(0.9, 0.9) and not accepted(0.89, 0.9)


def test_coverage_threshold_accepts_at_least_the_share_asked():
    probs, truth = selective_data(1000, 3)
    for c in (0.3, 0.8, 1.0):
        t = C.fit_coverage_threshold(probs, c)
        assert accepted_rows(probs, LABELS, t, {}).mean() >= c - 1e-9


def test_risk_coverage_is_the_error_rate_of_the_most_confident():
    probs, truth = selective_data(5000, 4)
    curve = C.risk_coverage(probs, truth)
    assert curve[-1]["coverage"] == 1.0
    assert curve[-1]["risk"] == pytest.approx(float((probs.argmax(1) != truth).mean()))
    assert curve[0]["risk"] < curve[-1]["risk"]  # the most confident 5% are right more often


def test_calibrate_fits_everything_for_one_artifact():
    z, truth = sample_logits(4000, seed=5)
    fit = C.calibrate(z * 3, truth, LABELS, "logits", 0.9, None, 0.9)
    assert fit["temperature"] == pytest.approx(3.0, rel=0.1)
    assert fit["ece_after"] < fit["ece_before"]
    assert set(fit["thresholds"]["per_class"]) == set(LABELS) and fit["goal"].startswith("precision >= 0.9")
    cov = C.calibrate(z * 3, truth, LABELS, "logits", None, 0.5, 0.9)
    assert cov["thresholds"]["per_class"] == {} and 0 < cov["thresholds"]["default"] < 1
    none = C.calibrate(z * 3, truth, LABELS, "logits", None, None, 0.9)
    assert none["thresholds"] is None
