"""NNGuide — the energy guided by nearest-neighbour similarity to confidence-scaled ID features.

Fit: a bank of ID training samples ``j`` with normalized features ``ẑ_j = z_j/‖z_j‖₂`` and confidence
``e_j = log Σ_c exp(f_c(x_j))`` (the energy); the guided bank is ``g_j = e_j·ẑ_j``. Score::

    G(x) = mean of the k largest inner products ẑ(x) · g_j over the bank
    S(x) = G(x) · log Σ_c exp(f_c(x))                (guidance × energy; higher = ID)

Park, Jung & Teoh, "Nearest Neighbor Guidance for Out-of-Distribution Detection", ICCV 2023.
Defaults (OpenOOD v1.5's ``nnguide.yml``): ``k = 100``, bank = a seeded random ``fraction = 0.01`` of the
training set (OpenOOD takes the first 1 % of its shuffled training loader), ``seed = 0``; the bank holds
``max(k, round(fraction·N))`` rows (at most ``N``), so that ``k`` neighbours exist. ``k > N`` is an error.

Reference disagreements: the authors' code uses ``k = 10`` and the bank it is given; OpenOOD adds
``1e-10`` after normalizing (``z/‖z‖ + 1e-10``, immaterial). Like ViM, the method assumes positive
energies: where the energy is negative the product's sign flips its meaning.

Under ``torchrun`` (a training extraction that is this rank's shard) each rank builds the bank rows that fall in
its shard (the bank's row indices are drawn over the whole set, as in one process) and the ranks gather them in
rank order, so every rank holds the same bank as one process and no rank holds every training feature.

Implementation: the bank rows are gathered ``fit_chunk`` at a time (memory O(bank·D), the confidences from the
extraction's logits, i.e. the head's variant); the top ``k`` is found block by block as in
:mod:`~l2ood.detectors.knn` (no query × bank matrix). Zero feature vectors stay zero (eps-safe
normalization). One detector instance serves the logit variant it was fit on.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..distributed import dist_from_env, gather_rows, is_active
from ..errors import ConfigError
from .base import Detector, SearchSpace, register
from .features import Extraction, Head
from .knn import _check_positive_int, _normalize, topk_similarities


@register
class NNGuide(Detector):
    """``energy(x) · mean_topk(ẑ(x) · e_j ẑ_j)`` (higher = ID)."""

    name = "nnguide"
    search_space: ClassVar[SearchSpace] = {"k": (1, 10, 50, 100, 200, 500, 1000)}
    needs_fit = True
    uses_logits = True
    fitted_state = ("_bank", "_normalize")
    #: under torchrun each rank builds the bank rows of its own shard; the ranks gather the (small) bank
    shard_fit: ClassVar[bool] = True

    def __init__(self, k: int = 100, fraction: float = 0.01, seed: int = 0, query_chunk: int = 1024,
                 bank_chunk: int = 16384, fit_chunk: int = 8192) -> None:
        for n, v in (("k", k), ("query_chunk", query_chunk), ("bank_chunk", bank_chunk), ("fit_chunk", fit_chunk)):
            _check_positive_int(n, v)
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
        self.k = k
        self.fraction = float(fraction)
        self.seed = int(seed)
        self.query_chunk = query_chunk
        self.bank_chunk = bank_chunk
        self.fit_chunk = fit_chunk
        self._bank: Tensor | None = None  # (M, D) e_j·ẑ_j, fp32
        self._normalize: bool | None = None

    @property
    def bank(self) -> Tensor:
        """The guided bank ``e_j·ẑ_j`` ``(M, D)``, fp32 (after :meth:`fit`)."""
        if self._bank is None:
            raise RuntimeError("nnguide is not fitted: call fit(train, head) before score()")
        return self._bank

    def bank_indices(self, n: int) -> Tensor:
        """The (sorted) training rows that form the bank for a training set of ``n`` rows."""
        m = min(n, max(self.k, round(self.fraction * n)))
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=gen)[:m].sort().values

    def fit(self, train: Extraction, head: Head) -> NNGuide:
        """Build the guided bank from the training rows (collective under ``torchrun`` with a sharded extraction:
        this rank's bank rows, then gathered in rank order)."""
        n_local, d = train.features.shape
        sharded = train.sharded and is_active()
        if sharded:  # every rank's row count, in rank order: this shard's offset and the whole set's size
            sizes = gather_rows(torch.tensor([n_local], dtype=torch.int64)).tolist()
            offset, n = sum(sizes[: dist_from_env().rank]), sum(sizes)
        else:
            offset, n = 0, n_local
        if self.k > n:
            raise ConfigError(f"nnguide: k={self.k} exceeds the size of the ID training set ({n})")
        idx = self.bank_indices(n)
        idx = idx[(idx >= offset) & (idx < offset + n_local)] - offset  # the bank rows in this shard (all of them
        bank = torch.empty(idx.shape[0], d, dtype=torch.float32)  # in one process), in order
        for s in range(0, idx.shape[0], self.fit_chunk):  # gather the bank rows, fit_chunk at a time
            sel = idx[s : s + self.fit_chunk]
            conf = train.logits[sel].float().logsumexp(dim=1, keepdim=True)
            bank[s : s + sel.shape[0]] = _normalize(train.features[sel]) * conf
        self._bank = gather_rows(bank) if sharded else bank
        self._normalize = head.normalize
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        bank = self.bank
        if x.features.shape[1] != bank.shape[1] or head.normalize != self._normalize:
            raise ConfigError("nnguide: score() got features of another dimension or logit variant than fit()")
        if self.k > bank.shape[0]:
            raise ConfigError(f"nnguide: k={self.k} exceeds the bank ({bank.shape[0]} rows)")
        out = torch.empty(len(x), dtype=torch.float32)
        for s in range(0, len(x), self.query_chunk):
            q = _normalize(x.features[s : s + self.query_chunk])
            guide = topk_similarities(q, bank, self.k, self.bank_chunk).mean(dim=1)
            energy = x.logits[s : s + self.query_chunk].float().logsumexp(dim=1)
            out[s : s + q.shape[0]] = guide * energy
        return out
