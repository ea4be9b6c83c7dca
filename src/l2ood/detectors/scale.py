"""SCALE — percentile-based scaling of the whole feature vector (no pruning), scored with the energy.

Per sample with features ``z ∈ R^D``: ``s1 = Σ_j z_j``; ``s2`` = the sum of the ``k`` largest entries
(the values at or above the sample's ``p``-th percentile); ``r = s1 / s2``;
``S(x) = log Σ_c exp(f_c(z · exp(r)))`` — the energy (``T = 1``) of the logits that the head forms from
the *unpruned* features scaled by ``exp(r)`` (in the head's variant). ASH-S prunes and scales; SCALE
only scales.
Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution Detection
Enhancement", ICLR 2024. Default ``p = 85`` (OpenOOD v1.5's ``scale.yml`` and the authors' repository).

``k = D − round(D·p/100)`` (at least 1) as in ASH (:func:`~l2ood.detectors.ash.ash_keep_count`); the
same guards as ASH-S: ``r = 0`` where ``s2 = 0`` and ``r ≤ 80`` (finite in fp32). Note: for heads whose
trained logits normalize ``z`` (``l2``, ``t2fnorm``) a positive rescaling does not change the
``trained`` logits at all, so ``scale:trained`` equals ``energy:trained`` there; the ``raw`` variant
sees the scaling.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..errors import ConfigError
from .ash import ash_keep_count, sharpening_exponent
from .base import Detector, SearchSpace, register
from .features import Extraction, Head


def scale_features(z: Tensor, percentile: float = 85.0) -> Tensor:
    """SCALE-d features ``z·exp(s1/s2)`` of ``z`` ``(N, D)`` (a new tensor, fp32)."""
    z = z.float()
    if z.shape[1] == 0:
        return z.clone()
    k = ash_keep_count(z.shape[1], percentile)
    r = sharpening_exponent(z.sum(dim=1), z.topk(k, dim=1, sorted=False).values.sum(dim=1))
    return z * r.exp().unsqueeze(1)


@register
class Scale(Detector):
    """Energy of the logits of ``z·exp(s1/s2)`` (higher = ID)."""

    name = "scale"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}
    uses_logits = True

    def __init__(self, percentile: float = 85.0) -> None:
        if not 0.0 <= percentile < 100.0:
            raise ConfigError(f"percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def score(self, x: Extraction, head: Head) -> Tensor:
        return head.logits(scale_features(x.features, self.percentile)).float().logsumexp(dim=1)
