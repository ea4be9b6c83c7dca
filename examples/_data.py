"""Small generated image data for the examples (so they run offline, in seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def gratings(n: int, classes: int = 3, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB images: class k is a stripe pattern with k+1 periods (random phase and colour); uint8 N×H×W×3."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    pos = np.arange(size) / size
    wave = np.sin(2 * np.pi * (labels[:, None] + 1) * pos[None, :] + rng.uniform(0, 6.3, n)[:, None])
    gray = 128 + 90 * np.broadcast_to(wave[:, :, None], (n, size, size))
    tint = rng.uniform(0.7, 1.0, (n, 1, 1, 3))
    imgs = np.clip(gray[..., None] * tint + rng.normal(0, 8, (n, size, size, 3)), 0, 255)
    return imgs.astype(np.uint8), labels


def noise(n: int, size: int = 40, seed: int = 1) -> np.ndarray:
    """Colour noise images of another size: out of distribution."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size + 6, 3), dtype=np.uint8)


def write_folder(root: Path, n_per_class: int = 60, classes: int = 3, seed: int = 0) -> Path:
    """An image folder ``root/<class>/*.png`` (the torchvision ImageFolder layout)."""
    x, y = gratings(n_per_class * classes, classes, seed=seed)
    for i, (img, lab) in enumerate(zip(x, y, strict=True)):
        d = root / f"class_{lab}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}.png")
    return root
