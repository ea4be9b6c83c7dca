"""CIFAR VGG16-BN backbone (Simonyan & Zisserman, 2015, "Very Deep Convolutional Networks for
Large-Scale Image Recognition"; configuration D with batch normalization).

CIFAR variant (as in kuangliu/pytorch-cifar and OpenOOD): the 13 convolutions of configuration D,
``[64, 64, M, 128, 128, M, 256×3, M, 512×3, M, 512×3, M]``, each 3×3 with padding 1 followed by BN
and ReLU; ``M`` is 2×2 max-pooling with stride 2. The three fully connected layers of the ImageNet
network are dropped: the features are globally average pooled (a 32×32 input is 1×1 after the five
poolings). The poolings use ``ceil_mode=True``, which changes nothing for 32×32 inputs (all sizes
are even) but lets 28×28 inputs through (28 → 14 → 7 → 4 → 2 → 1 instead of reaching 0).

``width`` scales every channel count by ``width / 64`` (rounded, at least 1): ``width = 64`` is the
standard network with feature dimension 512.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._common import check_sizes

VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


def _scaled(channels: int, width: int) -> int:
    """``channels · width / 64`` rounded, at least 1 (``width = 64`` is the standard network)."""
    return max(1, round(channels * width / 64))


class VGG(nn.Module):
    """CIFAR VGG-BN backbone returning pooled features of shape ``(N, feature_dim)``.

    Args:
        config: channel counts at the standard width, ``"M"`` for a 2×2 max-pooling.
        width: scales all channel counts by ``width / 64``; 64 gives the standard network.
        in_channels: input channels (1 for MNIST-family, 3 for RGB).
    """

    def __init__(self, config: tuple[int | str, ...] = VGG16_CONFIG, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        check_sizes(width, in_channels)
        layers: list[nn.Module] = []
        planes = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                out_planes = _scaled(int(v), width)
                layers += [nn.Conv2d(planes, out_planes, 3, padding=1), nn.BatchNorm2d(out_planes), nn.ReLU()]
                planes = out_planes
        self.features = nn.Sequential(*layers)
        self.feature_dim = planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


def vgg16_bn(width: int = 64, in_channels: int = 3) -> VGG:
    """CIFAR VGG16-BN (13 conv layers, no FC layers); ``width=64`` gives feature_dim 512."""
    return VGG(VGG16_CONFIG, width=width, in_channels=in_channels)
