"""SVHN, cropped digits (Netzer et al., 2011), from the official ``*_32x32.mat`` files.

Source: http://ufldl.stanford.edu/housenumbers/

Format: MATLAB v5 files read with :func:`scipy.io.loadmat` (a data reader; nothing is executed).
``X`` is uint8 ``(32, 32, 3, N)`` (height, width, channel, image) and ``y`` is ``(N, 1)`` with the
digits 1–9 as 1–9 and the digit 0 as 10; l2ood maps 10 → 0 so that label ``k`` is digit ``k``.

Look-up (see :mod:`l2ood.data.lookup`): ``ROOT/svhn/``, ``ROOT/SVHN/``, ``ROOT/``, the download
cache; then a checksummed download (MD5) of the split's file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataError, DataFormatError, DataNotFoundError
from .imageset import ImageSet
from .lookup import download, missing_message, search_dirs

URL_BASE = "http://ufldl.stanford.edu/housenumbers/"

FILES: dict[str, tuple[str, str]] = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}


MAX_MAT_BYTES = 2 << 30  # the official extra_32x32.mat is 1.3 GB


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 (digit 0 → 0) from an SVHN ``.mat``."""
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError as e:  # pragma: no cover - scipy comes with scikit-image
        raise DataError("reading SVHN needs scipy (pip install scipy)") from e
    size = Path(path).stat().st_size
    if size > MAX_MAT_BYTES:
        raise DataFormatError(f"{path}: {size} bytes is larger than any SVHN file (limit {MAX_MAT_BYTES})")
    try:
        m = loadmat(str(path), variable_names=["X", "y"])
    except (MatReadError, OSError, ValueError, NotImplementedError, TypeError) as e:
        raise DataFormatError(f"{path}: not a readable MATLAB v5 file ({type(e).__name__}: {e})") from e
    x, y = m.get("X"), m.get("y")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "nothing"
        raise DataFormatError(f"{path}: 'X' must be uint8 (32, 32, 3, N), got {got}")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3] or not np.issubdtype(y.dtype, np.number):
        raise DataFormatError(f"{path}: 'y' must hold {x.shape[3]} labels")
    labels = y.reshape(-1).astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() > 10):
        raise DataFormatError(f"{path}: labels must be in 1..10 (10 = digit 0)")
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def load_svhn(split: str = "test", root: str | Path | None = None, download_ok: bool = True) -> ImageSet:
    """Load an SVHN split as an :class:`ImageSet` ``(N, 3, 32, 32)`` with digit labels 0–9."""
    if split not in FILES:
        raise DataError(f"unknown split '{split}' for svhn; use one of {', '.join(FILES)}")
    fname, md5 = FILES[split]
    searched = search_dirs("svhn", root, ("SVHN",))
    path = next((d / fname for _, d in searched if (d / fname).is_file()), None)
    if path is None:
        why = ""
        if download_ok:
            try:
                path = download("svhn", URL_BASE + fname, md5)
            except DataNotFoundError as e:
                why = str(e)
        if path is None:
            raise DataNotFoundError(missing_message(
                f"Dataset 'svhn' ({split} split)", searched, why, download_ok,
                [f"put {fname} in DIR/svhn/ or DIR/ and pass --data-root DIR or set L2OOD_DATA=DIR;",
                 f"download it from {URL_BASE}{fname} (md5 {md5});",
                 "allow network access so the checksummed download can run."]))
    images, labels = read_svhn_mat(path)
    return ImageSet(
        name="svhn",
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        class_names=[str(i) for i in range(10)],
        hflip=False,
        meta={"source": str(path), "format": "svhn-mat"},
    )
