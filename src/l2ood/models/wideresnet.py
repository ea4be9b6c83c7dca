"""CIFAR Wide ResNet WRN-28-10 backbone (Zagoruyko & Komodakis, 2016, "Wide Residual Networks").

CIFAR variant (the original one; as in OpenOOD and Haas et al., TMLR 2024): 3×3 stride-1 stem with
16 channels, three groups of ``(28 - 4) / 6 = 4`` pre-activation basic blocks (BN-ReLU-conv3×3-
BN-ReLU-[dropout]-conv3×3) with ``16k, 32k, 64k`` channels (widen factor ``k = 10``), the first
block of groups 2 and 3 with stride 2, 1×1 convolutions on the shortcut when the shape changes,
then a final BN + ReLU and global average pooling. Dropout is 0 by default.

``width`` scales every channel count by ``width / 64`` (rounded, at least 1): ``width = 64`` is the
standard WRN-28-10 with feature dimension ``64k = 640``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from ._common import check_sizes, init_conv_bn


def _scaled(channels: int, width: int) -> int:
    """``channels · width / 64`` rounded, at least 1 (``width = 64`` is the standard network)."""
    return max(1, round(channels * width / 64))


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3×3-BN-ReLU-dropout-conv3×3 plus a (1×1 conv) shortcut.

    As in the reference implementation, when the shape changes the shortcut convolution is applied
    to the pre-activated input ``relu(bn1(x))``; otherwise the shortcut is the identity on ``x``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = stride == 1 and in_planes == planes
        self.shortcut: nn.Module = nn.Identity()
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = torch.relu(self.bn1(x))
        out = torch.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.shortcut(pre))


class WideResNet(nn.Module):
    """CIFAR Wide ResNet backbone returning pooled features of shape ``(N, feature_dim)``.

    Args:
        depth: total depth ``6n + 4`` (28 for WRN-28-10).
        widen_factor: ``k`` (10 for WRN-28-10).
        width: scales all channel counts by ``width / 64``; 64 gives the standard network.
        in_channels: input channels (1 for MNIST-family, 3 for RGB).
        drop_rate: dropout between the two convolutions of each block (0 by default).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        width: int = 64,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_sizes(width, in_channels)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        stem, *groups = (_scaled(c, width) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = stem
        for i, planes in enumerate(groups):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(WideBasicBlock(in_planes, planes, stride, drop_rate))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.feature_dim = in_planes
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(x))
        out = torch.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def wrn28_10(width: int = 64, in_channels: int = 3) -> WideResNet:
    """CIFAR WRN-28-10 (dropout 0); ``width=64`` is the standard network (feature_dim 640)."""
    return WideResNet(28, 10, width=width, in_channels=in_channels)
