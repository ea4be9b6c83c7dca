"""ASH-S — activation shaping (prune + scale), scored with the energy.

Per sample with features ``z ∈ R^D``: ``s1 = Σ_j z_j``; keep the ``k`` largest entries (the values at
or above the sample's ``p``-th percentile), zero the rest, ``s2 = Σ_kept z_j``; multiply the kept
entries by ``exp(s1 / s2)``; ``S(x) = log Σ_c exp(f_c(z_shaped))`` — the energy (``T = 1``) of the
logits that the head forms from the shaped features (in the head's variant).
Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023 (ASH-S). Default ``p = 90``.

``k = D − round(D·p/100)`` (at least 1), exactly as the reference implementation computes it
(equal to ``round(D·(1 − p/100))`` but free of floating-point error in ``1 − p/100``; Python's and
NumPy's ``round`` both round half to even). Ties at the cut-off are broken by ``torch.topk``.
Guard: where ``s2 = 0`` (e.g. an all-zero feature vector) the scale factor is 1 instead of
``exp(0/0)``, so scores stay finite. Note: for heads whose trained logits normalize ``z``
(``l2``, ``t2fnorm``) a positive rescaling does not change the ``trained`` logits — there ASH-S acts
through the pruning only; the ``raw`` variant sees both.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Detector, SearchSpace, register
from .features import Extraction, Head


def ash_keep_count(dim: int, percentile: float) -> int:
    """How many entries ASH keeps out of ``dim`` at ``percentile`` (at least 1)."""
    return min(dim, max(1, dim - round(dim * percentile / 100.0)))


def ash_s(z: Tensor, percentile: float = 90.0) -> Tensor:
    """ASH-S shaped features of ``z`` ``(N, D)`` (a new tensor, fp32)."""
    z = z.float()
    if z.shape[1] == 0:
        return z.clone()
    k = ash_keep_count(z.shape[1], percentile)
    s1 = z.sum(dim=1)
    values, idx = z.topk(k, dim=1, sorted=False)
    ratio = sharpening_exponent(s1, values.sum(dim=1))
    return torch.zeros_like(z).scatter_(1, idx, values * ratio.exp().unsqueeze(1))


def sharpening_exponent(s1: Tensor, s2: Tensor) -> Tensor:
    """``s1 / s2`` per row, 0 where ``s2 = 0``, clamped at 80 (shared by ASH-S and SCALE)."""
    nonzero = s2 != 0
    ratio = torch.where(nonzero, s1 / torch.where(nonzero, s2, torch.ones_like(s2)), torch.zeros_like(s2))
    # exp(s1/s2) overflows fp32 beyond 88: s1/s2 ≤ D/k for non-negative features (≈ 10 at the default 90th
    # percentile), larger only for extreme percentiles or negative entries; the clamp keeps the result finite
    return ratio.clamp(max=80.0)


@register
class ASHS(Detector):
    """Energy of the logits of ASH-S shaped features (higher = ID)."""

    name = "ash_s"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}
    uses_logits = True

    def __init__(self, percentile: float = 90.0) -> None:
        if not 0.0 <= percentile < 100.0:
            raise ConfigError(f"percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def score(self, x: Extraction, head: Head) -> Tensor:
        return head.logits(ash_s(x.features, self.percentile)).float().logsumexp(dim=1)
