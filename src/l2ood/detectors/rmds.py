"""Relative Mahalanobis distance score (RMDS).

``S(x) = −min_c [MD_c(z) − MD_0(z)]`` where ``MD_c(z) = (z − μ_c)ᵀ Σ⁺ (z − μ_c)`` uses the class means
and the tied covariance of :mod:`~l2ood.detectors.mahalanobis`, and the background distance
``MD_0(z) = (z − μ_0)ᵀ Σ_0⁺ (z − μ_0)`` uses one Gaussian fit to all ID training features: global mean
``μ_0`` and global covariance ``Σ_0 = (1/N) Σ_i (z_i − μ_0)(z_i − μ_0)ᵀ``. Pseudo-inverses in float64.
Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to Mahalanobis Distance for Improving
Near-OOD Detection", arXiv:2106.09022, 2021. No hyper-parameters (OpenOOD's RMDS additionally scales
both distances by 1/2, which does not change the ranking); ``chunk_size = 8192`` rows bounds memory.
"""

from __future__ import annotations

from torch import Tensor

from ._gaussian import TiedGaussians, cat_scores, fit_class_gaussians, precision
from .base import register
from .features import Extraction, Head
from .mahalanobis import Mahalanobis


@register
class RelativeMahalanobis(Mahalanobis):
    """``−min_c MD_c(z) + MD_0(z)`` (higher = ID)."""

    name = "rmds"
    fitted_state = ("_dist", "_background")

    def __init__(self, chunk_size: int = 8192) -> None:
        super().__init__(chunk_size)
        self._background: TiedGaussians | None = None

    def fit(self, train: Extraction, head: Head) -> RelativeMahalanobis:
        g = fit_class_gaussians(train, self.chunk_size, self._fit_transform())
        self._dist = TiedGaussians(g.means, precision(g.cov), center=g.global_mean)
        self._background = TiedGaussians(g.global_mean[None, :], precision(g.global_cov),
                                          center=g.global_mean)
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        dist = self._require_fit()
        assert self._background is not None
        out = []
        for c in x.chunks(self.chunk_size):
            z = self._transform(c.features.double())
            # min_c (MD_c − MD_0) = min_c MD_c − MD_0 (MD_0 does not depend on c)
            out.append(self._background.sq_distances(z)[:, 0] - dist.sq_distances(z).min(dim=1).values)
        return cat_scores(out)
