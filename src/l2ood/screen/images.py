"""Finding image files robustly: every bad path becomes an error record, never a crash.

Supported: PNG, JPEG, BMP, TIFF, WebP and GIF files (the first frame or page of multi-frame ones) and l2ood
npz packs. Folders are walked recursively (symbolic links followed, loops detected). Decoding is
:func:`l2ood.data.preprocess.decode_image` — the same decoder the training data go through — with its limits:
``max_pixels`` and the decode budget (images whose structure implies excessive decoding work, or whose
decoding runs past ``DEFAULT_MAX_DECODE_S`` seconds, raise :class:`DecodeBudgetError`; ``screen`` records the
reason and goes on with the other files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..data.preprocess import (
    DEFAULT_MAX_DECODE_S,
    DEFAULT_MAX_PIXELS,
    DecodeBudgetError,
    ImageReadError,
    decode_image,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
NPZ_SUFFIX = ".npz"
__all__ = ["DEFAULT_MAX_DECODE_S", "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "NPZ_SUFFIX", "DecodeBudgetError",
           "ImageReadError", "Source", "decode_image", "discover"]

@dataclass
class Source:
    """One thing to screen: an image file, an npz pack, or a path that failed before decoding."""

    path: str
    kind: str  # "image" | "npz" | "error"
    error: str | None = None


def discover(paths: list[str | Path]) -> Iterator[Source]:
    """Expand files and folders (recursive) into :class:`Source` items, in a stable order."""
    for p in map(str, paths):
        if not os.path.lexists(p):
            yield Source(p, "error", "no such file or directory")
        elif os.path.islink(p) and not os.path.exists(p):
            yield Source(p, "error", "broken symbolic link")
        elif os.path.isdir(p):
            yield from _walk(p)
        else:
            yield _classify(p, explicit=True)


def _classify(p: str, explicit: bool) -> Source:
    suffix = Path(p).suffix.lower()
    if suffix == NPZ_SUFFIX:
        return Source(p, "npz")
    if suffix in IMAGE_SUFFIXES:
        return Source(p, "image")
    if explicit:  # a file named on the command line: try to decode whatever it is
        return Source(p, "image")
    return Source(p, "skip")


def _walk(root: str) -> Iterator[Source]:
    seen: set[tuple[int, int]] = set()

    def visit(d: str) -> Iterator[Source]:
        try:
            st = os.stat(d)
        except OSError as e:
            yield Source(d, "error", f"cannot open folder: {e.strerror or e}")
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:
            yield Source(d, "error", "directory loop (a symbolic link points back to a parent folder)")
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            yield Source(d, "error", f"cannot list folder: {e.strerror or e}")
            return
        for entry in entries:
            full = os.path.join(d, entry.name)
            if entry.is_symlink() and not os.path.exists(full):
                if Path(entry.name).suffix.lower() in (*IMAGE_SUFFIXES, NPZ_SUFFIX):
                    yield Source(full, "error", "broken symbolic link")
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(full)
            else:
                src = _classify(full, explicit=False)
                if src.kind != "skip":
                    yield src

    yield from visit(root)
