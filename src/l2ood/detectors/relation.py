"""Relation — the summed relation-graph edges of an input to the ID training set.

With normalized features ``ẑ = z/‖z‖₂`` and softmax probabilities ``p``, the relation (edge weight) of
an input ``x`` to a training sample ``j`` is ``r_j(x) = max(ẑ(x)·ẑ_j, 0) · (p(x)·p_j)`` (feature
similarity times agreement of the predictions, ``r_j ∈ [0, 1]``). Score::

    S(x) = Σ_j [r_j(x) > t] · r_j(x)^γ                (higher = ID)

over the whole ID training set. Kim, Yun & Song, "Neural Relation Graph: A Unified Framework for
Identifying Label Noise and Outlier Data", NeurIPS 2023. Defaults (the authors' code as used by
OpenOOD v1.5): ``γ = power = 1`` (OpenOOD's ``pow``), edge cut-off ``t = threshold = 0.03``.

Since ``r ≥ 0`` the reference's ``sign(r)·|r|^γ`` is ``r^γ``. Normalization is eps-safe (a zero feature
vector has no edges). Cost: the bank holds the normalized training features and their probabilities
(``4·N·(D + C)`` bytes); scoring is O(N_query·N·(D + C)) work but never materializes the
query × bank matrix: queries in blocks of ``query_chunk`` rows, the bank in blocks of ``bank_chunk``
(peak extra memory ≈ ``16·q·b`` bytes: a few ``q × b`` fp32 blocks). Probabilities come from the
extraction's logits (the head's variant); one detector instance serves the variant it was fit on.

Under ``torchrun`` (a training extraction that is this rank's shard, :attr:`Extraction.sharded`) the bank stays
sharded: the score is a sum over the bank, so each rank keeps the rows of its own shard (``N/K`` of them), sums the
edges of every query to them in float64 and the ranks all-reduce (sum) those totals — the score of the whole bank
(every rank scores the same queries, as an evaluation does). To save such a fit, :meth:`gathered` brings the rows
to rank 0 alone.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..distributed import all_reduce_sum
from ..errors import ConfigError
from ._bank import BankDetector
from .base import SearchSpace, register
from .features import Extraction, Head
from .knn import _check_positive_int, _normalize


@register
class Relation(BankDetector):
    """``Σ_j r_j^γ`` over training samples with ``r_j = max(ẑ·ẑ_j, 0)·(p·p_j) > t`` (higher = ID)."""

    name = "relation"
    search_space: ClassVar[SearchSpace] = {"power": (1.0, 2.0, 4.0, 8.0)}
    needs_fit = True
    uses_logits = True
    fitted_state = ("_feats", "_probs", "_normalize")
    bank_rows = ("_feats", "_probs")  # kept sharded under torchrun (l2ood.detectors._bank)

    def __init__(self, power: float = 1.0, threshold: float = 0.03, query_chunk: int = 512,
                 bank_chunk: int = 8192, fit_chunk: int = 8192) -> None:
        for n, v in (("query_chunk", query_chunk), ("bank_chunk", bank_chunk), ("fit_chunk", fit_chunk)):
            _check_positive_int(n, v)
        if not power > 0:
            raise ConfigError(f"power must be > 0, got {power}")
        if not threshold >= 0:
            raise ConfigError(f"threshold must be >= 0, got {threshold}")
        self.power = float(power)
        self.threshold = float(threshold)
        self.query_chunk = query_chunk
        self.bank_chunk = bank_chunk
        self.fit_chunk = fit_chunk
        self._feats: Tensor | None = None  # (N, D) ẑ_j
        self._probs: Tensor | None = None  # (N, C) p_j
        self._normalize: bool | None = None

    def _fitted(self) -> tuple[Tensor, Tensor]:
        if self._feats is None or self._probs is None:
            raise RuntimeError("relation is not fitted: call fit(train, head) before score()")
        return self._feats, self._probs

    def fit(self, train: Extraction, head: Head) -> Relation:
        """Keep the normalized ID training features and their probabilities; under ``torchrun`` with a sharded
        extraction, this rank's rows only (collective: the ranks add up the bank's size)."""
        n, d = train.features.shape
        n_total = self._ranks_total(train)
        if (n if n_total is None else n_total) == 0:
            raise ConfigError("relation: the ID training set is empty")
        feats = torch.empty(n, d, dtype=torch.float32)
        probs = torch.empty(n, train.logits.shape[1], dtype=torch.float32)
        s = 0
        for chunk in train.chunks(self.fit_chunk):
            m = len(chunk)
            feats[s : s + m] = _normalize(chunk.features)
            probs[s : s + m] = chunk.logits.float().softmax(dim=1)
            s += m
        self._feats, self._probs = feats, probs
        self._normalize = head.normalize
        self._n_total = n_total
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        feats, probs = self._fitted()
        if (x.features.shape[1], x.logits.shape[1]) != (feats.shape[1], probs.shape[1]) \
                or head.normalize != self._normalize:
            raise ConfigError("relation: score() got features, classes or a logit variant other than fit()")
        out = torch.zeros(len(x), dtype=torch.float32)
        for s in range(0, len(x), self.query_chunk):
            q = _normalize(x.features[s : s + self.query_chunk])
            pq = x.logits[s : s + self.query_chunk].float().softmax(dim=1)
            edges = torch.zeros(q.shape[0], dtype=torch.float64)
            for b in range(0, feats.shape[0], self.bank_chunk):
                rel = (q @ feats[b : b + self.bank_chunk].T).clamp_min_(0.0)
                rel.mul_(pq @ probs[b : b + self.bank_chunk].T)
                kept = torch.where(rel > self.threshold, rel.pow(self.power) if self.power != 1.0 else rel,
                                   torch.zeros_like(rel))
                edges += kept.sum(dim=1, dtype=torch.float64)
                del rel, kept
            if self.sharded:  # the edges to every rank's rows (collective)
                all_reduce_sum(edges)
            out[s : s + q.shape[0]] = edges.float()
        return out
