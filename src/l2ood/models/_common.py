"""Helpers shared by the backbone files: argument checks and the standard initialization."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError


def check_sizes(width: int, in_channels: int) -> None:
    """Raise ``ValueError`` for a non-positive width or channel count."""
    if width < 1:
        raise ConfigError(f"width must be >= 1, got {width}")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")


def init_conv_bn(module: nn.Module) -> None:
    """He (fan-out, ReLU) initialization for convolutions; BatchNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
