"""Batch-level image operations in plain torch (airbench style: whole batches, no per-image Python).

* :func:`convert_format` brings any uint8 set to the ID input format (channels, size): RGB→gray by
  ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, gray→RGB by repetition, bilinear resize with
  antialiasing.
* :func:`augment_batch` applies per-sample random crops with zero padding and, where sensible,
  per-sample random horizontal flips, all drawn from one ``torch.Generator``.
* :func:`channel_stats` gives the per-channel mean/std that the model uses to normalize inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import ConfigError

_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Fit:
    """The geometry of a named preprocessing config, as timm's pretrained configs name it (``crop_pct``,
    ``interpolation``): how an image of any size becomes the model's input size ``(H, W)``.

    ``resize="stretch"`` resizes the whole image to ``(H, W)``; ``resize="shorter-side"`` resizes the shorter
    side to ``round(max(H, W) / crop_pct)`` (aspect kept) and crops the centre ``(H, W)``."""

    name: str
    resize: Literal["stretch", "shorter-side"]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    antialias: bool = True


#: The named fits: ``resize`` (stretch), ``crop`` (torchvision ``Resize(s)`` + ``CenterCrop(s)``) and ``imagenet``
#: (the ImageNet evaluation view, ``Resize(256)`` + ``CenterCrop(224)``: crop_pct 0.875).
FIT_CONFIGS: dict[str, Fit] = {f.name: f for f in (Fit("resize", "stretch"), Fit("crop", "shorter-side"),
                                                   Fit("imagenet", "shorter-side", crop_pct=0.875))}
FITS = tuple(FIT_CONFIGS)


@dataclass(frozen=True)
class Preset:
    """A named input config for a classifier l2ood did not train (``l2ood import --preprocessing NAME``): input
    size, named fit and the per-channel normalization on the [0, 1] scale, as the model was trained with."""

    name: str
    size: tuple[int, int]
    fit: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    about: str


#: ``imagenet``: torchvision's and timm's ImageNet evaluation view (shorter side 256, centre crop 224, ImageNet
#: mean/std); ``cifar``: 32×32 stretched, CIFAR-10's mean/std; ``unit``: 32×32 stretched, no normalization (the
#: network takes [0, 1] images). Every field can be overridden at import (size, fit, mean, std).
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("imagenet", (224, 224), "imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
           "ImageNet evaluation view: resize 256, centre crop 224, ImageNet mean/std"),
    Preset("cifar", (32, 32), "resize", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
           "32x32, CIFAR-10 mean/std"),
    Preset("unit", (32, 32), "resize", (0.0,), (1.0,), "32x32, images on [0, 1], no normalization"),
)}


def fit_config(name: str) -> Fit:
    """The named fit (:data:`FIT_CONFIGS`); a clear error for an unknown name."""
    if name not in FIT_CONFIGS:
        raise ConfigError(f"fit must be one of {FITS}, got {name!r}")
    return FIT_CONFIGS[name]


def _crop_geometry(h: int, w: int, size: tuple[int, int], fit: str = "crop") -> tuple[tuple[int, int], int, int]:
    """``((resized h, w), top, left)``: shorter side → ``round(max(size) / crop_pct)`` of the named fit, then a
    centre crop of ``size``."""
    th, tw = size
    s = round(max(th, tw) / fit_config(fit).crop_pct)
    nh, nw = (int(s * h / w), s) if w <= h else (s, int(s * w / h))
    nh, nw = max(nh, th), max(nw, tw)
    return (nh, nw), round((nh - th) / 2), round((nw - tw) / 2)


def convert_format(
    images: Tensor, channels: int, size: tuple[int, int], chunk: int = 4096, fit: str = "resize"
) -> Tensor:
    """Convert uint8 ``(N, C, H, W)`` images to ``channels`` and ``size``; returns uint8.

    ``fit`` names the geometry (:data:`FIT_CONFIGS`): ``"resize"`` stretches the whole image to ``size``;
    ``"crop"`` resizes the shorter side to ``max(size)`` and crops the centre (torchvision ``Resize`` +
    ``CenterCrop``); ``"imagenet"`` resizes the shorter side to ``max(size)·256/224`` first (crop_pct 0.875)."""
    cfg = fit_config(fit)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError("convert_format expects uint8 (N, C, H, W) images")
    n, c, h, w = images.shape
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if c not in (1, 3, 4):
        raise ConfigError(f"input images must have 1, 3 or 4 channels, got {c}")
    if c == channels and (h, w) == tuple(size) and cfg.crop_pct == 1.0:
        return images
    size = (int(size[0]), int(size[1]))
    out = torch.empty((n, channels, *size), dtype=torch.uint8)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].float()
        if x.shape[1] == 4:  # RGBA: drop alpha (callers composite on white before when needed)
            x = x[:, :3]
        if x.shape[1] == 3 and channels == 1:
            x = (x * _LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if cfg.resize == "shorter-side" and ((h, w) != tuple(size) or cfg.crop_pct != 1.0):
            (nh, nw), top, left = _crop_geometry(h, w, size, fit)
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode=cfg.interpolation, antialias=cfg.antialias,
                                  align_corners=False)
            x = x[:, :, top : top + size[0], left : left + size[1]]
        elif x.shape[-2:] != tuple(size):
            x = F.interpolate(x, size=size, mode=cfg.interpolation, antialias=cfg.antialias, align_corners=False)
        out[s : s + chunk] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def channel_stats(images: Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale (streamed, float64)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    count = 0
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].double() / 255.0
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        count += x.numel() // c
    mean = s / count
    std = (s2 / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


REFERENCE_SIDE = 32  # recipes state their crop padding for 32 × 32 images (the CIFAR standard: 4 px)


def scaled_pad(pad: int, size: tuple[int, int]) -> int:
    """A recipe's random-crop padding ``pad`` (stated for 32 × 32 images) scaled to images of ``size``:
    ``round(pad · min(H, W) / 32)``, at least 1 when ``pad > 0``; 0 stays 0.

    >>> scaled_pad(4, (32, 32)), scaled_pad(4, (28, 28)), scaled_pad(4, (224, 224)), scaled_pad(4, (8, 8))
    (4, 4, 28, 1)
    """
    if pad <= 0:
        return 0
    return max(1, round(pad * min(size) / REFERENCE_SIDE))


def augment_batch(
    x: Tensor, pad: int, hflip: bool, generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
) -> Tensor:
    """Per-sample random crop (zero padding ``pad``) and optional horizontal flip of a batch.

    Works on any dtype; every sample draws its own offsets ``(dy, dx) ∈ [0, 2·pad]²`` and its own
    flip coin from ``generator`` (on the CPU, so results do not depend on the device).
    ``rows = (start, total)``: ``x`` holds rows ``start … start+len(x)-1`` of a batch of ``total``
    samples; the draws are made for the whole batch and sliced, so a batch split across
    data-parallel ranks is augmented exactly like the unsplit batch.
    """
    n, c, h, w = x.shape
    start, total = rows if rows is not None else (0, n)
    if not 0 <= start <= total - n:
        raise ConfigError(f"rows {rows} do not fit a shard of {n} samples")
    sl = slice(start, start + n)
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[sl].to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[sl].to(x.device)
        ri = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        ci = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bidx = torch.arange(n, device=x.device)[:, None, None, None]
        cidx = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, ri, ci]
    if hflip:
        flip = (torch.rand(total, generator=generator) < 0.5)[sl].to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
