"""OoD metrics. Convention: scores are higher for in-distribution (ID) inputs.

* **AUROC**: area under the ROC curve of ID (positive) vs OoD (negative), scikit-learn's
  ``roc_auc_score`` (ties count one half). The AUROC is the same whichever class is called positive.
* **FPR@95TPR, ID positive** (key ``fpr95``, l2ood's convention since 0.1.0; "FPR95 (ID+)" in tables):
  the fraction of OoD inputs *accepted* (score ≥ t) when the threshold t keeps 95 % of the ID test
  inputs. Precisely, ``t`` is the largest value with ``mean(s_ID ≥ t) ≥ 0.95``, i.e. the
  ⌈0.95·n⌉-th largest of the n ID scores, and ``FPR = mean(s_OoD ≥ t)``; OoD scores tied with t are
  accepted. Lower is better. This is the convention of Liang et al. (ODIN, ICLR 2018) and Hendrycks et al.
* **FPR@95TPR, OoD positive** (key ``fpr95_ood_pos``; "FPR95 (OoD+)" in tables): OpenOOD v1.5's and
  pytorch-ood's convention. OoD is the positive class and ``−score`` the outlier score; it is the
  fraction of ID inputs *flagged* as OoD when the threshold flags 95 % of the m OoD inputs.
  Precisely, ``u`` is the ⌈0.95·m⌉-th smallest OoD score, an input is flagged when ``score ≤ u``,
  and ``FPR = mean(s_ID ≤ u)`` (ID scores tied with u are flagged). Lower is better. It equals
  ``fpr95`` with the roles of the two sets swapped and the scores negated:
  ``fpr95_ood_pos(id, ood) = fpr95(−ood, −id)``.
  OpenOOD v1.5 (``openood/evaluators/metrics.py``, ``auc_and_fpr_recall``) computes
  ``fpr[argmax(tpr ≥ 0.95)]`` of ``sklearn.metrics.roc_curve(ood_indicator, −conf)``; pytorch-ood
  (``pytorch_ood.utils.metrics.fpr_at_tpr``) the FPR at the first ROC point with TPR ≥ 0.95 of its
  outlier scores — both the definition above. One difference: sklearn's ``roc_curve`` drops collinear
  ROC points by default (``drop_intermediate=True``), so where runs of *tied* ID and OoD scores make
  consecutive ROC points collinear OpenOOD can report the next kept point, a higher FPR (e.g. 1.0
  instead of 0.95 for ID = OoD = {0, …, 19}); without ties the two agree exactly.
* **AUPR-In**: average precision with ID as the positive class and the score as is.
* **AUPR-Out**: average precision with OoD as the positive class and ``-score``.

The two FPR@95 conventions measure different errors (OoD let through vs ID rejected) and can differ
by tens of points for the same scores; compare numbers only within one convention.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ..errors import ConfigError


class OODMetrics(TypedDict):
    """The metrics of :func:`ood_metrics` (fractions in [0, 1]; see the module doc for each definition)."""

    auroc: float
    fpr95: float  # ID positive: fraction of OoD accepted while 95 % of ID is kept (l2ood's convention)
    fpr95_ood_pos: float  # OoD positive: fraction of ID flagged while 95 % of OoD is flagged (OpenOOD v1.5)
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
    """FPR at ``tpr`` with **ID positive** (key ``fpr95``): the fraction of OoD scores ≥ t, where t is the
    ⌈tpr·n⌉-th largest of the n ID scores (see the module doc).

    >>> fpr_at_tpr([1, 2, 3, 4], [0.5, 2, 2.5], tpr=0.75)  # t = 2 keeps 3 of 4 ID; OoD 2 and 2.5 pass
    0.6666666666666666
    """
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    a, b = _check(id_scores, ood_scores)
    k = math.ceil(tpr * a.size - 1e-9)  # how many ID scores must be accepted
    t = np.sort(a)[::-1][k - 1]
    return float(np.mean(b >= t))


def fpr_at_tpr_ood_pos(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> float:
    """FPR at ``tpr`` with **OoD positive** (key ``fpr95_ood_pos``; OpenOOD v1.5 / pytorch-ood): the fraction of
    ID scores ≤ u, where u is the ⌈tpr·m⌉-th smallest of the m OoD scores, i.e. of ID inputs flagged as OoD
    when ``tpr`` of the OoD inputs are flagged (see the module doc). Equals ``fpr_at_tpr(−ood, −id, tpr)``.

    >>> fpr_at_tpr_ood_pos([1, 2, 3, 4], [0.5, 2, 2.5], tpr=0.95)  # u = 2.5 flags all OoD and ID 1, 2
    0.5
    """
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    a, b = _check(id_scores, ood_scores)
    k = math.ceil(tpr * b.size - 1e-9)  # how many OoD scores must be flagged
    u = np.sort(b)[k - 1]
    return float(np.mean(a <= u))


def threshold_at_tpr(id_scores: ArrayLike, tpr: float = 0.95) -> float:
    """The threshold t of :func:`fpr_at_tpr`: the ⌈tpr·n⌉-th largest ID score."""
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    k = math.ceil(tpr * a.size - 1e-9)
    return float(np.sort(a)[::-1][k - 1])


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> OODMetrics:
    """AUROC, FPR@95TPR in both conventions (``fpr95``: ID positive; ``fpr95_ood_pos``: OoD positive, as
    OpenOOD v1.5), AUPR-In and AUPR-Out (higher score = ID)."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones_like(a), np.zeros_like(b)])
    s = np.concatenate([a, b])
    return OODMetrics(
        auroc=float(roc_auc_score(y, s)),
        fpr95=fpr_at_tpr(a, b, 0.95),
        fpr95_ood_pos=fpr_at_tpr_ood_pos(a, b, 0.95),
        aupr_in=float(average_precision_score(y, s)),
        aupr_out=float(average_precision_score(1 - y, -s)),
    )


def roc(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` with ID as the positive class (for plots)."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones_like(a), np.zeros_like(b)])
    fpr, tpr, _ = roc_curve(y, np.concatenate([a, b]))
    return fpr, tpr
