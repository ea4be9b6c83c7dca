"""GEN — generalized entropy of the top-M softmax probabilities.

``S(x) = −Σ_{i ∈ top-M} p_i^γ (1 − p_i)^γ`` with ``p = softmax(f(x))``; the sum runs over the ``M``
largest probabilities (``M`` capped at the number of classes ``C``).
Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection",
CVPR 2023. Defaults ``γ = 0.1``, ``M = 100`` (so all classes for C ≤ 100).

Computed in the log domain in float64 (:func:`~l2ood.detectors._softmax.top_softmax`): each term is
``exp(γ (log p_i + log(1 − p_i)))`` with ``log p_i = d_i − log1p(s)`` (``d_i = f_i − max f``,
``s = Σ_{c≠ŷ} exp(d_c)``) and ``log(1 − p_i) = log((1 − exp(d_i)) + s) − log1p(s)``, since
``1 − p_i = (1 + s − exp(d_i)) / (1 + s)``: at the top ``1 − exp(0) = 0`` exactly, leaving ``log s − log1p(s)``,
where ``1 − p_ŷ`` computed from ``p_ŷ`` is 0 once ``s`` is below the unit roundoff (logit margins above ~17 in
float32), which dropped the top class's term ``≈ s^γ``, the largest one. Scores of confident inputs stay
distinct and correctly ordered up to margins of ~700. Since l2ood 0.2 (score version 2): calibrations made with
the float32 values of 0.1 are refused.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..errors import ConfigError
from ._softmax import by_blocks, scalar, top_softmax
from .base import Detector, SearchSpace, register
from .features import Extraction, Head


@register
class GEN(Detector):
    """``−Σ_topM p^γ (1−p)^γ``, float64 (higher = ID)."""

    name = "gen"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"gamma": (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0), "top_m": (10, 50, 100)}
    uses_logits = True
    score_version: ClassVar[int] = 2
    score_change: ClassVar[str] = ("the gen score is computed in float64 with the top class's 1 − p exact "
                                   "(log domain) since 0.2")

    def __init__(self, gamma: float = 0.1, top_m: int = 100) -> None:
        if not gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {gamma}")
        if top_m < 1:
            raise ConfigError(f"top_m must be >= 1, got {top_m}")
        self.gamma = float(gamma)
        self.top_m = int(top_m)

    def score(self, x: Extraction, head: Head) -> Tensor:
        return by_blocks(self._score, x.logits)

    def _score(self, f: Tensor) -> Tensor:
        sm = top_softmax(f)  # float64; for C < 16 views of the faster (C, N) layout
        if self.top_m < f.shape[1]:  # the top-M probabilities are those of the top-M logits
            d = sm.d.topk(self.top_m, dim=1, sorted=False).values
            sm = sm._replace(d=d, e=d.exp())
        # p^γ (1 − p)^γ = exp(γ (log p + log(1 − p))), log(1 − p) exact at the top (TopSoftmax.log_1m_p)
        return -(sm.log_p + sm.log_1m_p).mul_(scalar(self.gamma, f)).exp_().sum(dim=1)
