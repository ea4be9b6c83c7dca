"""DICE — directed sparsification of the last layer's weights, scored with the energy.

With the head ``W (C×D), b`` and the mean ``m̄`` of the head's input over the ID training set, the
contribution matrix is ``V = W ⊙ m̄`` (``V_cj = W_cj·m̄_j``, the average contribution of unit ``j`` to
class ``c``). The mask keeps the weights whose contribution exceeds the ``p``-th percentile ``t`` of
all ``C·D`` entries of ``V``: ``M = [V > t]``; then ``S(x) = log Σ_c exp(f_c(x; W ⊙ M))`` — the energy
(``T = 1``) of the logits of the sparsified head (bias unchanged, in the head's variant).
Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022.
Default ``p = 90`` (OpenOOD v1.5's ``dice.yml`` and the authors' CIFAR scripts; their ImageNet script uses 70).

The percentile follows ``numpy.percentile``'s default (linear) rule, as the reference code; the mask
is strict (``>``), so at most ``C·D·(1 − p/100)`` weights survive (fewer with ties). ``m̄`` is the mean
of :meth:`~l2ood.detectors.features.Head.inputs` — ``z`` for the raw logits (the paper's setting),
``z/‖z‖`` for the trained ``l2`` logits — accumulated in float64 over row chunks (memory O(chunk·D)).
One detector instance serves the logit variant it was fit on (scoring another is an error).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ._blocks import block_rows
from .base import Detector, SearchSpace, register
from .features import Extraction, Head
from .react import _percentile_linear


@register
class DICE(Detector):
    """Energy of the logits of the head with weights masked by ID contribution (higher = ID)."""

    name = "dice"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"percentile": (10.0, 30.0, 50.0, 70.0, 90.0)}
    needs_fit = True
    uses_logits = True
    fitted_state = ("threshold", "_mask", "_mean", "_normalize")

    def __init__(self, percentile: float = 90.0, chunk_size: int = 8192) -> None:
        if not 0.0 <= percentile < 100.0:
            raise ConfigError(f"percentile must be in [0, 100), got {percentile}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.percentile = float(percentile)
        self.chunk_size = chunk_size
        self.threshold: float | None = None
        self._mask: Tensor | None = None  # (C, D) bool
        self._mean: Tensor | None = None  # (D,) float64
        self._normalize: bool | None = None

    @property
    def mask(self) -> Tensor:
        """The kept weights ``M`` ``(C, D)``, bool (after :meth:`fit`)."""
        if self._mask is None:
            raise RuntimeError("dice is not fitted: call fit(train, head) before score()")
        return self._mask

    @property
    def mean_input(self) -> Tensor:
        """``m̄`` ``(D,)``, float64 (after :meth:`fit`)."""
        if self._mean is None:
            raise RuntimeError("dice is not fitted: call fit(train, head) before score()")
        return self._mean

    def fit(self, train: Extraction, head: Head) -> DICE:
        n, d = train.features.shape
        if n == 0:
            raise ConfigError("dice: the ID training set is empty")
        total = torch.zeros(d, dtype=torch.float64)
        for chunk in train.chunks(block_rows(d, self.chunk_size)):  # small float64 blocks (see _blocks)
            total += head.inputs(chunk.features).double().sum(dim=0)
        mean = total / n
        contrib = head.weight.double() * mean[None, :]
        self.threshold = _percentile_linear(contrib.reshape(-1), self.percentile)
        self._mask = contrib > self.threshold
        self._mean = mean
        self._normalize = head.normalize
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        mask = self.mask
        if head.weight.shape != mask.shape or head.normalize != self._normalize:
            raise ConfigError("dice: score() got a head of another shape or logit variant than fit()")
        sparse = replace(head, weight=head.weight.float() * mask)
        out = [sparse.logits(c.features).float().logsumexp(dim=1) for c in x.chunks(self.chunk_size)]
        return torch.cat(out) if out else torch.empty(0)
