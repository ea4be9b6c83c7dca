"""Row blocks and BLAS helpers shared by the detectors' fits and scores (internal).

* :func:`block_rows` — how many rows to process at once so that a float64 temporary of a block stays
  at ≤ 4 MiB (in cache, and below the allocator's mmap threshold: large temporaries are fresh pages on
  every allocation, which costs more than the arithmetic on them). Results never depend on it.
* :class:`SymmetricGram` — ``Σ xᵀx`` over row blocks with the BLAS symmetric rank-k update.
* :func:`blas_threads` — run SciPy's BLAS with torch's thread count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from scipy.linalg.blas import dsyrk as _dsyrk
from scipy.linalg.blas import ssyrk as _ssyrk
from torch import Tensor

_BLOCK_BYTES = 4 * 2**20


def block_rows(d: int, limit: int) -> int:
    """Rows per block for ``d`` columns: float64 block ≤ 4 MiB (at least 64 rows), at most ``limit``."""
    return max(1, min(limit, max(64, _BLOCK_BYTES // (8 * max(d, 1)))))


class SymmetricGram:
    """``Σ_blocks xᵀx`` (D×D) accumulated in float64 with the BLAS symmetric rank-k update (``?syrk``).

    Only the upper triangle is computed (half the flops of ``x.T @ x``); :meth:`result` mirrors it.
    ``dtype=float64`` (default): ``dsyrk`` straight into the float64 sum. ``dtype=float32``: each block's
    product by ``ssyrk`` in float32 (about 1.6× faster), added to the float64 sum — the float32 rounding
    (relative ~1e-7 per block of ≤ 1024 rows) then limits the accuracy of directions with small eigenvalues
    (relative error ~1e-9·condition number), which is fine where only the leading eigenvectors matter
    (ViM), not for an inverse (Mahalanobis). Call :meth:`add` inside :func:`blas_threads` to run the BLAS
    with torch's thread count."""

    def __init__(self, d: int, dtype: torch.dtype = torch.float64) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        self._acc = np.zeros((d, d), dtype=np.float64, order="F")
        self._tmp = np.zeros((d, d), dtype=np.float32, order="F") if dtype == torch.float32 else None

    def add(self, x: Tensor) -> None:
        """Add ``xᵀx`` for ``x`` ``(B, D)`` (converted to :attr:`dtype`; C-contiguous rows reach BLAS
        transposed, without a copy)."""
        if not x.shape[0]:
            return
        a = np.ascontiguousarray(x.detach().to(self.dtype).numpy()).T  # (D, B), Fortran order
        if self._tmp is None:
            self._acc = _dsyrk(1.0, a, beta=1.0, c=self._acc, trans=0, lower=0, overwrite_c=1)
        else:
            self._tmp = _ssyrk(1.0, a, beta=0.0, c=self._tmp, trans=0, lower=0, overwrite_c=1)
            self._acc += self._tmp

    def result(self) -> Tensor:
        """The accumulated symmetric matrix, float64 (a new tensor)."""
        upper = torch.from_numpy(np.triu(self._acc))
        return upper + torch.triu(upper, diagonal=1).T


@contextmanager
def blas_threads() -> Iterator[None]:
    """Run SciPy's BLAS with :func:`torch.get_num_threads` threads inside the block (``threadpoolctl``,
    which comes with scikit-learn; without it the BLAS keeps its own setting)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        yield


