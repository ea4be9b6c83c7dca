"""RankFeat — energy after removing the rank-1 component of the last feature maps.

For a feature map ``X ∈ R^{C_m × HW}`` (one image) with largest singular triple ``(s₁, u₁, v₁)``, rank-1
removal is ``X' = X − s₁ u₁ v₁ᵀ``. Two branches, each run to the logits by the rest of the network::

    f⁽⁴⁾ = head(pool(X'₄))                  X₄: output of the last block (stage 4), before pooling
    f⁽³⁾ = head(pool(stage4(X'₃)))          X₃: output of stage 3
    S(x) = T · log Σ_c exp(((f⁽³⁾ + f⁽⁴⁾)/2)_c / T)       (energy of the fused logits; higher = ID)

Song, Sebe & Wang, "RankFeat: Rank-1 Feature Removal for Out-of-distribution Detection", NeurIPS 2022.
Defaults (OpenOOD v1.5's ``rankfeat.yml``): ``T = 1``, fusion of the stage-3 and stage-4 branches
(``fuse=False``: stage 4 only), exact SVD (``torch.linalg.svd``, not the power-iteration shortcut).

The pooled features ``z`` are an average over the map, so rank-1 removal needs the map before pooling,
which the :class:`~l2ood.detectors.features.Extraction` API does not carry: RankFeat is an
:class:`~l2ood.detectors.base.InputDetector` that runs the model with a forward hook replacing the
output of one block of l2ood's CIFAR ResNet backbones (``resnet18/34/50``; stage 4 = the trailing
blocks whose output has ``feature_dim`` channels). Other backbones are a
:class:`~l2ood.errors.ConfigError`. Logits are ``model.logits_from_features(z', variant)`` (so the
trained logits of an L2 head normalize the modified ``z'``), in fp32 without autocast, in eval mode
(the previous mode is restored), without gradients. Cost: two forward passes per image plus a batched
SVD of ``C_m × HW`` matrices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models import Classifier
from ..models.resnet import BasicBlock, Bottleneck, ResNet
from ..runtime import Runtime
from .base import InputDetector, register


def remove_rank1(fmap: Tensor) -> Tensor:
    """``X − s₁u₁v₁ᵀ`` for each map of ``fmap`` ``(N, C, H, W)`` seen as a ``C × HW`` matrix (fp32)."""
    n, c, h, w = fmap.shape
    m = fmap.float().reshape(n, c, h * w)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (m - s[:, :1, None] * (u[:, :, :1] @ vh[:, :1, :])).reshape(n, c, h, w)


def _out_channels(block: BasicBlock | Bottleneck) -> int:
    return int(block.bn3.num_features if isinstance(block, Bottleneck) else block.bn2.num_features)


def resnet_stage_blocks(model: Any) -> tuple[nn.Module, nn.Module]:
    """``(last block of stage 3, last block of stage 4)`` of an l2ood ResNet classifier (else ConfigError)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ResNet):
        raise ConfigError("rankfeat needs the feature maps before pooling and supports l2ood's ResNet backbones "
                          f"(resnet18/34/50) only, not {type(backbone or model).__name__}")
    blocks = [b for b in backbone.layers if isinstance(b, (BasicBlock, Bottleneck))]
    if len(blocks) != len(backbone.layers):
        raise ConfigError("rankfeat: unexpected block types in the ResNet backbone")
    start = len(blocks)
    while start > 0 and _out_channels(blocks[start - 1]) == backbone.feature_dim:
        start -= 1
    if start == 0:
        raise ConfigError("rankfeat: the backbone has no stage before its last one")
    return blocks[start - 1], blocks[-1]


@register
class RankFeat(InputDetector):
    """Energy of the mean logits after rank-1 removal at stages 3 and 4 (higher = ID)."""

    name = "rankfeat"
    uses_logits = True

    def __init__(self, temperature: float = 1.0, fuse: bool = True, batch_size: int = 256) -> None:
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.temperature = float(temperature)
        self.fuse = bool(fuse)
        self.batch_size = batch_size

    @staticmethod
    def branch_logits(model: Classifier, x: Tensor, block: nn.Module, variant: str = "trained") -> Tensor:
        """Logits (fp32) of ``x`` with the rank-1 component removed from ``block``'s output."""

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:  # noqa: ARG001
            return remove_rank1(output)

        handle = block.register_forward_hook(hook)
        try:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return model.logits_from_features(model.features(x.float()), variant)
        finally:
            handle.remove()

    def score_images(self, model: Classifier, images: Tensor, rt: Runtime, variant: str = "trained") -> Tensor:
        stage3, stage4 = resnet_stage_blocks(model)
        was_training = model.training
        model.eval()
        scores = []
        try:
            with torch.no_grad():
                for s in range(0, images.shape[0], self.batch_size):
                    x = rt.batch(images[s : s + self.batch_size])
                    logits = self.branch_logits(model, x, stage4, variant)
                    if self.fuse:
                        logits = (logits + self.branch_logits(model, x, stage3, variant)) / 2
                    t = self.temperature
                    scores.append((t * (logits / t).logsumexp(dim=1)).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(scores) if scores else torch.empty(0)
