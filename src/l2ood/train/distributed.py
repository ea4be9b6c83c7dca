"""Data-parallel training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun --nproc_per_node=N -m l2ood train ...`` (multi-node: torchrun's ``--nnodes``,
``--node_rank``, ``--rdzv_endpoint`` flags) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; l2ood then

* initializes the process group (``nccl`` on CUDA, ``gloo`` on CPU), one GPU per local rank;
* treats ``--batch-size`` as the **global** batch: every rank draws the same shuffle of epoch e and
  the same augmentation of step s, and takes its contiguous shard of each global batch;
* scales the per-rank loss as ``sum_of_losses · world / global_batch`` so DDP's gradient averaging
  yields exactly the gradient of the global mean loss (also for an uneven last batch);
* reduces loss/accuracy counters across ranks; only rank 0 writes checkpoints, logs and artifacts.

BatchNorm: by default each rank normalizes with the statistics of its own shard (standard DDP).
``--sync-bn`` normalizes with the statistics of the whole global batch: torch's ``SyncBatchNorm``
on CUDA, and on CPU :class:`SyncBatchNorm2d` below (autograd-aware all-reduce of per-channel sums),
which torch does not provide. With ``--sync-bn`` an N-process run computes the same updates as a
1-process run with the same global batch (up to float summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F


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


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum a tensor over ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: Tensor) -> Tensor:
    """Minimum of a tensor over ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch across ranks (CPU/gloo-capable).

    mean = Σx / n, var = Σ(x − mean)² / n over all ranks (n = total pixels per channel), computed with
    an autograd-aware all-reduce so gradients flow through the statistics exactly as in a
    single-process BatchNorm over the global batch. Running statistics use the unbiased variance.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        c = x.shape[1]
        count = torch.tensor([xf.numel() / c], dtype=torch.float32, device=x.device)
        # two passes (mean, then centred second moment), as a single-process BatchNorm does: the
        # one-pass E[x²] − E[x]² loses precision in fp32 when |mean| >> std
        s1 = all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
        n = s1[-1]
        mean = s1[:c] / n
        centred = xf - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_bn(model: nn.Module, device_type: str) -> nn.Module:
    """Replace BatchNorm layers by their synchronized version for ``device_type``."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def swap(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.BatchNorm2d) and not isinstance(m, SyncBatchNorm2d):
            new = SyncBatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            new.load_state_dict(m.state_dict())
            return new
        for name, child in m.named_children():
            setattr(m, name, swap(child))
        return m

    return swap(model)


def shard(n_global: int, info: DistInfo) -> tuple[int, int]:
    """``(start, length)`` of this rank's contiguous shard of a global batch of ``n_global``."""
    base, extra = divmod(n_global, info.world)
    start = info.rank * base + min(info.rank, extra)
    return start, base + (1 if info.rank < extra else 0)


def scaled_loss(logits: Tensor, y: Tensor, n_global: int, info: DistInfo) -> Tensor:
    """Per-rank loss whose DDP-averaged gradient equals that of the global mean cross-entropy."""
    return F.cross_entropy(logits, y, reduction="sum") * (info.world / n_global)
