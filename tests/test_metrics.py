"""Metrics on hand-worked examples, ties, and the FPR@95TPR definition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from l2ood.metrics import fpr_at_tpr, ood_metrics, threshold_at_tpr


def test_perfect_and_reversed_separation() -> None:
    m = ood_metrics([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
    assert m == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}
    r = ood_metrics([0.0, 1.0], [2.0, 3.0])
    assert r["auroc"] == 0.0 and r["fpr95"] == 1.0


def test_auroc_hand_example_with_ties() -> None:
    # ID {1, 2, 3}, OoD {2, 0}: pairs (ID > OoD) = 1>0, 2>0, 3>0, 3>2 = 4 wins, (2 vs 2) tie = 0.5,
    # 1<2 loss -> (4 + 0.5) / 6
    m = ood_metrics([1.0, 2.0, 3.0], [2.0, 0.0])
    assert m["auroc"] == pytest.approx(4.5 / 6)


def test_all_tied_scores() -> None:
    m = ood_metrics([1.0] * 10, [1.0] * 10)
    assert m["auroc"] == 0.5
    assert m["fpr95"] == 1.0  # tied OoD scores are accepted at the threshold


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
