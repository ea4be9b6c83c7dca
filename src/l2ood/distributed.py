"""Process groups under ``torchrun``: who this process is, where it computes, and how ranks share rows.

``torchrun --nproc_per_node=K -m l2ood COMMAND ...`` starts K processes and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in each. This module is the one place that reads them and decides:

* **the device of a rank**: ``cuda:LOCAL_RANK`` when the runtime computes on CUDA, else the runtime's own device
  (:func:`rank_device`);
* **the backend**: ``nccl`` on CUDA, ``gloo`` on the CPU (:func:`init_distributed`);
* **who writes**: rank 0 alone (:func:`on_main`; the others wait for it and learn whether it succeeded).

Training (:mod:`l2ood.train.distributed`) and distributed evaluation (:meth:`l2ood.run.Run.forward`) share the
primitives below. Evaluation splits a data set into contiguous, batch-aligned shards
(:func:`batch_shard`: rank r reads whole batches ``b_r … b_{r+1}−1`` of the single-process batching, so every
batch holds the same images as in one process) and puts the shards back together in rank order
(:func:`gather_rows`, shards of any length, zero included). Every function is a no-op returning its input in a
single process.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import ConfigError, RunError

T = TypeVar("T")

# recent torch names it all_gather_single and deprecates all_gather_into_tensor (the name in older releases)
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

#: bytes per rank moved by one round of :func:`gather_rows` (bounds the transfer buffer, e.g. on the GPU)
GATHER_ROUND_BYTES = 64 * 2**20


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process (``world == 1`` when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def dist_from_env() -> DistInfo:
    """Read torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_type: str) -> tuple[DistInfo, bool]:
    """Initialize the process group if torchrun asked for one; returns (info, created_here)."""
    info = dist_from_env()
    if not info.active:
        return info, False
    if dist.is_initialized():
        return info, False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend)
    return info, True


def ensure_group(device_type: str) -> DistInfo:
    """:func:`init_distributed` for commands that do not own the group's lifetime (evaluation): a group created
    here is destroyed when the process exits."""
    info, created = init_distributed(device_type)
    if created:
        atexit.register(_destroy)
    return info


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    """Whether a process group of more than one rank is initialized. Under torchrun before the group is set up
    this raises (``RuntimeError``): a collective that quietly ran as a single process there would leave the
    ranks out of step."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if dist_from_env().active:
        raise RuntimeError("started by torchrun, but the process group is not set up yet: call "
                           "l2ood.distributed.ensure_group(device_type) first")
    return False


def rank_device(device: torch.device) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` for a CUDA runtime under torchrun (one GPU per
    local rank, whatever CUDA index was asked for), else ``device`` unchanged."""
    info = dist_from_env()
    if device.type != "cuda" or not info.active:
        return device
    if info.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {info.local_rank} needs GPU {info.local_rank}, but only "
                          f"{torch.cuda.device_count()} CUDA device(s) exist: start at most that many processes per "
                          "node (torchrun --nproc_per_node)")
    return torch.device("cuda", info.local_rank)


def _comm_device() -> torch.device:
    """Where tensors must be for the group's collectives (the current GPU under nccl, else the CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(t: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
    """``t`` reduced over ranks with ``op``, in place (no-op when not distributed)."""
    if not is_active():
        return t
    dev = _comm_device()
    if t.device == dev:
        dist.all_reduce(t, op=op)
    else:
        tmp = t.to(dev)
        dist.all_reduce(tmp, op=op)
        t.copy_(tmp)
    return t


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum a tensor over ranks, in place (no-op when not distributed)."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_min(t: Tensor) -> Tensor:
    """Minimum of a tensor over ranks, in place (no-op when not distributed)."""
    return _all_reduce(t, dist.ReduceOp.MIN)


def all_reduce_max(t: Tensor) -> Tensor:
    """Maximum of a tensor over ranks, in place (no-op when not distributed)."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (collective; ``flag`` in one process)."""
    return bool(all_reduce_min(torch.tensor([int(flag)], dtype=torch.int64)).item())


def total(n: int) -> int:
    """``n`` summed over ranks (collective; ``n`` in one process)."""
    return int(all_reduce_sum(torch.tensor([n], dtype=torch.int64)).item())


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_active():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (collective): the other ranks wait for it and get ``None``. When ``fn`` raises
    on rank 0, rank 0 re-raises it and every other rank raises :class:`~l2ood.errors.RunError`, so no rank is
    left waiting. In one process: ``fn()``."""
    if not is_active():
        return fn()
    out: T | None = None
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            out = fn()
        except BaseException as e:  # re-raised below, after the other ranks know
            error = e
    if not agree(error is None):
        if error is not None:
            raise error
        raise RunError("rank 0 failed while writing (its own message says why); this rank stops too")
    return out


def shard(n_global: int, info: DistInfo) -> tuple[int, int]:
    """``(start, length)`` of this rank's contiguous shard of a global batch of ``n_global``."""
    base, extra = divmod(n_global, info.world)
    start = info.rank * base + min(info.rank, extra)
    return start, base + (1 if info.rank < extra else 0)


