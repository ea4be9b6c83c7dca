"""SHE — Simplified Hopfield Energy: similarity to the stored pattern of the predicted class.

Fit: for each class ``c`` the stored pattern ``S_c`` is the mean feature vector ``z`` of the ID training
samples of class ``c`` that the model classifies correctly (``argmax f = label = c``). Score, with the
predicted class ``ŷ = argmax_c f_c(x)``: ``S(x) = zᵀ S_ŷ`` (inner product; higher = ID).
Zhang, Fu, Chen, Du, Li, Wang, Liu, Han & Zhang, "Out-of-Distribution Detection based on
In-Distribution Data Patterns Memorization with Modern Hopfield Energy", ICLR 2023. Default metric:
inner product (OpenOOD v1.5's ``she.yml``; the reference implementation also offers Euclidean and
cosine, not offered here). No other hyper-parameters.

The class decision uses the logits as the model was trained (the extraction's logits, in fit and in
score) — the logits only pick the pattern, so SHE is not run per logit variant. ``z`` are the
unnormalized features. A class with no correctly classified training sample has the zero pattern
(its inputs score 0; OpenOOD's mean over an empty set would be NaN). Fit streams row chunks and keeps
per-class float64 sums (memory O(chunk·D + C·D)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ._blocks import block_rows
from .base import Detector, register
from .features import Extraction, Head


@register
class SHE(Detector):
    """``zᵀ S_ŷ`` with ``S_c`` the mean feature of correctly classified training samples of class ``c``."""

    name = "she"
    needs_fit = True
    fitted_state = ("_patterns", "_counts")

    def __init__(self, chunk_size: int = 8192) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._patterns: Tensor | None = None  # (C, D) float64
        self._counts: Tensor | None = None  # (C,) correctly classified training samples per class

    @property
    def patterns(self) -> Tensor:
        """The stored patterns ``S`` ``(C, D)``, float64 (zero rows for classes never correctly classified)."""
        if self._patterns is None:
            raise RuntimeError("she is not fitted: call fit(train, head) before score()")
        return self._patterns

    @property
    def counts(self) -> Tensor:
        """Correctly classified training samples per class ``(C,)``, int64."""
        if self._counts is None:
            raise RuntimeError("she is not fitted: call fit(train, head) before score()")
        return self._counts

    def fit(self, train: Extraction, head: Head) -> SHE:
        if train.labels is None:
            raise ConfigError("she needs the labels of the ID training data")
        c = int(train.logits.shape[1])
        d = int(train.features.shape[1])
        if len(train) and (int(train.labels.min()) < 0 or int(train.labels.max()) >= c):
            raise ConfigError(f"she: training labels must lie in [0, {c})")
        sums = torch.zeros(c, d, dtype=torch.float64)
        counts = torch.zeros(c, dtype=torch.int64)
        for chunk in train.chunks(block_rows(d, self.chunk_size)):  # small float64 blocks (see _blocks)
            assert chunk.labels is not None
            y = chunk.labels.long()
            ok = chunk.logits.argmax(dim=1) == y
            sums.index_add_(0, y[ok], chunk.features[ok].double())
            counts.index_add_(0, y[ok], torch.ones(int(ok.sum()), dtype=torch.int64))
        self._patterns = sums / counts.clamp_min(1)[:, None]
        self._counts = counts
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        pat = self.patterns
        if x.logits.shape[1] != pat.shape[0] or x.features.shape[1] != pat.shape[1]:
            raise ConfigError("she: the extraction's classes or feature dimension differ from fit()")
        out = torch.empty(len(x), dtype=torch.float32)
        step = block_rows(pat.shape[1], self.chunk_size)  # small float64 blocks (see _blocks)
        for s in range(0, len(x), step):
            z = x.features[s : s + step].double()
            pred = x.logits[s : s + step].argmax(dim=1)
            out[s : s + z.shape[0]] = (z * pat[pred]).sum(dim=1)
        return out
