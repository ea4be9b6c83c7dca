"""fDBD — feature distance to the decision boundaries, regularized by the distance to the ID mean.

With the predicted class ``ŷ = argmax_c f_c``, the head input ``h`` (``z`` for the raw logits) and its
mean ``μ`` over the ID training set::

    D(h, c) = |f_ŷ − f_c| / ‖w_ŷ − w_c‖₂            (distance of h to the boundary between ŷ and c)
    S(x) = [1/(C − 1) Σ_{c ≠ ŷ} D(h, c)] / ‖h − μ‖₂

Liu & Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024. No
hyper-parameters (the paper's regularizer, the distance to the training mean, is used; OpenOOD v1.5
can also select ``‖h‖`` instead on validation data — not done here).

``f`` are the logits of the extraction (the head's variant); ``h`` is
:meth:`~l2ood.detectors.features.Head.inputs` (``z/‖z‖`` for the trained ``l2`` logits, ``z/(τ‖z‖)`` for
``t2fnorm``), so for every variant with ``f = W·h + b`` the numerator is the exact Euclidean distance
of ``h`` to the boundary hyperplane and ``μ`` is fit in the same space. For the trained ``logitnorm``
logits (``f`` not affine in ``h``) it is the paper's formula applied to those logits — a heuristic.
Fit: ``μ`` in float64, from float32 sums of row blocks (1024 rows at D = 512, pairwise summation)
added in float64 (memory O(D), O(block·D) for the normalized heads); one detector instance serves the
variant it was fit on (scoring another variant is an error).

Guards: pairs of classes with identical weight rows (``‖w_ŷ − w_c‖ = 0``) contribute 0; ``‖h − μ‖`` is
clamped at 1e-12. Reference disagreement: the authors' code and OpenOOD sum over all ``c`` (the ``c = ŷ``
term is 0) without the ``1/(C − 1)`` of the paper's formula — a constant factor, the same ranking.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ._blocks import block_rows
from .base import Detector, register
from .features import Extraction, Head


@register
class FDBD(Detector):
    """Mean distance to the decision boundaries of the predicted class over ``‖h − μ_train‖`` (higher = ID)."""

    name = "fdbd"
    needs_fit = True
    uses_logits = True
    fitted_state = ("_mean", "_normalize")

    def __init__(self, chunk_size: int = 8192) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._mean: Tensor | None = None  # (D,) float64
        self._normalize: bool | None = None

    @property
    def train_mean(self) -> Tensor:
        """``μ`` ``(D,)``, float64: the mean head input of the ID training set (after :meth:`fit`)."""
        if self._mean is None:
            raise RuntimeError("fdbd is not fitted: call fit(train, head) before score()")
        return self._mean

    def fit(self, train: Extraction, head: Head) -> FDBD:
        n, d = train.features.shape
        if n == 0:
            raise ConfigError("fdbd: the ID training set is empty")
        if head.weight.shape[0] < 2:
            raise ConfigError("fdbd needs at least two classes")
        total = torch.zeros(d, dtype=torch.float64)
        # float32 sums of row blocks (1024 rows at D = 512; torch's pairwise summation, relative error ~1e-8),
        # added in float64: no float64 copy of the features. The blocks do not depend on chunk_size, so
        # neither does μ.
        for chunk in train.chunks(block_rows(d, 8192)):
            total += head.inputs(chunk.features).sum(dim=0)
        self._mean = total / n
        self._normalize = head.normalize
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        mu = self.train_mean
        if head.normalize != self._normalize or head.weight.shape[1] != mu.shape[0]:
            raise ConfigError("fdbd: score() got a head of another logit variant or dimension than fit()")
        w = head.weight.double()
        den = torch.cdist(w, w)  # (C, C) ‖w_a − w_b‖
        c = w.shape[0]
        # 1 / ((C − 1)·‖w_a − w_b‖), 0 for identical rows (the guard): one product per class pair below
        inv = torch.where(den > 0, 1.0 / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
        inv /= c - 1
        out = torch.empty(len(x), dtype=torch.float32)
        step = block_rows(mu.shape[0], self.chunk_size)  # small float64 blocks (see _blocks)
        for s in range(0, len(x), step):
            f = x.logits[s : s + step].double()
            top, pred = f.max(dim=1, keepdim=True)
            boundary = ((top - f) * inv[pred[:, 0]]).sum(dim=1)  # |f_ŷ − f_c| = f_ŷ − f_c
            reg = (head.inputs(x.features[s : s + step]).double() - mu).norm(dim=1).clamp_min_(1e-12)
            out[s : s + f.shape[0]] = boundary / reg
        return out
