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

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

# the primitives shared with distributed evaluation live one floor down (l2ood.distributed), re-exported here
from ..distributed import DistInfo as DistInfo
from ..distributed import all_reduce_min as all_reduce_min
from ..distributed import all_reduce_sum as all_reduce_sum
from ..distributed import dist_from_env as dist_from_env
from ..distributed import init_distributed as init_distributed
from ..distributed import shard as shard


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


def scaled_loss(logits: Tensor, y: Tensor, n_global: int, info: DistInfo) -> Tensor:
    """Per-rank loss whose DDP-averaged gradient equals that of the global mean cross-entropy."""
    return F.cross_entropy(logits, y, reduction="sum") * (info.world / n_global)
