"""ReAct — rectified activations, scored with the energy.

``S(x) = log Σ_c exp(f_c(min(z(x), c)))``: the penultimate features are clipped from above at a
threshold ``c`` (element-wise), logits are re-formed from the clipped features by the head (in the
head's variant), and the score is the energy (``logsumexp``, ``T = 1``) of those logits.
Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021.

Fit: ``c`` is the ``p``-th percentile (default ``p = 90``, as in OpenOOD) of *all* ID training
feature activations (every entry of the ``N×D`` training features pooled together), with linear
interpolation (``numpy.percentile``'s default rule, computed with two ``kthvalue`` selections). The
percentile is exact when ``N·D ≤ 2**24 = 16 777 216``; above that it is computed on a seeded
Bernoulli subsample of expected size ``2**24`` taken chunk by chunk (``seed``, default 0) — the
sampling error of the percentile
is then of order ``1/√(2**24) ≈ 2.4e-4`` in quantile level, far below anything that matters for a
clipping threshold. Extra memory is O(chunk·D + 2**24) whatever N.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Detector, register
from .features import Extraction, Head

MAX_QUANTILE_VALUES = 2**24  # torch.quantile's input size limit


def activation_percentile(train: Extraction, percentile: float, seed: int = 0,
                          max_values: int = MAX_QUANTILE_VALUES) -> float:
    """The ``percentile``-th percentile of all entries of ``train.features`` (see the module doc)."""
    n, d = train.features.shape
    total = int(n) * int(d)
    if total == 0:
        raise ConfigError("cannot fit a percentile on empty training features")
    if total <= max_values:
        values = torch.cat([c.features.reshape(-1).float() for c in train.chunks()])
    else:  # seeded Bernoulli subsample, chunk by chunk: every chunk contributes, no global index
        gen = torch.Generator().manual_seed(seed)
        keep = max_values / total
        values = torch.cat([c.features.reshape(-1)[torch.rand(c.features.numel(), generator=gen) < keep].float()
                            for c in train.chunks()])
    return _percentile_linear(values, percentile)


def _percentile_linear(values: Tensor, percentile: float) -> float:
    """``numpy.percentile``'s default (linear) rule via two ``kthvalue`` selections (no full sort)."""
    n = values.numel()
    pos = percentile / 100.0 * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    v_lo = float(torch.kthvalue(values, lo + 1).values)
    v_hi = float(torch.kthvalue(values, hi + 1).values) if hi != lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


@register
class ReAct(Detector):
    """Energy of the logits of ``min(z, c)``, ``c`` = ID activation percentile (higher = ID)."""

    name = "react"
    needs_fit = True
    uses_logits = True

    def __init__(self, percentile: float = 90.0, seed: int = 0) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ConfigError(f"percentile must be in [0, 100], got {percentile}")
        self.percentile = float(percentile)
        self.seed = int(seed)
        self.threshold: float | None = None

    def fit(self, train: Extraction, head: Head) -> ReAct:
        self.threshold = activation_percentile(train, self.percentile, self.seed)
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        if self.threshold is None:
            raise RuntimeError("react: call fit() on the ID training outputs before score()")
        z = x.features.float().clamp(max=self.threshold)
        return head.logits(z).float().logsumexp(dim=1)
