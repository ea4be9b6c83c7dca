"""Finding and decoding image files robustly: every bad file becomes an error record, never a crash.

Supported: PNG, JPEG, BMP, TIFF, WebP files (and GIF's first frame) and l2ood npz packs. Folders are
walked recursively (symbolic links followed, loops detected). Decoding converts every Pillow mode to
8-bit gray or RGB: 16-bit and 32-bit integer images are scaled to 8 bits (÷257), palette and images
with alpha are composited on white, CMYK/YCbCr/LAB/HSV are converted to RGB. Images above
``max_pixels`` are refused before their pixels are decoded (decompression-bomb guard).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
NPZ_SUFFIX = ".npz"
DEFAULT_MAX_PIXELS = 40_000_000


class ImageReadError(Exception):
    """A file that cannot be screened; the message is the reason shown to the user."""


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
        for e in entries:
            full = os.path.join(d, e.name)
            if e.is_symlink() and not os.path.exists(full):
                if Path(e.name).suffix.lower() in (*IMAGE_SUFFIXES, NPZ_SUFFIX):
                    yield Source(full, "error", "broken symbolic link")
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(full)
            else:
                src = _classify(full, explicit=False)
                if src.kind != "skip":
                    yield src

    yield from visit(root)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _to_8bit(im: Image.Image) -> np.ndarray:
    """Any Pillow image → uint8 array (H, W) for gray or (H, W, 3) for colour."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        return np.clip(np.round(a * 255.0 / hi), 0, 255).astype(np.uint8)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
        return np.asarray(out.convert("L") if mode in ("LA", "La") else out)
    if mode == "L":
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def decode_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 ``(H, W)`` or ``(H, W, 3)``; raises :class:`ImageReadError`."""
    try:
        data = _read_bytes(path)
    except PermissionError:
        raise ImageReadError("permission denied") from None
    except IsADirectoryError:
        raise ImageReadError("is a folder, not a file") from None
    except OSError as e:
        raise ImageReadError(f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(f"image too large: {w}×{h} = {w * h} pixels > limit {max_pixels} "
                                     "(decompression-bomb guard; raise --max-pixels to allow)")
            if w < 1 or h < 1:
                raise ImageReadError(f"image has no pixels ({w}×{h})")
            im.load()
            return _to_8bit(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"image too large (decompression-bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"not a recognized image format ({Path(path).suffix or 'no extension'} "
                             "file whose content is not PNG/JPEG/BMP/TIFF/WebP/GIF)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error) as e:
        raise ImageReadError(f"corrupt or truncated image: {e}") from None
    except MemoryError:
        raise ImageReadError("not enough memory to decode this image") from None


try:  # struct.error is raised by some Pillow plugins on malformed headers
    from struct import error as struct_error
except ImportError:  # pragma: no cover
    struct_error = ValueError  # type: ignore[misc,assignment]
