"""GEN — generalized entropy of the top-M softmax probabilities.

``S(x) = −Σ_{i ∈ top-M} p_i^γ (1 − p_i)^γ`` with ``p = softmax(f(x))``; the sum runs over the ``M``
largest probabilities (``M`` capped at the number of classes ``C``).
Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection",
CVPR 2023. Defaults ``γ = 0.1``, ``M = 100`` (so all classes for C ≤ 100).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..errors import ConfigError
from ._softmax import softmax
from .base import Detector, SearchSpace, register
from .features import Extraction, Head


@register
class GEN(Detector):
    """``−Σ_topM p^γ (1−p)^γ`` (higher = ID)."""

    name = "gen"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"gamma": (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0), "top_m": (10, 50, 100)}
    uses_logits = True

    def __init__(self, gamma: float = 0.1, top_m: int = 100) -> None:
        if not gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {gamma}")
        if top_m < 1:
            raise ConfigError(f"top_m must be >= 1, got {top_m}")
        self.gamma = float(gamma)
        self.top_m = int(top_m)

    def score(self, x: Extraction, head: Head) -> Tensor:
        p = softmax(x.logits.float())  # (N, C); for C < 16 a view of the faster (C, N) layout
        if self.top_m < p.shape[1]:  # otherwise all classes: no selection needed
            p = p.topk(self.top_m, dim=1, sorted=False).values
        return -(p * (1.0 - p)).pow_(self.gamma).sum(dim=1)  # p^γ (1 − p)^γ = (p (1 − p))^γ
