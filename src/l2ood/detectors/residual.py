"""Residual — minus the norm of the feature component outside the principal subspace (ViM's residual).

With the head ``W, b``, the origin ``u = −pinv(W)·b`` and ``P⊥`` the eigenvectors of the uncentered second
moment ``Σ = (1/N) Σ_i (z_i − u)(z_i − u)ᵀ`` of the ID training features beyond the top ``dim``::

    S(x) = −‖(z − u)ᵀ P⊥‖₂                            (higher = ID)

the residual-only baseline of Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit
Matching", CVPR 2022. Fit and residual are :class:`~l2ood.detectors.vim.ViM`'s (same defaults:
``dim = 256`` if ``D ≥ 512`` else ``D // 2``; ``chunk_size = 8192``); the logits are not used.

Reference disagreement: OpenOOD v1.5's ``residual.yml`` sets ``dim = 512`` (for ImageNet-scale ``D``;
with ResNet18's ``D = 512`` that leaves no residual) and fits on its validation split, not the
training set.
"""

from __future__ import annotations

from torch import Tensor

from .base import register
from .features import Extraction, Head
from .vim import ViM


@register
class Residual(ViM):
    """``−‖(z − u)ᵀP⊥‖`` (higher = ID)."""

    name = "residual"
    uses_logits = False

    def score(self, x: Extraction, head: Head) -> Tensor:
        return (-self.residual_norm(x.features)).float()
