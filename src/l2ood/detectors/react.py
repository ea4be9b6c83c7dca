"""ReAct — rectified activations, scored with the energy.

``S(x) = log Σ_c exp(f_c(min(z(x), c)))``: the penultimate features are clipped from above at a
threshold ``c`` (element-wise), logits are re-formed from the clipped features by the head (in the
head's variant), and the score is the energy (``logsumexp``, ``T = 1``) of those logits.
Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021.

Fit: ``c`` is the ``p``-th percentile (default ``p = 90``, as in OpenOOD) of *all* ID training
feature activations (every entry of the ``N×D`` training features pooled together), with linear
interpolation (``numpy.percentile``'s default rule) — exact, with at most about ``2**24`` activations
(64 MiB in float32) held at once whatever N. Up to ``N·D ≤ 2**24`` the entries are copied and the two
order statistics selected at once (:func:`numpy.partition`). Above: a seeded random sample of entries
(``2**14`` or more, as N·D requires) brackets the two order statistics (values ``a ≤ b``, six standard
errors of the sample quantile on either side; ``seed``, default 0, changes only this bracket, never the
result); one pass over the training features counts the entries below ``a``, equal to ``a`` and to
``b``, and keeps only those strictly between ``a`` and ``b`` (a few % of them at most), among which the
order statistics are selected. A bracket that misses (probability ~1e-9 per try) is widened fourfold
and the pass repeated; after a second miss the percentile is taken on a seeded Bernoulli subsample of
expected size ``2**24`` instead (error ~2.4e-4 in quantile level).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ._blocks import block_rows
from .base import Detector, SearchSpace, register
from .features import Extraction, Head

MAX_QUANTILE_VALUES = 2**24  # activations held at once for the percentile (64 MiB in float32)


def activation_percentile(train: Extraction, percentile: float, seed: int = 0,
                          max_values: int = MAX_QUANTILE_VALUES) -> float:
    """The ``percentile``-th percentile of all entries of ``train.features`` (exact; see the module doc)."""
    n, d = train.features.shape
    total = int(n) * int(d)
    if total == 0:
        raise ConfigError("cannot fit a percentile on empty training features")
    if total <= max_values:
        values = torch.cat([c.features.reshape(-1).float() for c in train.chunks()])
        return _percentile_linear(values, percentile, copy=False)
    pos = percentile / 100.0 * (total - 1)
    lo = int(pos)
    ranks = (lo, min(lo + 1, total - 1))
    gen = torch.Generator().manual_seed(seed)
    # sample size: enough that the bracket (±6 standard errors) holds ≲ max_values / 4 entries, at most max_values / 8
    sample = max(1, min(max_values // 8, max(2**14, math.ceil((16.0 * total / max_values) ** 2))))
    for widen in (1.0, 4.0):
        found = _select_ranks(train, ranks, gen, sample, widen, max_values)
        if found is not None:
            return found[0] + (pos - lo) * (found[1] - found[0])
    # last resort (the bracket missed twice): seeded Bernoulli subsample of expected size max_values
    keep = max_values / total
    values = torch.cat([c.features.reshape(-1)[torch.rand(c.features.numel(), generator=gen) < keep].float()
                        for c in train.chunks()])
    return _percentile_linear(values, percentile, copy=False)


def _select_ranks(train: Extraction, ranks: tuple[int, int], gen: torch.Generator, sample: int, widen: float,
                  cap: int) -> tuple[float, float] | None:
    """The entries of 0-based ranks ``ranks`` (ascending, adjacent) among all ``train.features`` entries, or
    None when the sampled bracket misses them or holds more than ``cap`` entries."""
    feats = train.features
    n, d = feats.shape
    total = int(n) * int(d)
    # bracket [a, b] from a random sample (with replacement) of entries, ±6 standard errors in rank
    pick = torch.take(feats, torch.randint(0, total, (sample,), generator=gen))
    ks = []
    for r, side in ((ranks[0], -1), (ranks[1], 1)):
        f = r / max(total - 1, 1)
        k = f * (sample - 1) + side * widen * (6.0 * math.sqrt(sample * max(f * (1.0 - f), 1.0 / sample)) + 8.0)
        ks.append(k)
    lo_k, hi_k = math.floor(ks[0]), math.ceil(ks[1])
    valid = [k for k in (lo_k, hi_k) if 0 <= k < sample]
    bounds = np.partition(pick.float().numpy(), valid) if valid else None
    a = float(bounds[lo_k]) if bounds is not None and lo_k >= 0 else -math.inf
    b = float(bounds[hi_k]) if bounds is not None and hi_k < sample else math.inf
    below = at_a = at_b = 0
    inside: list[Tensor] = []
    kept = 0
    for chunk in train.chunks():
        v = chunk.features.reshape(-1).float()
        below += int(torch.count_nonzero(v < a))
        at_a += int(torch.count_nonzero(v == a))
        if b > a:
            at_b += int(torch.count_nonzero(v == b))
            part = v[(v > a) & (v < b)]
            kept += part.numel()
            if kept > cap:
                return None
            inside.append(part)
    mid = torch.cat(inside).numpy() if inside else np.empty(0, dtype=np.float32)
    offsets = [r - below - at_a for r in ranks]  # ranks within the entries strictly inside (a, b)
    if ranks[0] < below or ranks[1] >= below + at_a + mid.size + at_b:
        return None  # outside the bracket (or NaN entries, which no comparison counts)
    inner = [k for k in offsets if 0 <= k < mid.size]
    if inner:
        mid.partition(inner)

    def entry(k: int) -> float:
        return a if k < 0 else (float(mid[k]) if k < mid.size else b)

    return entry(offsets[0]), entry(offsets[1])


def _percentile_linear(values: Tensor, percentile: float, copy: bool = True) -> float:
    """``numpy.percentile``'s default (linear) rule on ``values`` (all entries): both order statistics selected
    by one :func:`numpy.partition` (no sort); ``copy=False`` partitions ``values`` itself (a temporary)."""
    flat = values.detach().reshape(-1).cpu().numpy()
    n = flat.size
    pos = percentile / 100.0 * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    arr = flat.copy() if copy or not flat.flags.writeable else flat
    arr.partition([lo, hi] if hi != lo else lo)
    v_lo, v_hi = float(arr[lo]), float(arr[hi])
    return v_lo + (pos - lo) * (v_hi - v_lo)


@register
class ReAct(Detector):
    """Energy of the logits of ``min(z, c)``, ``c`` = ID activation percentile (higher = ID)."""

    name = "react"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"percentile": (85.0, 90.0, 95.0, 99.0)}
    needs_fit = True
    uses_logits = True
    fitted_state = ("threshold",)

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
        feats = x.features
        n, d = feats.shape
        out = torch.empty(n, dtype=torch.float32)
        # row blocks of ≤ 4 MiB: the clipped copy is written into one reused buffer and read back from cache
        step = block_rows(d, n, itemsize=4)
        buf = torch.empty(min(step, n), d, dtype=torch.float32, device=feats.device)
        for s in range(0, n, step):
            rows = feats[s : s + step]
            z = torch.clamp(rows if rows.dtype == torch.float32 else rows.float(), max=self.threshold,
                            out=buf[: rows.shape[0]])
            out[s : s + z.shape[0]] = head.logits(z).logsumexp(dim=1)
        return out
