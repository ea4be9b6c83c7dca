"""Combining several detectors' conformal p-values: worked examples and the ID rejection guarantee.

The guarantee is tested like ``tests/test_screen.py::test_conformal_id_rejection_rate_over_random_splits``:
over many random calibration/test splits of exchangeable ID scores, the fraction of fresh ID inputs rejected
at level α is at most α plus a binomial tolerance (4 standard deviations of the estimate), for both rules,
with independent, strongly dependent and identical detectors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2ood.errors import ConfigError
from l2ood.metrics.conformal import (
    Calibration,
    calibrate_combined,
    combine_p_values,
    combined_log_p,
    combined_scores,
    conformal_p_values,
)

# ---------------------------------------------------------------- worked examples


def test_bonferroni_by_hand() -> None:
    p = [[0.01, 0.5, 0.2], [0.4, 0.9, 0.6], [0.001, 0.001, 0.001]]
    # min(1, 3 * min_k p_k): 3 * 0.01, min(1, 3 * 0.4), 3 * 0.001
    np.testing.assert_allclose(combine_p_values(p), [0.03, 1.0, 0.003])
    np.testing.assert_allclose(combined_log_p(p), np.log([0.03, 1.2, 0.003]))  # the score is not clipped


def test_cauchy_by_hand() -> None:
    # K = 2, p = (0.25, 0.75): tan(0.25 pi) = 1, tan(-0.25 pi) = -1 -> T = 0 -> p = 1/2 - arctan(0)/pi = 0.5
    assert combine_p_values([[0.25, 0.75]], "cauchy")[0] == pytest.approx(0.5)
    # p = (0.1, 0.2): T = (cot(0.1 pi) + cot(0.2 pi)) / 2; p = 1/2 - arctan(T)/pi
    t = (1 / math.tan(0.1 * math.pi) + 1 / math.tan(0.2 * math.pi)) / 2
    assert combine_p_values([[0.1, 0.2]], "cauchy")[0] == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-12)
    # equal p-values combine to themselves (perfect dependence is exact)
    np.testing.assert_allclose(combine_p_values([[0.3, 0.3, 0.3], [0.02, 0.02, 0.02]], "cauchy"), [0.3, 0.02])
    # the tail: p ~ 1/(pi T) for large T, computed without cancellation
    tiny = combine_p_values([[1e-12, 1e-12]], "cauchy")[0]
    assert tiny == pytest.approx(1e-12, rel=1e-6)


def test_cauchy_is_exact_under_independence() -> None:
    """Independent uniform p-values: the combined p-value is uniform (a mean of independent standard Cauchy
    variables is standard Cauchy), so P(p <= a) = a for every a."""
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(200_000, 4))
    comb = combine_p_values(p, "cauchy")
    for a in (0.01, 0.05, 0.1, 0.3, 0.7):
        assert abs(np.mean(comb <= a) - a) < 4 * math.sqrt(a * (1 - a) / p.shape[0])


def test_combined_scores_by_hand() -> None:
    cal = [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]
    # input 1: p_1 = (1 + 2)/4, p_2 = (1 + 3)/4 -> 2 * min = 1.5 -> ln 1.5
    # input 2: p_1 = 1/4, p_2 = 2/4 -> 2 * 1/4 = 0.5 -> ln 0.5; input 3: NaN member -> NaN (fail closed)
    got = combined_scores(cal, [[2.5, 35.0], [0.0, 15.0], [np.nan, 15.0]])
    np.testing.assert_allclose(got[:2], np.log([1.5, 0.5]))
    assert np.isnan(got[2])
    assert conformal_p_values(cal[0], [2.5])[0] == 0.75


def test_combined_calibration_object() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=99), rng.normal(size=99)
    cal = calibrate_combined({"feature_norm": a, "knn": b}, alpha=0.1, rule="bonferroni", fitted={"knn": "0" * 64})
    assert cal.is_combined and cal.members == ["feature_norm", "knn"] and cal.detector == "feature_norm,knn"
    assert cal.n == 99 and cal.threshold == pytest.approx(math.log(0.1)) and cal.tpr == pytest.approx(0.9)
    assert cal.member_scores == [sorted(a.tolist()), sorted(b.tolist())]
    x = rng.normal(size=(50, 2))
    s = cal.combined_score(x)
    p = cal.p_values(s)
    expected = combine_p_values(np.stack([conformal_p_values(a, x[:, 0]), conformal_p_values(b, x[:, 1])], 1))
    np.testing.assert_allclose(p, expected)
    np.testing.assert_array_equal(cal.is_ood(s), expected <= 0.1)
    assert "min(1, 2·min_k p_k) ≤ 0.1" in cal.rule()
    # the record round trip validates the combination (and refuses inconsistent ones)
    back = Calibration.from_dict(cal.to_dict())
    assert back == cal
    bad = cal.to_dict()
    bad["member_scores"] = bad["member_scores"][:1]
    with pytest.raises(ValueError, match="member"):
        Calibration.from_dict(bad)
    bad = cal.to_dict()
    bad["alpha"] = None
    with pytest.raises(ValueError, match="alpha"):
        Calibration.from_dict(bad)
    bad = cal.to_dict()
    bad["fitted"] = {"mahalanobis": "0" * 64}
    with pytest.raises(ValueError, match="fitted"):
        Calibration.from_dict(bad)


def test_combined_calibration_errors() -> None:
    with pytest.raises(ConfigError, match="at least two"):
        calibrate_combined({"a": [1.0, 2.0]}, 0.5)
    with pytest.raises(ConfigError, match="K/\\(n\\+1\\)"):  # 2 detectors, 19 images: alpha >= 2/20 needed
        calibrate_combined({"a": np.arange(19.0), "b": np.arange(19.0)}, 0.05)
    with pytest.raises(ConfigError, match="finite"):
        calibrate_combined({"a": [1.0, np.inf], "b": [1.0, 2.0]}, 0.9)
    with pytest.raises(ConfigError, match="rule"):
        calibrate_combined({"a": [1.0, 2.0], "b": [1.0, 2.0]}, 0.9, rule="fisher")
    with pytest.raises(ConfigError, match="different numbers"):
        calibrate_combined({"a": [1.0, 2.0], "b": [1.0]}, 0.9)


# ---------------------------------------------------------------- the guarantee


def _scores(rng: np.random.Generator, n: int, dependence: str) -> np.ndarray:
    """``(n, 3)`` ID scores of three detectors: ``independent``, ``strong`` (correlation 0.95 with the first, one
    through a monotone transform), or ``identical`` rankings."""
    z = rng.normal(size=(n, 3))
    if dependence == "independent":
        return np.stack([z[:, 0], rng.gamma(2.0, 1.0, n), np.exp(z[:, 2])], axis=1)
    rho = 0.95 if dependence == "strong" else 1.0
    second = rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]
    third = np.exp(rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 2])
    return np.stack([z[:, 0], second, third], axis=1)


@pytest.mark.parametrize("rule", ["bonferroni", "cauchy"])
@pytest.mark.parametrize("dependence", ["independent", "strong", "identical"])
def test_combined_id_rejection_rate_over_random_splits(rule: str, dependence: str) -> None:
    """Fresh ID inputs (never used for calibration) are rejected at a rate <= alpha (+ binomial tolerance)."""
    rng = np.random.default_rng([len(rule), len(dependence)])  # fixed seed per case
    n_cal, n_test, alpha, trials = 199, 20, 0.05, 2000
    rejected = 0
    for _ in range(trials):
        s = _scores(rng, n_cal + n_test, dependence)
        cal = calibrate_combined({"a": s[:n_cal, 0], "b": s[:n_cal, 1], "c": s[:n_cal, 2]}, alpha, rule)
        rejected += int(cal.is_ood(cal.combined_score(s[n_cal:])).sum())
    n = trials * n_test
    rate = rejected / n
    tol = 4 * math.sqrt(alpha * (1 - alpha) / n)  # 4 sigma of the estimate (sigma = 0.0011)
    assert rate <= alpha + tol, rate
    if rule == "bonferroni" and dependence == "identical":
        # identical rankings: K * min p = 3 p <= alpha <=> p <= alpha / 3 -> floor(alpha/3 * 200) / 200 = 0.015
        assert abs(rate - 3 / 200) < 4 * math.sqrt(0.015 * 0.985 / n)
    if rule == "cauchy" and dependence == "identical":
        # equal p-values combine to themselves: the single-detector rate floor(alpha * 200) / 200 = 0.05
        assert abs(rate - 0.05) < tol
    assert rate > 0.01  # the screen does reject (the bound is not met by rejecting nothing)
