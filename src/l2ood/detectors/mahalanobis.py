"""Mahalanobis distance score (MDS), feature-only version.

``S(x) = −min_c (z − μ_c)ᵀ Σ⁺ (z − μ_c)`` with class means ``μ_c`` and ONE tied covariance
``Σ = (1/N) Σ_c Σ_{i∈c} (z_i − μ_c)(z_i − μ_c)ᵀ`` (maximum likelihood, normalized by the number
of training rows N) of the unnormalized penultimate features ``z`` of the ID training set;
``Σ⁺ = pinv(Σ)`` (Hermitian pseudo-inverse in float64, as sklearn's ``EmpiricalCovariance`` used by
OpenOOD's MDS).
Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018 — here without input preprocessing and without the feature
ensemble over layers (as OpenOOD's MDS). No hyper-parameters; ``chunk_size = 8192`` rows bounds the
memory of fit and score (it does not change the result).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ._gaussian import (
    TIED_STATE,
    TiedGaussians,
    Transform,
    cat_scores,
    check_chunk_size,
    fit_class_gaussians,
    precision,
)
from .base import Detector, _check_keys, register
from .features import Extraction, Head


@register
class Mahalanobis(Detector):
    """``−min_c MD_c(z)`` with a tied covariance (higher = ID). Subclasses may transform ``z``."""

    name = "mahalanobis"
    needs_fit = True
    fitted_state: ClassVar[tuple[str, ...]] = ("_dist",)  # TiedGaussians, saved as dist.center, dist.prec, ...
    #: the fit reduces per-rank sufficient statistics (``fit_class_gaussians``): under torchrun each rank fits from
    #: its own shard of the training rows (:mod:`l2ood.distributed`); RMDS and Mahalanobis++ inherit it
    shard_fit: ClassVar[bool] = True

    def __init__(self, chunk_size: int = 8192) -> None:
        self.chunk_size = check_chunk_size(chunk_size)
        self._dist: TiedGaussians | None = None

    def _transform(self, z: Tensor) -> Tensor:
        """Feature map applied (to float64 chunks) before fit and score; identity here."""
        return z

    def _fit_transform(self) -> Transform | None:
        """:meth:`_transform` for :func:`fit_class_gaussians`; ``None`` where it is the identity (no float64 copy)."""
        return None if type(self)._transform is Mahalanobis._transform else self._transform

    def fit(self, train: Extraction, head: Head) -> Mahalanobis:
        g = fit_class_gaussians(train, self.chunk_size, self._fit_transform())
        self._dist = TiedGaussians(g.means, precision(g.cov), center=g.global_mean)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for a in self.fitted_state:
            g = getattr(self, a)
            if g is None:
                raise RuntimeError(f"detector '{self.name}' is not fitted: nothing to save")
            out.update(g.state(a.lstrip("_") + "."))
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> Mahalanobis:
        _check_keys(self.name, state, [f"{a.lstrip('_')}.{k}" for a in self.fitted_state for k in TIED_STATE])
        for a in self.fitted_state:
            setattr(self, a, TiedGaussians.from_state(state, a.lstrip("_") + "."))
        return self

    def _require_fit(self) -> TiedGaussians:
        if self._dist is None:
            raise RuntimeError(f"detector '{self.name}' must be fit on ID training features before score()")
        return self._dist

    def score(self, x: Extraction, head: Head) -> Tensor:
        dist = self._require_fit()
        out = [-dist.sq_distances(self._transform(c.features.double())).min(dim=1).values
               for c in x.chunks(self.chunk_size)]
        return cat_scores(out)

