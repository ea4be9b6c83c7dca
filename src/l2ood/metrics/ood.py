"""OoD metrics. Convention: scores are higher for in-distribution (ID) inputs; ID is the positive class.

* **AUROC**: area under the ROC curve of ID (positive) vs OoD (negative), scikit-learn's
  ``roc_auc_score`` (ties count one half).
* **FPR@95TPR**: the fraction of OoD inputs *accepted* (score ≥ t) when the threshold t keeps 95 %
  of the ID test inputs. Precisely, ``t`` is the largest value with ``mean(s_ID ≥ t) ≥ 0.95``, i.e. the
  ⌈0.95·n⌉-th largest ID score, and ``FPR = mean(s_OoD ≥ t)``; OoD scores tied with t are accepted.
  Lower is better.
* **AUPR-In**: average precision with ID as the positive class and the score as is.
* **AUPR-Out**: average precision with OoD as the positive class and ``-score``.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ..errors import ConfigError


class OODMetrics(TypedDict):
    auroc: float
    fpr95: float
    aupr_in: float
    aupr_out: float


def _check(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ConfigError("need at least one ID and one OoD score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("scores must be finite (got NaN or inf)")
    return a, b


def fpr_at_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> float:
    """Fraction of OoD scores ≥ t, where t is the ⌈tpr·n⌉-th largest ID score (see module doc)."""
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    a, b = _check(id_scores, ood_scores)
    k = math.ceil(tpr * a.size - 1e-9)  # how many ID scores must be accepted
    t = np.sort(a)[::-1][k - 1]
    return float(np.mean(b >= t))


def threshold_at_tpr(id_scores: ArrayLike, tpr: float = 0.95) -> float:
    """The threshold t of :func:`fpr_at_tpr`: the ⌈tpr·n⌉-th largest ID score."""
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    k = math.ceil(tpr * a.size - 1e-9)
    return float(np.sort(a)[::-1][k - 1])


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> OODMetrics:
    """AUROC, FPR@95TPR, AUPR-In and AUPR-Out (ID = positive, higher score = ID)."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones_like(a), np.zeros_like(b)])
    s = np.concatenate([a, b])
    return OODMetrics(
        auroc=float(roc_auc_score(y, s)),
        fpr95=fpr_at_tpr(a, b, 0.95),
        aupr_in=float(average_precision_score(y, s)),
        aupr_out=float(average_precision_score(1 - y, -s)),
    )


def roc(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` with ID as the positive class (for plots)."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones_like(a), np.zeros_like(b)])
    fpr, tpr, _ = roc_curve(y, np.concatenate([a, b]))
    return fpr, tpr
