"""Softmax over the classes of an ``(N, C)`` logit matrix: fast for few classes, and free of saturation (internal).

**Layout.** torch's (log-)softmax along the last dimension vectorizes over that dimension: with fewer classes than
one vector register holds (16 float32 with AVX-512) most of each vector is wasted: with C = 10 it runs
about 9× slower than along the first dimension of the transposed layout, where it vectorizes over the
rows (measured, one thread, N = 10 000: 1.5 vs 0.17 ms in float32; C = 5 in float64: 0.72 vs 0.17 ms).
:func:`softmax` and :func:`top_softmax` pick the transposed layout for ``C < 16`` and return ``(N, C)`` views of
it; elementwise operations and reductions over the classes keep that layout. Same values up to float rounding
(the same operations per entry).

**Saturation.** A confident prediction has a top logit far above the others (margins of 30-100 for an L2-normalized
head's raw logits). Its softmax rounds to one-hot: ``1 + s`` with ``s = Σ_{c≠top} exp(f_c − f_top)`` is ``1`` once
``s`` is below the unit roundoff (``s < 6e-8``, a margin of ~17 in float32; ``s < 1.1e-16``, ~37 in float64), so the
maximum softmax probability is exactly 1.0, ``log p_top`` exactly 0 and ``1 − p_top`` exactly 0 for every such input,
and scores built from them tie. :func:`top_softmax` never forms ``1 + s``: it returns ``d = f − f_top`` and ``s``
in float64 (``s`` summed from the entries below the top, relative error ~1e-16 whatever its size) and
``log Σ_c exp(d_c) = log1p(s)`` by :func:`log1p`, so that

    log p_c = d_c − log1p(s),   log p_top = −log1p(s),   log(1 − p_top) = log s − log1p(s)

are accurate to a few ulps for ``s`` down to float64's smallest normal number (margins up to ~700; ``s``
underflows to 0 beyond ~745, where ``p_top = 1`` exactly in float64 too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

SMALL_C = 16  # below this many classes: softmax along the rows of the transposed (C, N) layout
BLOCK = 1 << 16  # entries per row block in :func:`by_blocks` (512 KiB of float64: the temporaries stay in cache)


def softmax(f: Tensor, log: bool = False) -> Tensor:
    """``softmax(f, dim=1)`` (``log_softmax`` with ``log=True``) of ``f`` ``(N, C)``, in ``f``'s dtype; for
    ``C < 16`` a (non-contiguous) view of a ``(C, N)`` result."""
    if f.ndim != 2 or f.shape[1] >= SMALL_C:
        return f.log_softmax(dim=1) if log else f.softmax(dim=1)
    t = f.T
    return (t.log_softmax(dim=0) if log else t.softmax(dim=0)).T


def log1p(x: Tensor) -> Tensor:
    """``log(1 + x)`` accurate for tiny ``|x|`` (``x > −1``), from ``log``, ``+``, ``−``, ``×``, ``÷`` and a select.

    ``u = 1 + x``; ``log1p(x) = x`` where ``u == 1``, else ``log(u) · x / (u − 1)`` (Goldberg, "What Every Computer
    Scientist Should Know About Floating-Point Arithmetic", ACM Computing Surveys 23(1), 1991, Theorem 4: relative
    error a few ulps). Written out because ``torch.onnx.export`` lowers ``torch.log1p`` to ``Log(1 + x)``, which
    rounds ``1 + x`` to 1 and returns 0 for every ``x`` below the unit roundoff: the saturation this module avoids;
    this form exports as it is, so the ONNX screen gives the same scores."""
    u = 1.0 + x
    return torch.where(u == 1.0, x, u.log() * x / (u - 1.0))


def scalar(x: float, like: Tensor) -> Tensor:
    """``x`` as a 0-d float64 tensor on ``like``'s device. A Python float in float64 arithmetic is exported to ONNX
    rounded to float32 (``torch.onnx.export``, dynamo: ``t * 0.1`` multiplies by 0.10000000149), an error of 1e-8
    relative in a temperature or an exponent; a float64 tensor is exported exactly."""
    return torch.tensor(x, dtype=torch.float64, device=like.device)


class TopSoftmax(NamedTuple):
    """The softmax of each row around its top entry, float64 (see the module doc). ``d`` and ``e`` are ``(N, C)``
    (for ``C < 16`` views of the ``(C, N)`` layout); ``s`` and ``log_z`` are ``(N,)``."""

    d: Tensor  # f_c − max_c' f_c' (0 at the top entry or entries, < 0 elsewhere)
    e: Tensor  # exp(d_c) (1 at the top), so p_c = e_c / (1 + s)
    s: Tensor  # Σ_{c ≠ argmax} exp(d_c): every entry but one top entry (a tie at the top counts exp(0) = 1)
    log_z: Tensor  # log Σ_c exp(d_c) = log1p(s); log p_c = d_c − log_z

    @property
    def log_p(self) -> Tensor:
        """``log softmax`` ``(N, C)``: ``d − log1p(s)`` (the top entry ``−log1p(s)``, never rounded to 0)."""
        return self.d - self.log_z[:, None]

    @property
    def log_p_top(self) -> Tensor:
        """``log max_c softmax_c = −log1p(s)`` ``(N,)`` (``+0.0``, not ``−0.0``, where ``s = 0``)."""
        return 0.0 - self.log_z

    @property
    def log_1m_p(self) -> Tensor:
        """``log(1 − softmax_c)`` ``(N, C)`` as ``log((1 − e_c) + s) − log1p(s)``: ``1 − p_c = (1 + s − e_c)/(1 + s)``,
        and ``1 − e_c`` is exactly 0 at the top, leaving ``log s`` there (``−inf`` where ``s = 0``: one class, or every
        other entry underflowed) instead of the ``log 0`` of ``1 − p`` rounded."""
        return ((1.0 - self.e) + self.s[:, None]).log_() - self.log_z[:, None]


def top_softmax(f: Tensor, temperature: float = 1.0) -> TopSoftmax:
    """:class:`TopSoftmax` of ``softmax(f / temperature, dim=1)`` for logits ``f`` ``(N, C)`` of any float dtype,
    computed in float64: ``d = (f − max f) / T`` (the difference is exact in float64 for float32 logits),
    ``e = exp(d)``, ``s = Σ_c frac(e_c) + (k − 1)`` and ``log_z = log1p(s)`` (:func:`log1p`).

    ``frac(e_c)`` is ``e_c`` below the top and exactly 0 for the ``k`` entries equal to the maximum (``e = 1``), so
    their sum is ``s`` accurate to a few ulps for a single top entry; ``k = round(Σ_c e_c − Σ_c frac(e_c))`` (ties
    at the top count ``exp(0) = 1`` each but one). No mask pass (a comparison and a masked fill cost ~5× more).
    Rows holding NaN or infinite logits give NaN."""
    if f.ndim == 2 and f.shape[1] < SMALL_C:  # (C, N) contiguous: ops and reductions over C vectorize over N
        t = f.T.to(torch.float64, memory_format=torch.contiguous_format)
        d = t.sub_(t.amax(dim=0, keepdim=True)).T
    else:
        t = f.to(torch.float64)
        d = t - t.amax(dim=1, keepdim=True)
    if temperature != 1.0:
        d = d / scalar(temperature, d)
    e = d.exp()
    below = e.frac().sum(dim=1)  # Σ over the entries below the top
    s = below + ((e.sum(dim=1) - below).round() - 1.0)  # + (k − 1), exactly 0 for one top entry
    return TopSoftmax(d, e, s, log1p(s))


def by_blocks(score: Callable[[Tensor], Tensor], f: Tensor) -> Tensor:
    """``score(f)`` for a row-wise ``score`` (``(n, C)`` → ``(n,)``), evaluated on blocks of about :data:`BLOCK`
    entries. The float64 temporaries of a whole ``(N, C)`` matrix are fresh allocations whose first touch costs
    more than the arithmetic (measured, one thread, N = 100 000, C = 100: ~50 ms for one elementwise pass over the
    whole matrix, ~2 ms over it in blocks); blocks stay in cache and reuse freed memory. Block sizes 2^14 to 2^17
    measured: 2^16 the fastest overall for C = 10 and 100."""
    rows = max(1, BLOCK // max(1, f.shape[1]))
    if f.ndim != 2 or f.shape[0] <= rows:
        return score(f)
    return torch.cat([score(f[i : i + rows]) for i in range(0, f.shape[0], rows)])
