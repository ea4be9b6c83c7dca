"""Calibration of a screening threshold on held-out ID data, and split-conformal p-values.

Scores follow the l2ood convention (higher = more in-distribution).

**Threshold at a target TPR.** ``t`` = the ⌈tpr·n⌉-th largest of the n calibration scores; an input
is accepted as ID when ``score ≥ t``. On the calibration set exactly ⌈tpr·n⌉ of n are accepted.

**Conformal p-values** (split conformal; Vovk, Gammerman & Shafer, *Algorithmic Learning in a
Random World*, 2005; Bates et al., "Testing for Outliers with Conformal p-values", Ann. Stat. 2023).
For a new input with score s and calibration scores s_1..s_n,

    p(s) = (1 + #{i : s_i ≤ s}) / (n + 1).

If the new input and the calibration inputs are *exchangeable* (e.g. i.i.d. draws from the same ID
distribution, the calibration split never used for training or threshold tuning), then for every
α ∈ (0, 1): P(p ≤ α) ≤ α. Rejecting when ``p ≤ α`` therefore rejects ID inputs at a rate of at most
α in expectation over the calibration draw (finite-sample, no distributional assumption on the
scores). The guarantee says nothing about the OoD acceptance rate, and it breaks when the ID data
at deployment drift away from the calibration data (exchangeability fails).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import numpy as np
from numpy.typing import ArrayLike
from pydantic import AfterValidator, ConfigDict, Field

from ..errors import ConfigError


def _ascending(v: list[float]) -> list[float]:
    if any(b < a for a, b in itertools.pairwise(v)):
        raise ValueError("calibration scores must be sorted ascending")
    return v


MAX_CALIBRATION_SCORES = 10_000_000
_Finite = Annotated[float, Field(allow_inf_nan=False)]


@dataclass
class Calibration:
    """A calibrated screen: detector, threshold and the sorted calibration scores.

    The annotations are the schema a run record validates when it is loaded (all values finite,
    ``tpr`` in (0, 1], ``alpha`` in (0, 1), scores ascending)."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    detector: Annotated[str, Field(min_length=1, max_length=64)]
    tpr: Annotated[float, Field(gt=0, le=1)]
    threshold: _Finite
    alpha: Annotated[float, Field(gt=0, lt=1)] | None  # when set: p ≤ alpha → OoD; else score < threshold → OoD
    scores: Annotated[list[_Finite], Field(min_length=1, max_length=MAX_CALIBRATION_SCORES),
                      AfterValidator(_ascending)]  # calibration scores, ascending
    split: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.scores)

    def p_values(self, s: ArrayLike) -> np.ndarray:
        """Conformal p-values ``(1 + #{s_i ≤ s}) / (n + 1)``."""
        return conformal_p_values(np.asarray(self.scores), s)

    def is_ood(self, s: ArrayLike) -> np.ndarray:
        """Verdict per score: True = out of distribution."""
        s = np.asarray(s, dtype=np.float64)
        if self.alpha is not None:
            return self.p_values(s) <= self.alpha
        return s < self.threshold

    def rule(self) -> str:
        if self.alpha is not None:
            return f"OoD when conformal p-value ≤ {self.alpha} (n_cal = {self.n})"
        return f"OoD when {self.detector} < {self.threshold:.6g} (keeps {100 * self.tpr:.1f} % of ID)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Validated construction (raises :class:`l2ood.errors.ConfigError` naming the bad key)."""
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(cls).validate_python(d)
        except ValidationError as e:
            raise ConfigError("calibration: " + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None


def threshold_for_tpr(cal_scores: ArrayLike, tpr: float) -> float:
    """The ⌈tpr·n⌉-th largest calibration score (accept when ``score ≥ threshold``).

    >>> threshold_for_tpr([1.0, 2.0, 3.0, 4.0], 0.75)  # keeps 3 of the 4 calibration scores
    2.0
    """
    a = np.sort(np.asarray(cal_scores, dtype=np.float64).ravel())[::-1]
    if a.size == 0:
        raise ConfigError("no calibration scores")
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    k = math.ceil(tpr * a.size - 1e-9)
    return float(a[k - 1])


def conformal_p_values(cal_scores: ArrayLike, s: ArrayLike) -> np.ndarray:
    """``p(s) = (1 + #{i: cal_i ≤ s}) / (n + 1)`` for each s (vectorized with a sorted search).

    >>> conformal_p_values([1.0, 2.0, 3.0], [0.5, 2.0, 9.0]).tolist()
    [0.25, 0.75, 1.0]
    """
    cal = np.sort(np.asarray(cal_scores, dtype=np.float64).ravel())
    s = np.asarray(s, dtype=np.float64)
    counts = np.searchsorted(cal, s, side="right")
    return (1.0 + counts) / (cal.size + 1.0)


def calibrate(cal_scores: ArrayLike, detector: str = "feature_norm", tpr: float = 0.95,
              alpha: float | None = None, split: dict[str, Any] | None = None) -> Calibration:
    """Build a :class:`Calibration` from held-out ID scores."""
    a = np.asarray(cal_scores, dtype=np.float64).ravel()
    if a.size == 0:
        raise ConfigError("no calibration scores")
    if not np.isfinite(a).all():
        raise ConfigError(f"calibration scores must be finite ({int((~np.isfinite(a)).sum())} of {a.size} are "
                          "NaN or infinite: the model produces non-finite features on ID data)")
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    if alpha is not None and not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    if alpha is not None and alpha < 1 / (a.size + 1):
        raise ConfigError(f"alpha = {alpha} is below 1/(n+1) = {1 / (a.size + 1):.2g}: with {a.size} "
                         "calibration images no input could ever be rejected; use more calibration data")
    return Calibration(detector, tpr, threshold_for_tpr(a, tpr), alpha, sorted(a.tolist()), split or {})