def batch_shard(n: int, batch_size: int, info: DistInfo) -> tuple[int, int]:
    """``(start, stop)`` of this rank's rows of a data set of ``n`` rows read in batches of ``batch_size``:
    the ``ceil(n / batch_size)`` batches are split into contiguous runs as evenly as :func:`shard` splits rows,
    so each rank reads whole batches of the single-process batching (the last rank the last, shorter one), and
    the ranks' rows, in rank order, are rows ``0 … n−1``. A rank gets no rows when there are fewer batches
    than ranks."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    first, count = shard(-(-n // batch_size), info)
    return min(n, first * batch_size), min(n, (first + count) * batch_size)


def gather_rows(t: Tensor, round_bytes: int = GATHER_ROUND_BYTES) -> Tensor:
    """Every rank's rows of ``t`` (dimension 0), concatenated in rank order, on every rank, on the CPU
    (collective; ``t`` itself in one process).

    Shards may have any length, zero included; the other dimensions and the dtype must agree. The lengths are
    all-gathered first; the rows then travel in rounds of at most ``round_bytes`` per rank, each round's pieces
    padded to one length and all-gathered into one ``(world · rows, …)`` buffer on the backend's device (the
    GPU under nccl), so the transfer buffer stays bounded however large the data set."""
    if not is_active():
        return t
    out = _gather(t, round_bytes, main_only=False)
    assert out is not None
    return out


def gather_rows_to_main(t: Tensor, round_bytes: int = GATHER_ROUND_BYTES) -> Tensor | None:
    """Every rank's rows of ``t`` concatenated in rank order on rank 0 only, on the CPU; ``None`` on the other ranks
    (collective; ``t`` itself in one process).

    As :func:`gather_rows`, but only rank 0 allocates the whole: the others hold their own rows and one round's
    buffer (``round_bytes``), so a set that fits once on a machine is not held once per rank while rank 0 saves it."""
    if not is_active():
        return t
    return _gather(t, round_bytes, main_only=True)


def _gather(t: Tensor, round_bytes: int, main_only: bool) -> Tensor | None:
    """The rounds of :func:`gather_rows` (``main_only=False``: all-gather, every rank keeps the whole) and
    :func:`gather_rows_to_main` (``main_only=True``: gather to rank 0, the others get ``None``)."""
    world, dev, me = dist.get_world_size(), _comm_device(), dist.get_rank()
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    got = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(got, n)
    sizes = [int(s.item()) for s in got]
    rest = tuple(t.shape[1:])
    keep = not main_only or me == 0
    out = torch.empty((sum(sizes), *rest), dtype=t.dtype) if keep else None
    starts = [sum(sizes[:r]) for r in range(world)]
    row_bytes = t.element_size() * max(1, int(torch.Size(rest).numel()))
    per_round = max(1, round_bytes // row_bytes)
    longest = max(sizes)
    for s in range(0, longest, per_round):
        m = min(per_round, longest - s)
        send = torch.zeros((m, *rest), dtype=t.dtype, device=dev)
        mine = t[s : s + m]
        send[: mine.shape[0]].copy_(mine)
        if main_only:
            pieces = [torch.empty((m, *rest), dtype=t.dtype, device=dev) for _ in range(world)] if keep else None
            dist.gather(send, gather_list=pieces, dst=0)
        else:
            recv = torch.empty((world * m, *rest), dtype=t.dtype, device=dev)
            _ALL_GATHER(recv, send)
            pieces = list(recv.split(m))
        if out is None or pieces is None:
            continue
        for r in range(world):
            k = max(0, min(m, sizes[r] - s))
            if k:
                out[starts[r] + s : starts[r] + s + k].copy_(pieces[r][:k])
    return out

__all__ = ["GATHER_ROUND_BYTES", "DistInfo", "agree", "all_reduce_max", "all_reduce_min", "all_reduce_sum",
           "barrier", "batch_shard", "dist_from_env", "ensure_group", "gather_rows", "gather_rows_to_main",
           "init_distributed", "is_active", "on_main", "rank_device", "shard", "total"]
