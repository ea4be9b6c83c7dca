"""Row blocks and BLAS helpers shared by the detectors' fits and scores (internal).

* :func:`block_rows` — how many rows to process at once so that a temporary of a block (float64 by
  default) stays at ≤ 4 MiB (in cache, and below the allocator's mmap threshold: large temporaries are
  fresh pages on every allocation, which costs more than the arithmetic on them). Results never depend
  on it.
* :class:`SymmetricGram` — ``Σ xᵀx`` over row blocks, one triangle of each product.
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


def block_rows(d: int, limit: int, itemsize: int = 8) -> int:
    """Rows per block for ``d`` columns: a block of ``itemsize``-byte entries (default float64) ≤ 4 MiB (at
    least 64 rows), at most ``limit``."""
    return max(1, min(limit, max(64, _BLOCK_BYTES // (itemsize * max(d, 1)))))


class SymmetricGram:
    """``Σ_blocks xᵀx`` (D×D) accumulated in float64, one triangle of each product only.

    With one torch thread: SciPy's BLAS symmetric rank-k update ``?syrk`` (half the flops of ``x.T @ x``).
    With more: torch products of the upper block triangle (4 column blocks, 5/8 of the flops) on torch's
    thread pool — SciPy's BLAS threads next to torch's spinning OpenMP threads would contend for the cores
    (measured 3× slower on 2 cores). ``dtype=float64`` (default): float64 products. ``dtype=float32``:
    float32 products (≈ 1.35–1.6× faster), each block's product added to the float64 sum — the float32
    rounding (relative ~1e-7 per block) then limits the accuracy of directions with small eigenvalues (an
    inverse is off by ~2e-9·condition number, relative): acceptable where only a split of the eigenvectors
    matters (ViM), not for an inverse (Mahalanobis). Call :meth:`add` inside :func:`blas_threads`."""

    def __init__(self, d: int, dtype: torch.dtype = torch.float64) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        self._d = d
        self._torch = torch.get_num_threads() > 1
        self._acc = np.zeros((d, d), dtype=np.float64, order="F")
        # the float32 product buffer of the ssyrk path only (the torch path adds its products directly)
        blas32 = dtype == torch.float32 and not self._torch
        self._tmp = np.zeros((d, d), dtype=np.float32, order="F") if blas32 else None

    def add(self, x: Tensor) -> None:
        """Add ``xᵀx`` for ``x`` ``(B, D)`` (converted to :attr:`dtype`)."""
        if not x.shape[0]:
            return
        x = x.detach().to(self.dtype)
        if self._torch:
            acc = torch.from_numpy(self._acc)  # shares the memory
            step = -(-self._d // 4)
            for s in range(0, self._d, step):
                acc[s : s + step, s:] += x[:, s : s + step].T @ x[:, s:]
            return
        a = np.ascontiguousarray(x.numpy()).T  # (D, B), Fortran order: the rows reach BLAS without a copy
        if self._tmp is None:  # float64
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


