"""Feature norm — the score of the L2 method.

``S(x) = ‖z(x)‖₂``, the Euclidean norm of the unnormalized penultimate features.
Haas, Yolland & Rabus, "Exploring Simple, High Quality Out-of-Distribution Detection with L2
Normalization", TMLR 2024 (arXiv:2306.04072). No hyper-parameters.
"""

from __future__ import annotations

from torch import Tensor

from .base import Detector, register
from .features import Extraction, Head


@register
class FeatureNorm(Detector):
    """``‖z‖₂`` (higher = ID)."""

    name = "feature_norm"

    def score(self, x: Extraction, head: Head) -> Tensor:
        return x.features.float().norm(p=2, dim=1)
