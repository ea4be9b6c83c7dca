"""The l2ood npz pack: a documented, pickle-free way to bring any image data.

Format (``numpy.savez`` / ``savez_compressed``):

* ``images``: uint8, ``(N, H, W, C)`` with C in {1, 3} (or ``(N, H, W)`` for grayscale);
* ``labels`` (optional): integer ``(N,)``;
* ``class_names`` (optional): a string array ``(K,)``.

Files are opened with ``allow_pickle=False``; object arrays are refused. Sizes are checked from the
``.npy`` headers before anything is allocated (see :func:`load_npz`).
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError, DataNotFoundError
from .imageset import ImageSet

MAX_NPZ_BYTES = 16 * 1024**3  # 16 GiB of decoded arrays; $L2OOD_MAX_NPZ_BYTES overrides
MAX_IMAGE_PIXELS = 40_000_000  # per image, like the screen's decompression-bomb guard
MAX_CLASSES = 1_000_000


def _max_bytes() -> int:
    try:
        return int(os.environ.get("L2OOD_MAX_NPZ_BYTES", MAX_NPZ_BYTES))
    except ValueError:
        return MAX_NPZ_BYTES


def inspect_npz(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an npz file, read from the ``.npy`` headers only (no data).

    Raises :class:`DataFormatError` for anything that is not a zip of ``.npy`` members."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise DataFormatError(f"{path}: not an npz pack (not a zip archive)")
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > 64:
                raise DataFormatError(f"{path}: {len(infos)} members; an npz pack holds at most 3 arrays")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(f)
                out[info.filename[:-4]] = (tuple(int(d) for d in shape), np.dtype(dtype))
    except DataFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError, TypeError,
            NotImplementedError, RuntimeError) as e:
        raise DataFormatError(f"{path}: not a readable npz pack ({type(e).__name__}: {e})") from None
    return out


def _check_headers(path: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype]], max_pixels: int) -> None:
    if "images" not in arrays:
        raise DataFormatError(f"{path}: npz pack has no 'images' array (arrays: {', '.join(arrays) or 'none'})")
    for key, (_shape, dtype) in arrays.items():
        if dtype.hasobject:
            raise DataFormatError(f"{path}: '{key}' is an object array (pickled Python objects); refused")
    shape, dtype = arrays["images"]
    if dtype != np.uint8:
        raise DataFormatError(f"{path}: 'images' must be uint8, got {dtype}")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        raise DataFormatError(f"{path}: 'images' must be (N, H, W, C) with C in {{1, 3}} or (N, H, W), got {shape}")
    if shape[1] * shape[2] > max_pixels:
        raise DataFormatError(f"{path}: images of {shape[1]}×{shape[2]} = {shape[1] * shape[2]} pixels exceed the "
                              f"limit of {max_pixels} per image")
    total = sum(math.prod(s) * d.itemsize for s, d in arrays.values())
    if total > _max_bytes():
        raise DataFormatError(f"{path}: the arrays would take {total / 2**30:.1f} GiB in memory (limit "
                              f"{_max_bytes() / 2**30:.1f} GiB; set L2OOD_MAX_NPZ_BYTES to raise it)")
    n = shape[0]
    if "labels" in arrays:
        ls, ld = arrays["labels"]
        if ls != (n,) or ld.kind not in "iu":
            raise DataFormatError(f"{path}: 'labels' must be integer (N,) with N = {n}, got {ld} {ls}")
    if "class_names" in arrays:
        cs, cd = arrays["class_names"]
        if len(cs) != 1 or cd.kind not in "US" or cs[0] > MAX_CLASSES:
            raise DataFormatError(f"{path}: 'class_names' must be a string array (K,), got {cd} {cs}")


def load_npz(path: str | Path, name: str | None = None, *, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageSet:
    """Load an npz pack as an :class:`ImageSet` (channels-first uint8).

    Bounded: the ``.npy`` headers are read first and the pack is refused — before any array is
    allocated — when it is not a regular file or not a zip, holds object arrays, has images above
    ``max_pixels`` each, or would need more than ``$L2OOD_MAX_NPZ_BYTES`` (16 GiB) of memory. Labels
    must lie in ``[0, K)`` (``K`` = number of class names when given)."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataNotFoundError(f"npz pack not found: {path}") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataFormatError(f"{path}: not a regular file")
    _check_headers(path, inspect_npz(path), max_pixels)
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
            names = z["class_names"] if "class_names" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise DataFormatError(f"{path}: not a readable npz pack ({type(e).__name__}: {e})") from None
    if images.ndim == 3:
        images = images[..., None]
    class_names = [str(s) for s in names.tolist()] if names is not None else None
    t_labels = None
    if labels is not None:
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= (len(class_names) if class_names
                                                                             else MAX_CLASSES)):
            bound = f"[0, {len(class_names)}) (one per class name)" if class_names else f"[0, {MAX_CLASSES})"
            raise DataFormatError(f"{path}: labels must lie in {bound}; found {int(labels.min())}..{int(labels.max())}")
        t_labels = torch.from_numpy(labels.astype(np.int64))
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
