"""CIFAR-style ResNet18 backbone (He et al., 2016, "Deep Residual Learning for Image Recognition").

CIFAR variant: 3×3 stride-1 stem, no max-pool, BasicBlocks in stages 2-2-2-2 with widths
``w, 2w, 4w, 8w`` (``w = 64`` is the standard network), global average pooling. The backbone
returns the pooled penultimate feature vector ``z`` (dimension ``8w``); the classifier head lives
in :class:`l2ood.models.classifier.Classifier`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual shortcut (1×1 conv when shape changes)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet backbone returning pooled features of shape ``(N, feature_dim)``.

    Args:
        blocks: number of BasicBlocks per stage (``(2, 2, 2, 2)`` for ResNet18).
        width: channels of the first stage; 64 gives the standard ResNet18.
        in_channels: input channels (1 for MNIST-family, 3 for RGB).
    """

    def __init__(
        self, blocks: tuple[int, ...] = (2, 2, 2, 2), width: int = 64, in_channels: int = 3
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        in_planes = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)


def resnet18(width: int = 64, in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet18 (BasicBlocks 2-2-2-2); ``width=64`` is the standard network."""
    return ResNet((2, 2, 2, 2), width=width, in_channels=in_channels)
