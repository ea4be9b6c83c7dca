"""ASH-P — activation shaping by pruning only, scored with the energy.

Per sample with features ``z ∈ R^D``: keep the ``k`` largest entries (the values at or above the
sample's ``p``-th percentile) unchanged and set the rest to 0; ``S(x) = log Σ_c exp(f_c(z_pruned))`` —
the energy (``T = 1``) of the logits that the head forms from the pruned features (in the head's
variant).
Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023 (ASH-P). Default ``p = 90`` (the percentile OpenOOD v1.5 uses for ASH; the paper's
ImageNet ResNet-50 rows use ASH-P@60).

``k = D − round(D·p/100)`` (at least 1; :func:`~l2ood.detectors.ash.ash_keep_count`, as the reference
code). Ties at the cut-off are broken by ``torch.topk``. No hyper-parameter other than ``p``; no fit.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .ash import ash_keep_count
from .base import Detector, SearchSpace, register
from .features import Extraction, Head


def ash_p(z: Tensor, percentile: float = 90.0) -> Tensor:
    """ASH-P pruned features of ``z`` ``(N, D)``: the top ``k`` entries kept, the rest 0 (fp32)."""
    z = z.float()
    if z.shape[1] == 0:
        return z.clone()
    values, idx = z.topk(ash_keep_count(z.shape[1], percentile), dim=1, sorted=False)
    return torch.zeros_like(z).scatter_(1, idx, values)


@register
class ASHP(Detector):
    """Energy of the logits of ASH-P pruned features (higher = ID)."""

    name = "ash_p"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}
    uses_logits = True

    def __init__(self, percentile: float = 90.0) -> None:
        if not 0.0 <= percentile < 100.0:
            raise ConfigError(f"percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def score(self, x: Extraction, head: Head) -> Tensor:
        return head.logits(ash_p(x.features, self.percentile)).float().logsumexp(dim=1)
