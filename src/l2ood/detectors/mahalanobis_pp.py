"""Mahalanobis++: the Mahalanobis score on L2-normalized features.

``S(x) = −min_c (ẑ − μ_c)ᵀ Σ⁺ (ẑ − μ_c)`` with ``ẑ = z / max(‖z‖₂, ε)``; the class means ``μ_c`` and
the tied covariance ``Σ = (1/N) Σ_c Σ_{i∈c} (ẑ_i − μ_c)(ẑ_i − μ_c)ᵀ`` are fit on the L2-normalized ID
training features (everything else as :mod:`~l2ood.detectors.mahalanobis`).
Mueller & Hein, "Mahalanobis++: Improving OOD Detection via Feature Normalization", ICML 2025
(arXiv:2505.18032). Defaults: ``eps = 1e-12`` (as ``torch.nn.functional.normalize``; a zero feature
vector maps to 0), ``chunk_size = 8192`` rows (memory only).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import register
from .mahalanobis import Mahalanobis


@register
class MahalanobisPP(Mahalanobis):
    """Mahalanobis on ``z/‖z‖`` (higher = ID)."""

    name = "mahalanobis++"

    def __init__(self, chunk_size: int = 8192, eps: float = 1e-12) -> None:
        super().__init__(chunk_size)
        if not eps > 0:
            raise ConfigError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def _transform(self, z: Tensor) -> Tensor:
        return F.normalize(z, p=2.0, dim=1, eps=self.eps)
