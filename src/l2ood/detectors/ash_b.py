"""ASH-B — activation shaping by pruning and binarizing, scored with the energy.

Per sample with features ``z ∈ R^D``: ``s1 = Σ_j z_j``; the ``k`` largest entries (the values at or
above the sample's ``p``-th percentile) are replaced by the constant ``s1 / k`` and the rest set to 0
(so the sum ``s1`` is preserved); ``S(x) = log Σ_c exp(f_c(z_shaped))`` — the energy (``T = 1``) of the
logits that the head forms from the shaped features (in the head's variant).
Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023 (ASH-B). Default ``p = 90`` (OpenOOD v1.5's ``ash.yml``; the paper's ImageNet
ResNet-50 rows use ASH-B@65).

``k = D − round(D·p/100)`` (at least 1; :func:`~l2ood.detectors.ash.ash_keep_count`, as the reference
code). Note: OpenOOD v1.5's postprocessor named ``ash`` applies this ASH-B shaping (its ``ASHNet``), not
ASH-S; l2ood's ``ash_s`` is the paper's ASH-S.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .ash import ash_keep_count
from .base import Detector, SearchSpace, register
from .features import Extraction, Head


def ash_b(z: Tensor, percentile: float = 90.0) -> Tensor:
    """ASH-B shaped features of ``z`` ``(N, D)``: ``s1/k`` at the top ``k`` positions, 0 elsewhere (fp32)."""
    z = z.float()
    if z.shape[1] == 0:
        return z.clone()
    k = ash_keep_count(z.shape[1], percentile)
    idx = z.topk(k, dim=1, sorted=False).indices
    fill = (z.sum(dim=1) / k).unsqueeze(1).expand(-1, k)
    return torch.zeros_like(z).scatter_(1, idx, fill)


@register
class ASHB(Detector):
    """Energy of the logits of ASH-B shaped features (higher = ID)."""

    name = "ash_b"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}
    uses_logits = True

    def __init__(self, percentile: float = 90.0) -> None:
        if not 0.0 <= percentile < 100.0:
            raise ConfigError(f"percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def score(self, x: Extraction, head: Head) -> Tensor:
        return head.logits(ash_b(x.features, self.percentile)).float().logsumexp(dim=1)
