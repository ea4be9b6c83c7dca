"""CIFAR DenseNet-BC-100 backbone (Huang et al., 2017, "Densely Connected Convolutional Networks").

CIFAR variant (the original one; as in OpenOOD): 3×3 stride-1 stem with ``2k`` channels, three
dense blocks of ``(100 - 4) / 6 = 16`` bottleneck layers each (BN-ReLU-conv1×1 to ``4k``, BN-ReLU-
conv3×3 to ``k``, output concatenated to the input), separated by transition layers (BN-ReLU-
conv1×1 with compression 0.5, 2×2 average pooling), then a final BN + ReLU and global average
pooling. Growth rate ``k = 12``.

``width`` scales the growth rate by ``width / 64`` (rounded, at least 1): ``width = 64`` is the
standard DenseNet-BC-100 (k = 12) with feature dimension 342.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from ._common import check_sizes, init_conv_bn


class DenseBottleneck(nn.Module):
    """BN-ReLU-conv1×1 (``4k``) → BN-ReLU-conv3×3 (``k``); returns ``cat([x, new], dim=1)``."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        inter = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1×1 (compression) → 2×2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(torch.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC backbone returning pooled features of shape ``(N, feature_dim)``.

    Args:
        depth: total depth ``6n + 4`` (100 for DenseNet-BC-100).
        growth_rate: ``k`` at the standard width (12).
        compression: channel reduction of the transition layers (0.5).
        width: scales the growth rate by ``width / 64``; 64 gives the standard network.
        in_channels: input channels (1 for MNIST-family, 3 for RGB).
    """

    def __init__(
        self,
        depth: int = 100,
        growth_rate: int = 12,
        compression: float = 0.5,
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_sizes(width, in_channels)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"depth must be 6n + 4 with n >= 1, got {depth}")
        if not 0 < compression <= 1:
            raise ConfigError(f"compression must be in (0, 1], got {compression}")
        n = (depth - 4) // 6  # bottleneck layers per dense block (each has two convolutions)
        k = max(1, round(growth_rate * width / 64))
        planes = 2 * k
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=1, padding=1, bias=False)
        layers: list[nn.Module] = []
        for b in range(3):
            for _ in range(n):
                layers.append(DenseBottleneck(planes, k))
                planes += k
            if b < 2:
                out_planes = max(1, math.floor(planes * compression))
                layers.append(Transition(planes, out_planes))
                planes = out_planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(planes)
        self.growth_rate = k
        self.feature_dim = planes
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(x))
        out = torch.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def densenet100(width: int = 64, in_channels: int = 3) -> DenseNet:
    """CIFAR DenseNet-BC-100; ``width=64`` gives growth rate 12 and feature_dim 342."""
    return DenseNet(100, 12, 0.5, width=width, in_channels=in_channels)
