"""Metrics on hand-worked examples, ties, and the FPR@95TPR definitions (ID positive and OoD positive)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from l2ood.metrics import fpr_at_tpr, fpr_at_tpr_ood_pos, ood_metrics, threshold_at_tpr


def test_perfect_and_reversed_separation() -> None:
    m = ood_metrics([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
    assert m == {"auroc": 1.0, "fpr95": 0.0, "fpr95_ood_pos": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}
    r = ood_metrics([0.0, 1.0], [2.0, 3.0])
    assert r["auroc"] == 0.0 and r["fpr95"] == 1.0 and r["fpr95_ood_pos"] == 1.0


def test_auroc_hand_example_with_ties() -> None:
    # ID {1, 2, 3}, OoD {2, 0}: pairs (ID > OoD) = 1>0, 2>0, 3>0, 3>2 = 4 wins, (2 vs 2) tie = 0.5,
    # 1<2 loss -> (4 + 0.5) / 6
    m = ood_metrics([1.0, 2.0, 3.0], [2.0, 0.0])
    assert m["auroc"] == pytest.approx(4.5 / 6)


def test_all_tied_scores() -> None:
    m = ood_metrics([1.0] * 10, [1.0] * 10)
    assert m["auroc"] == 0.5
    assert m["fpr95"] == 1.0  # tied OoD scores are accepted at the threshold
    assert m["fpr95_ood_pos"] == 1.0  # tied ID scores are flagged at the threshold


def test_fpr95_definition_worked_example() -> None:
    id_scores = np.arange(1, 21, dtype=float)  # 20 ID scores 1..20
    # 95 % of 20 = 19 must be accepted -> threshold = 19th largest = 2
    assert threshold_at_tpr(id_scores, 0.95) == 2.0
    assert fpr_at_tpr(id_scores, [1.0, 2.0, 3.0], 0.95) == pytest.approx(2 / 3)
    assert fpr_at_tpr(id_scores, [1.99, 0.0], 0.95) == 0.0
    # 21 ID scores: ceil(0.95 * 21) = 20 accepted -> threshold = 20th largest
    id21 = np.arange(1, 22, dtype=float)
    assert threshold_at_tpr(id21, 0.95) == 2.0


def test_fpr95_matches_sklearn_roc_on_random_data() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.normal(1.0, 1.0, rng.integers(50, 300)).round(1)  # rounding creates ties
        b = rng.normal(0.0, 1.0, rng.integers(50, 300)).round(1)
        y = np.r_[np.ones_like(a), np.zeros_like(b)]
        fpr, tpr, _ = roc_curve(y, np.r_[a, b], drop_intermediate=False)
        expected = fpr[np.searchsorted(tpr, 0.95 - 1e-12, side="left")]
        assert fpr_at_tpr(a, b) == pytest.approx(expected)


def test_aupr_in_and_out_hand_example() -> None:
    # ID = positives with scores [3, 1]; OoD [2]. Ranking by score: 3 (ID), 2 (OoD), 1 (ID)
    # AP_in = (1/1 * 1 + 2/3 * 1) / 2 = 5/6
    # AUPR-Out: OoD positive, score -s: ranking -1 (ID) ... -2 (OoD) is 2nd -> AP = 1/2
    m = ood_metrics([3.0, 1.0], [2.0])
    assert m["aupr_in"] == pytest.approx(5 / 6)
    assert m["aupr_out"] == pytest.approx(1 / 2)


def test_invalid_scores_raise() -> None:
    with pytest.raises(ValueError, match="finite"):
        ood_metrics([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="at least one"):
        ood_metrics([], [0.0])
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([1.0], [0.0], tpr=0.0)


# ---------------------------------------------------------------- FPR@95 with OoD as the positive class


def test_the_two_conventions_differ_on_a_worked_example() -> None:
    # ID 1..20, OoD {0.5, 1.5, 2.5, 15}.
    id_scores = np.arange(1, 21, dtype=float)
    ood = [0.5, 1.5, 2.5, 15.0]
    # ID positive: keep ceil(0.95*20) = 19 ID -> t = 2; OoD >= 2: {2.5, 15} -> 2/4
    assert fpr_at_tpr(id_scores, ood) == 0.5
    # OoD positive: flag ceil(0.95*4) = 4 OoD -> u = 4th smallest OoD = 15; ID <= 15: 1..15 -> 15/20
    assert fpr_at_tpr_ood_pos(id_scores, ood) == 0.75
    m = ood_metrics(id_scores, ood)
    assert (m["fpr95"], m["fpr95_ood_pos"]) == (0.5, 0.75)


def test_fpr95_ood_pos_worked_examples_with_ties() -> None:
    # 20 OoD scores 1..20: flag ceil(19) = 19 of them -> u = 19th smallest = 19; ID <= 19 are flagged
    ood = np.arange(1, 21, dtype=float)
    assert fpr_at_tpr_ood_pos([19.0, 19.5, 30.0], ood) == pytest.approx(1 / 3)  # 19 is tied with u: flagged
    assert fpr_at_tpr_ood_pos([19.01, 25.0], ood) == 0.0
    # 21 OoD scores: ceil(0.95 * 21) = 20 -> u = 20th smallest
    assert fpr_at_tpr_ood_pos([20.0, 20.5], np.arange(1, 22, dtype=float)) == 0.5
    # one OoD score: u is it; tpr = 1 flags all OoD
    assert fpr_at_tpr_ood_pos([0.0, 1.0, 2.0], [1.0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr_ood_pos([1.0], [0.0], tpr=1.5)


def _first_roc_point(y: np.ndarray, s: np.ndarray, tpr: float, drop: bool) -> float:
    fpr, tp, _ = roc_curve(y, s, drop_intermediate=drop)
    return float(fpr[int(np.argmax(tp >= tpr))])


def test_fpr95_ood_pos_is_the_ood_positive_roc_point_on_random_data() -> None:
    """Independent formula: sklearn's ROC curve with OoD = positive and score -s (all points kept), the first
    point with TPR >= 0.95 (pytorch-ood's fpr_at_tpr); and the role-swap identity with the ID-positive rule."""
    rng = np.random.default_rng(3)
    for _ in range(30):
        a = rng.normal(1.0, 1.0, rng.integers(20, 300)).round(1)  # rounding creates ties
        b = rng.normal(0.0, 1.0, rng.integers(20, 300)).round(1)
        y = np.r_[np.zeros_like(a), np.ones_like(b)]
        got = fpr_at_tpr_ood_pos(a, b)
        assert got == pytest.approx(_first_roc_point(y, -np.r_[a, b], 0.95, drop=False))
        assert got == pytest.approx(fpr_at_tpr(-b, -a))
        # OpenOOD v1.5 keeps sklearn's default drop_intermediate=True: never lower, equal without ties
        assert got <= _first_roc_point(y, -np.r_[a, b], 0.95, drop=True) + 1e-12
        c, d = rng.normal(1.0, 1.0, 150), rng.normal(0.0, 1.0, 120)  # continuous: no ties
        yc = np.r_[np.zeros_like(c), np.ones_like(d)]
        assert fpr_at_tpr_ood_pos(c, d) == pytest.approx(_first_roc_point(yc, -np.r_[c, d], 0.95, drop=True))


def test_openood_drop_intermediate_differs_only_on_collinear_ties() -> None:
    # every value holds one ID and one OoD score: the ROC is one diagonal and sklearn's default keeps only its
    # end points, so OpenOOD's recipe reports 1.0 where the 95 % operating point has FPR 0.95
    a = b = np.arange(20, dtype=float)
    y = np.r_[np.zeros(20), np.ones(20)]
    assert fpr_at_tpr_ood_pos(a, b) == 0.95
    assert _first_roc_point(y, -np.r_[a, b], 0.95, drop=True) == 1.0
