"""The one preprocessing path from an image file or array to the model's input.

Training data, evaluation data and screened files all pass through these functions, so the same
image reaches the model as the same tensor whichever way it came in (no train/serve skew):

1. **Decode** (:func:`decode_image`): Pillow, every mode brought to 8-bit gray ``(H, W)`` or RGB
   ``(H, W, 3)``: 16/32-bit integer images scaled to 8 bits, float images clipped, palette images and
   images with alpha composited on white, CMYK/YCbCr/LAB/HSV converted to RGB. Images above
   ``max_pixels`` are refused before their pixels are decoded (decompression-bomb guard).
2. **Convert** (:func:`l2ood.data.transforms.convert_format`): channels (RGB→gray by ITU-R BT.601
   luma, gray→RGB by repetition) and size, by antialiased bilinear interpolation in torch, either
   stretching the whole image to the target size (``fit="resize"``) or resizing the shorter side and
   cropping the centre (``fit="crop"``, torchvision ``Resize(s)`` + ``CenterCrop(s)``). The result is
   uint8 ``(N, C, H, W)``.
3. **Normalize**: inside the model (its ``input_mean``/``input_std`` buffers), after
   :meth:`l2ood.runtime.Runtime.batch` turned uint8 into float on the [0, 1] scale.

A run records its :class:`Preprocessing` (see :mod:`l2ood.record`).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import DataError
from .transforms import FITS, convert_format

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
DECODER = "pillow-8bit"
RESIZE = "bilinear-antialias"


class ImageReadError(DataError):
    """A file that cannot be decoded; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model input: decoder, channels, size, fit and resize method."""

    channels: int
    size: tuple[int, int]
    fit: str = "resize"
    decode: str = DECODER
    resize: str = RESIZE

    def __call__(self, images: Tensor | np.ndarray | str | Path | bytes,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
        """:func:`to_model_input` with this preprocessing."""
        return to_model_input(images, self.channels, self.size, self.fit, max_pixels)


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


def _open_fd(path: str | Path) -> int:
    """Open for reading without blocking on FIFOs (a pipe among the inputs must not hang the reader)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))


def read_file_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises :class:`ImageReadError`."""
    try:
        fd = _open_fd(path)
    except PermissionError:
        raise ImageReadError("permission denied") from None
    except IsADirectoryError:
        raise ImageReadError("is a folder, not a file") from None
    except OSError as e:
        raise ImageReadError(f"cannot read file: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError("is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError("not a regular file (device, pipe or socket); only regular files are read")
        if st.st_size > max_bytes:
            raise ImageReadError(f"file too large: {st.st_size} bytes > limit {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except ImageReadError:
        raise
    except OSError as e:
        raise ImageReadError(f"cannot read file: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageReadError(f"file too large: more than {max_bytes} bytes")
    return data


def decode_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file (path or bytes) to uint8 ``(H, W)`` or ``(H, W, 3)``; raises
    :class:`ImageReadError` with the reason."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    data = bytes(source) if isinstance(source, bytes | bytearray) else read_file_bytes(source)
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
        what = "data" if name == "<bytes>" else f"{Path(name).suffix or 'no extension'} file"
        raise ImageReadError(f"not a recognized image format ({what} whose content is not "
                             "PNG/JPEG/BMP/TIFF/WebP/GIF)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error) as e:
        raise ImageReadError(f"corrupt or truncated image: {e}") from None
    except MemoryError:
        raise ImageReadError("not enough memory to decode this image") from None


def array_to_tensor(a: np.ndarray) -> Tensor:
    """uint8 ``(H, W)``, ``(H, W, C)`` or ``(N, H, W[, C])`` array → uint8 tensor ``(N, C, H, W)``."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {a.dtype}")
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # Pillow's arrays are read-only views
        a = a.copy()
    t = torch.from_numpy(a)
    if t.ndim == 2:
        return t[None, None]
    if t.ndim == 3:
        if t.shape[-1] in (1, 3, 4):
            return t.permute(2, 0, 1)[None].contiguous()
        return t[:, None]  # (N, H, W) gray
    if t.ndim == 4 and t.shape[-1] in (1, 3, 4):
        return t.permute(0, 3, 1, 2).contiguous()
    raise DataError(f"cannot read an image array of shape {tuple(a.shape)}; use (H, W), (H, W, C) or (N, H, W, C)")


def to_model_input(images: Tensor | np.ndarray | str | Path | bytes, channels: int, size: tuple[int, int],
                   fit: str = "resize", max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Image file (path or bytes), uint8 array (channels last) or uint8 tensor ``(N, C, H, W)`` →
    uint8 tensor ``(N, channels, *size)``: the model's input before the [0, 1] scaling.

    >>> gray = np.full((10, 20), 200, np.uint8)          # one 10×20 gray image
    >>> x = to_model_input(gray, 3, (8, 8))              # → RGB 8×8, as the model expects
    >>> tuple(x.shape), int(x.min()), int(x.max())
    ((1, 3, 8, 8), 200, 200)
    """
    if fit not in FITS:
        raise DataError(f"fit must be one of {FITS}, got {fit!r}")
    if isinstance(images, str | Path | bytes | bytearray):
        t = array_to_tensor(decode_image(images, max_pixels))
    elif isinstance(images, np.ndarray):
        t = array_to_tensor(images)
    else:
        t = images if images.ndim == 4 else images[None]
    return convert_format(t, channels, size, fit=fit)


def load_image(path: str | Path, channels: int, size: tuple[int, int], fit: str = "resize",
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """One image file → uint8 ``(channels, *size)`` (:func:`to_model_input` of a single file)."""
    return to_model_input(path, channels, size, fit, max_pixels)[0]
