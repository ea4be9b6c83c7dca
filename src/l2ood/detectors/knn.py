"""Deep k-nearest-neighbour distance (KNN).

``S(x) = −‖ẑ(x) − ẑ_(k)‖₂`` with ``ẑ = z/‖z‖₂``: minus the Euclidean distance from the normalized
query features to their ``k``-th nearest neighbour in the bank of normalized ID training features.
Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.

Default hyper-parameters: ``k = 50`` (OpenOOD v1.5's CIFAR setting), ``query_chunk = 1024``,
``bank_chunk = 16384``.

Implementation. Features are normalized with an eps-safe division (a zero vector stays zero, its
similarity to everything is 0 and its distance to every unit vector is √2, so scores stay finite).
For unit vectors ``‖q − b‖² = 2 − 2·q·b``, so the ``k`` nearest neighbours are the ``k`` largest
similarities and ``dist = sqrt(max(2 − 2·sim, 0))`` (fp32; like faiss' ``IndexFlatL2``, distances
below ~1e-3, i.e. near-duplicates, are at the resolution limit of fp32 similarities).

The ``N_query × N_bank`` distance matrix is never materialized: queries are processed in blocks of
``q = query_chunk`` rows and, for each block, the bank in blocks of ``b = bank_chunk`` rows; each
``q × b`` similarity block is reduced to its top ``k`` at once and merged with the running top ``k``
(top ``k`` of their concatenation). Peak extra memory while scoring (fp32 values, int64 indices
from :func:`torch.topk`) is at most::

    4·q·(b + D) + 28·q·k  bytes

on top of the bank itself (``4·N_bank·D`` bytes, kept from :meth:`KNN.fit`); see
:meth:`KNN.memory_bytes`. With the defaults and ``D = 512`` that is ≈ 67 MiB + the bank.

Under ``torchrun`` (a training extraction that is this rank's shard, :attr:`Extraction.sharded`) the bank stays
sharded: each rank keeps the normalized rows of its own shard (``N/K`` rows), scores every query against them
(its local top ``k``, padded with ``−inf`` when the shard is smaller than ``k``), and the ranks all-gather those
``q × k`` blocks and take the top ``k`` of the ``K·k`` candidates. The ``k`` largest similarities of a query over
the union of the shards are the ``k`` largest over the whole bank, so the scores are those of one process (the
same products, up to the matrix kernel's blocking). Scoring is then a collective call (every rank scores the same
queries, as an evaluation does). To save such a fit, :meth:`gathered` brings the rows to rank 0 alone.

``k`` larger than the bank is an error (``ValueError``), raised by :meth:`KNN.fit` and again by
:meth:`KNN.score` (``k`` may be changed after fitting) — never silently clamped, since a clamped
``k`` would be a different detector.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..distributed import gather_rows
from ..errors import ConfigError
from ._bank import BankDetector
from .base import SearchSpace, register
from .features import Extraction, Head

_EPS = 1e-12


def _normalize(z: Tensor) -> Tensor:
    """Rows of ``z`` divided by their L2 norm (fp32); zero rows stay zero."""
    z = z.float()
    return z / z.norm(dim=1, keepdim=True).clamp_min(_EPS)


def _similarity(q: Tensor, b: Tensor) -> Tensor:
    """``q · bᵀ`` for one query block and one bank block (``q × b``; a seam for tests)."""
    return q @ b.T


def topk_similarities(q: Tensor, bank: Tensor, k: int, bank_chunk: int) -> Tensor:
    """The ``k`` largest inner products ``q · bankᵀ`` per row of ``q`` (``q × k``, unsorted), computed over
    bank blocks of ``bank_chunk`` rows and merged (top ``k`` of the running top ``k`` and each block's)."""
    best: Tensor | None = None  # running top-k similarities (q × ≤k), unsorted
    for s in range(0, bank.shape[0], bank_chunk):
        sim = _similarity(q, bank[s : s + bank_chunk])
        top = sim.topk(min(k, sim.shape[1]), dim=1, sorted=False).values
        del sim
        if best is not None:
            both = torch.cat([best, top], dim=1)
            top = both.topk(min(k, both.shape[1]), dim=1, sorted=False).values
            del both
        best = top
    assert best is not None and best.shape[1] == k
    return best


def local_topk(q: Tensor, bank: Tensor, k: int, bank_chunk: int) -> Tensor:
    """:func:`topk_similarities` against a bank that may hold fewer than ``k`` rows (a rank's shard): the missing
    columns are ``−inf`` (``q × k``)."""
    have = min(k, bank.shape[0])
    out = torch.full((q.shape[0], k), float("-inf"), dtype=torch.float32)
    if have:
        out[:, :have] = topk_similarities(q, bank, have, bank_chunk)
    return out


def _check_positive_int(name: str, v: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")


@register
class KNN(BankDetector):
    """``−`` distance to the ``k``-th nearest normalized ID training feature (higher = ID)."""

    name = "knn"
    #: OpenOOD v1.5 sweeps 50 … 1000; smaller k added for small training sets
    search_space: ClassVar[SearchSpace] = {"k": (1, 10, 20, 50, 100, 200, 500, 1000)}
    needs_fit = True
    fitted_state = ("_bank",)
    bank_rows = ("_bank",)  # kept sharded under torchrun (l2ood.detectors._bank)

    def __init__(self, k: int = 50, query_chunk: int = 1024, bank_chunk: int = 16384,
                 fit_chunk: int = 8192) -> None:
        for n, v in (("k", k), ("query_chunk", query_chunk), ("bank_chunk", bank_chunk),
                     ("fit_chunk", fit_chunk)):
            _check_positive_int(n, v)
        self.k = k
        self.query_chunk = query_chunk
        self.bank_chunk = bank_chunk
        self.fit_chunk = fit_chunk
        self._bank: Tensor | None = None

    def check_state(self, state: dict[str, Tensor]) -> None:
        """As :meth:`Detector.check_state`, plus what a fit writes: a 2-d float32 bank of L2-normalized rows (norm 1,
        or 0 for a zero feature vector), not all of them zero."""
        super().check_state(state)
        bank = state.get("bank")
        if bank is None or bank.ndim != 2 or bank.dtype != torch.float32:
            raise ConfigError("detector 'knn': the bank must be a 2-d float32 tensor of normalized features")
        norms = bank.norm(dim=1)
        if not bool(((norms - 1).abs() < 1e-3).logical_or(norms == 0).all()):
            raise ConfigError("detector 'knn': the bank's rows are not L2-normalized features (norm 1, or 0)")
        if bool((norms == 0).all()):
            raise ConfigError("detector 'knn': every row of the bank is zero: it cannot tell inputs apart")

    @property
    def bank(self) -> Tensor:
        """The normalized ID training features ``(N_bank, D)``, fp32 (after :meth:`fit`)."""
        if self._bank is None:
            raise RuntimeError("knn is not fitted: call fit(train, head) before score()")
        return self._bank

    def memory_bytes(self, n_bank: int, d: int) -> int:
        """Estimated bytes held while scoring: the bank plus the per-block working set (see module)."""
        q = self.query_chunk
        b = min(self.bank_chunk, n_bank)
        return 4 * n_bank * d + 4 * q * (b + d) + 28 * q * self.k

    def _check_k(self, n_bank: int) -> None:
        if self.k > n_bank:
            raise ConfigError(f"knn: k={self.k} exceeds the size of the ID training bank ({n_bank}); "
                             f"use k <= {n_bank} or more training data")

    def fit(self, train: Extraction, head: Head) -> KNN:
        """Store the L2-normalized ID training features (fp32, filled chunk by chunk); under ``torchrun`` with a
        sharded extraction, this rank's rows only (collective: the ranks add up the bank's size)."""
        n, d = train.features.shape
        n_total = self._ranks_total(train)
        self._check_k(n if n_total is None else n_total)
        bank = torch.empty(n, d, dtype=torch.float32)
        s = 0
        for chunk in train.chunks(self.fit_chunk):
            m = len(chunk)
            bank[s : s + m] = _normalize(chunk.features)
            s += m
        self._bank = bank
        self._n_total = n_total
        return self

    def _kth_similarity(self, q: Tensor, bank: Tensor) -> Tensor:
        """The ``k``-th largest similarity of each row of ``q`` to ``bank``, merged block by block."""
        return topk_similarities(q, bank, self.k, self.bank_chunk).min(dim=1).values

    def _kth_similarity_sharded(self, q: Tensor, bank: Tensor) -> Tensor:
        """As :meth:`_kth_similarity` over the union of every rank's shard (collective): each rank's local top
        ``k`` all-gathered, then the top ``k`` of the ``K·k`` candidates."""
        mine = local_topk(q, bank, self.k, self.bank_chunk)
        every = gather_rows(mine)  # (K·q) × k, rank by rank
        world = every.shape[0] // max(1, q.shape[0])
        cand = every.view(world, q.shape[0], self.k).permute(1, 0, 2).reshape(q.shape[0], world * self.k)
        return cand.topk(self.k, dim=1, sorted=False).values.min(dim=1).values

    def score(self, x: Extraction, head: Head) -> Tensor:
        """``−‖ẑ − ẑ_(k)‖₂`` per row of ``x`` (a collective call when the bank is sharded: every rank passes the
        same queries)."""
        bank = self.bank
        n_bank, d = bank.shape
        if x.features.ndim != 2 or x.features.shape[1] != d:
            raise ConfigError(f"knn: features of shape {tuple(x.features.shape)} do not match the bank's "
                             f"dimension {d}")
        self._check_k(self._n_total if self._n_total is not None else n_bank)
        out = torch.empty(len(x), dtype=torch.float32)
        for s in range(0, len(x), self.query_chunk):
            q = _normalize(x.features[s : s + self.query_chunk])
            kth = self._kth_similarity_sharded(q, bank) if self.sharded else self._kth_similarity(q, bank)
            out[s : s + q.shape[0]] = -(2.0 - 2.0 * kth).clamp_min(0.0).sqrt()
        return out
