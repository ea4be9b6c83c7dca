"""The l2ood npz pack: a documented, pickle-free way to bring any image data.

Format (``numpy.savez`` / ``savez_compressed``):

* ``images``: uint8, ``(N, H, W, C)`` with C in {1, 3} (or ``(N, H, W)`` for grayscale);
* ``labels`` (optional): integer ``(N,)``;
* ``class_names`` (optional): a string array ``(K,)``.

Files are opened with ``allow_pickle=False``; an object array is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError, DataNotFoundError
from .imageset import ImageSet


def load_npz(path: str | Path, name: str | None = None) -> ImageSet:
    """Load an npz pack as an :class:`ImageSet` (channels-first uint8)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"npz pack not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataFormatError(f"{path}: npz pack has no 'images' array (keys: {z.files})")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
            names = z["class_names"] if "class_names" in z.files else None
    except DataFormatError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataFormatError(f"{path}: not a readable npz pack ({e})") from e
    if images.dtype != np.uint8:
        raise DataFormatError(f"{path}: 'images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataFormatError(f"{path}: 'images' must be (N, H, W, C) with C in {{1, 3}}, got {images.shape}")
    t_labels = None
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
            raise DataFormatError(f"{path}: 'labels' must be integer (N,), got {labels.dtype} {labels.shape}")
        t_labels = torch.from_numpy(labels.astype(np.int64))
    class_names = [str(s) for s in names.tolist()] if names is not None else None
    return ImageSet(
        name=name or path.stem,
        images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        labels=t_labels,
        class_names=class_names,
        meta={"source": str(path)},
    )


def save_npz(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None,
             class_names: list[str] | None = None) -> None:
    """Write an npz pack (``images`` N×H×W×C uint8) — the inverse of :func:`load_npz`."""
    arrays: dict[str, np.ndarray] = {"images": np.asarray(images, dtype=np.uint8)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if class_names is not None:
        arrays["class_names"] = np.asarray(class_names, dtype=str)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
