"""L1 feature norm.

``S(x) = ‖z(x)‖₁ = Σ_j |z_j|``, the L1 variant of the method's feature-norm score
(:mod:`~l2ood.detectors.feature_norm` uses ``‖z‖₂``) on the unnormalized penultimate features.
Haas, Yolland & Rabus, "Exploring Simple, High Quality Out-of-Distribution Detection with L2
Normalization", TMLR 2024 (arXiv:2306.04072). No hyper-parameters, no fit, no logits.
"""

from __future__ import annotations

from torch import Tensor

from .base import Detector, register
from .features import Extraction, Head


@register
class L1Norm(Detector):
    """``‖z‖₁`` (higher = ID)."""

    name = "l1_norm"

    def score(self, x: Extraction, head: Head) -> Tensor:
        return x.features.float().abs().sum(dim=1)
