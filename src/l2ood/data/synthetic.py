"""Seeded synthetic OoD sets that need no download: texture patches and noise.

``textures``: square patches (side drawn uniformly from 32–128 px) cut at random places from
scikit-image's bundled CC0 texture photographs (brick, grass, gravel), resized to ``size``.
``noise``: half uniform noise U{0..255}, half Gaussian noise N(128, 64²) clipped to [0, 255].
Both are grayscale/RGB as requested, so they arrive already in the ID input format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..extras import require
from .imageset import ImageSet

TEXTURE_SOURCES = ("brick", "grass", "gravel")


def _texture_photos() -> list[np.ndarray]:
    skdata = require("skimage.data", "demo", "the textures OoD set (scikit-image's CC0 photos)")
    return [np.asarray(getattr(skdata, n)(), dtype=np.uint8) for n in TEXTURE_SOURCES]


def make_textures(
    n: int = 2000, size: tuple[int, int] = (32, 32), channels: int = 1, seed: int = 0
) -> ImageSet:
    """``n`` seeded texture patches as uint8 ``(n, channels, *size)``; label = source photo."""
    rng = np.random.default_rng(seed)
    photos = _texture_photos()
    out = torch.empty((n, 1, *size), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    for i in range(n):
        k = int(rng.integers(len(photos)))
        photo = photos[k] if photos[k].ndim == 2 else photos[k].mean(axis=2).astype(np.uint8)
        s = int(rng.integers(32, 129))
        y = int(rng.integers(0, photo.shape[0] - s + 1))
        x = int(rng.integers(0, photo.shape[1] - s + 1))
        patch = torch.from_numpy(photo[y : y + s, x : x + s].astype(np.float32))[None, None]
        patch = F.interpolate(patch, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[i] = patch.round().clamp(0, 255).to(torch.uint8)[0]
        labels[i] = k
    images = out.expand(n, channels, *size).contiguous()
    return ImageSet("textures", images, labels, class_names=list(TEXTURE_SOURCES), meta={"seed": seed})


def make_noise(
    n: int = 2000, size: tuple[int, int] = (32, 32), channels: int = 1, seed: int = 0
) -> ImageSet:
    """``n`` seeded noise images: first half uniform, second half Gaussian (label 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    n_u = n // 2
    uni = torch.randint(0, 256, (n_u, channels, *size), generator=g, dtype=torch.int64)
    gau = (torch.randn((n - n_u, channels, *size), generator=g) * 64 + 128).round()
    images = torch.cat([uni.float(), gau]).clamp(0, 255).to(torch.uint8)
    labels = torch.cat([torch.zeros(n_u, dtype=torch.long), torch.ones(n - n_u, dtype=torch.long)])
    return ImageSet("noise", images, labels, class_names=["uniform", "gaussian"], meta={"seed": seed})


PHOTO_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera")


def write_photo_folder(root: str | Path, n_per_class: int = 50, classes: int = 4,
                       photo_size: tuple[int, int] = (375, 500), seed: int = 0, quality: int = 85) -> Path:
    """Write a seeded photo-sized JPEG image folder ``root/<class>/NNNNN.jpg`` for tests and benchmarks.

    Class ``k`` holds random crops (a quarter to all of each side) of scikit-image's CC0 photo
    :data:`PHOTO_SOURCES` ``[k]``, resized to ``photo_size`` (H, W) with a random size jitter of ±20 %,
    brightness ×U(0.7, 1.3) and a random mirror, so classes are learnable and no two files are equal."""
    from PIL import Image

    skdata = require("skimage.data", "demo", "a synthetic photo folder (scikit-image's CC0 photos)")
    if not 1 <= classes <= len(PHOTO_SOURCES):
        raise ValueError(f"classes must be in [1, {len(PHOTO_SOURCES)}], got {classes}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    for k, name in enumerate(PHOTO_SOURCES[:classes]):
        photo = np.asarray(getattr(skdata, name)(), dtype=np.uint8)
        if photo.ndim == 2:
            photo = np.repeat(photo[:, :, None], 3, axis=2)
        photo = photo[:, :, :3]
        src = Image.fromarray(photo)
        d = root / f"{k:02d}_{name}"
        d.mkdir(parents=True, exist_ok=True)
        ph, pw = photo.shape[:2]
        for i in range(n_per_class):
            ch = int(rng.integers(ph // 4, ph + 1))
            cw = int(rng.integers(pw // 4, pw + 1))
            y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
            jit = rng.uniform(0.8, 1.2)
            out_w, out_h = max(8, int(photo_size[1] * jit)), max(8, int(photo_size[0] * jit))
            im = src.resize((out_w, out_h), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
            a = np.clip(np.asarray(im, dtype=np.float32) * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)
            if rng.random() < 0.5:
                a = a[:, ::-1]
            Image.fromarray(np.ascontiguousarray(a)).save(d / f"{i:05d}.jpg", quality=quality)
    return root
