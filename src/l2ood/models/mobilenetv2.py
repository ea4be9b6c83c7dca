"""CIFAR MobileNetV2 backbone (Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks").

Blocks as in the paper (and torchvision): inverted residuals 1×1 expand (factor ``t``, omitted for
``t = 1``) → 3×3 depthwise (carries the stride) → 1×1 linear projection, BN after every convolution,
ReLU6 after the first two, identity shortcut when the stride is 1 and the channels match; a final
1×1 convolution to 1280 channels + BN + ReLU6, then global average pooling.

CIFAR variant (the common adaptation of kuangliu/pytorch-cifar and chenyaofo/pytorch-cifar-models):
the stem convolution and the first stride-2 stage (24 channels) use stride 1 instead of 2, so a
32×32 input is downsampled 8× (to 4×4) instead of 32×. Unlike kuangliu's version, no 1×1 projection
shortcut is added to stride-1 blocks whose channels change, and the ``t = 1`` block has no expansion
convolution (both as in the paper), so the backbone has ≈ 2.22 M parameters like the ImageNet one.

``width`` scales every channel count by ``width / 64`` (rounded, at least 1), including the final
1280: ``width = 64`` is the standard width multiplier 1.0 with feature dimension 1280.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ._common import check_sizes

# (expansion t, output channels c, repeats n, stride s of the first block); CIFAR strides.
MOBILENETV2_CIFAR_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet network
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _scaled(channels: int, width: int) -> int:
    """``channels · width / 64`` rounded, at least 1 (``width = 64`` is the standard network)."""
    return max(1, round(channels * width / 64))


def _conv_bn(in_planes: int, out_planes: int, kernel: int, stride: int = 1, groups: int = 1,
             relu6: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_planes, out_planes, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_planes),
    ]
    if relu6:
        layers.append(nn.ReLU6())
    return layers


class InvertedResidual(nn.Module):
    """1×1 expand (``t > 1``) → 3×3 depthwise → 1×1 linear projection, identity shortcut if shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn(in_planes, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden)
        layers += _conv_bn(hidden, out_planes, 1, relu6=False)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_planes == out_planes

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 backbone returning pooled features of shape ``(N, feature_dim)``.

    Args:
        width: scales all channel counts by ``width / 64``; 64 gives width multiplier 1.0.
        in_channels: input channels (1 for MNIST-family, 3 for RGB).
        config: ``(t, c, n, s)`` rows at the standard width.
    """

    def __init__(
        self,
        width: int = 64,
        in_channels: int = 3,
        config: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_CIFAR_CONFIG,
    ) -> None:
        super().__init__()
        check_sizes(width, in_channels)
        planes = _scaled(32, width)
        layers: list[nn.Module] = _conv_bn(in_channels, planes, 3, stride=1)  # stride 2 on ImageNet
        for t, c, n, s in config:
            out_planes = _scaled(c, width)
            for j in range(n):
                layers.append(InvertedResidual(planes, out_planes, s if j == 0 else 1, t))
                planes = out_planes
        last = _scaled(1280, width)
        layers += _conv_bn(planes, last, 1)
        self.features = nn.Sequential(*layers)
        self.feature_dim = last
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


def mobilenetv2(width: int = 64, in_channels: int = 3) -> MobileNetV2:
    """CIFAR MobileNetV2 (width multiplier ``width / 64``); ``width=64`` gives feature_dim 1280."""
    return MobileNetV2(width=width, in_channels=in_channels)
