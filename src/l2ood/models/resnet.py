"""CIFAR-style ResNet18/34/50 backbones (He et al., 2016, "Deep Residual Learning for Image Recognition").

CIFAR variant (as in OpenOOD and Haas et al., TMLR 2024): 3×3 stride-1 stem, no max-pool, four
stages with ``w, 2w, 4w, 8w`` planes (``w = 64`` is the standard network), the first block of
stages 2-4 with stride 2, global average pooling.

* ResNet18: BasicBlocks 2-2-2-2, feature dimension ``8w`` (512).
* ResNet34: BasicBlocks 3-4-6-3, feature dimension ``8w`` (512).
* ResNet50: Bottleneck blocks 3-4-6-3 (expansion 4, stride on the 3×3 convolution as in
  torchvision's "v1.5"), feature dimension ``32w`` (2048).

The backbone returns the pooled penultimate feature vector ``z``; the classifier head lives in
:class:`l2ood.models.classifier.Classifier`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import check_sizes, init_conv_bn


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


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride) → 1×1 expand to ``4·planes``, with a residual shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet backbone returning pooled features of shape ``(N, feature_dim)``.

    Args:
        blocks: number of residual blocks per stage (``(2, 2, 2, 2)`` for ResNet18).
        width: planes of the first stage; 64 gives the standard network.
        in_channels: input channels (1 for MNIST-family, 3 for RGB).
        block: :class:`BasicBlock` (ResNet18/34) or :class:`Bottleneck` (ResNet50).
    """

    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 64,
        in_channels: int = 3,
        block: type[BasicBlock | Bottleneck] = BasicBlock,
    ) -> None:
        super().__init__()
        check_sizes(width, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        in_planes = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.feature_dim = in_planes
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)


def resnet18(width: int = 64, in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet18 (BasicBlocks 2-2-2-2); ``width=64`` is the standard network."""
    return ResNet((2, 2, 2, 2), width=width, in_channels=in_channels)


def resnet34(width: int = 64, in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet34 (BasicBlocks 3-4-6-3); ``width=64`` is the standard network."""
    return ResNet((3, 4, 6, 3), width=width, in_channels=in_channels)


def resnet50(width: int = 64, in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet50 (Bottlenecks 3-4-6-3, expansion 4); ``width=64`` gives feature_dim 2048."""
    return ResNet((3, 4, 6, 3), width=width, in_channels=in_channels, block=Bottleneck)
