"""The one preprocessing path from an image file or array to the model's input.

Training data, evaluation data and screened files all pass through these functions, so the same
image reaches the model as the same tensor whichever way it came in (no train/serve skew):

1. **Decode** (:func:`decode_image`): Pillow, every mode brought to 8-bit gray ``(H, W)`` or RGB
   ``(H, W, 3)``: 16/32-bit integer images scaled to 8 bits, float images clipped, palette images and
   images with alpha composited on white, CMYK/YCbCr/LAB/HSV converted to RGB. Only PNG (first frame
   of an APNG), JPEG, BMP, TIFF (first page), WebP (first frame) and GIF (first frame) are opened.
   Images above ``max_pixels`` are refused before their pixels are decoded (decompression-bomb guard),
   and so are images whose decoding would cost far more than their pixel count suggests (the decode
   budget, :func:`check_decode_work`): progressive JPEGs with many scans, JPEGs with many markers, PNGs
   with many chunks, GIFs with many blocks before the first frame, TIFFs with many strips or tiles,
   large RLE-compressed BMPs. Whatever the format, decoding stops with an error once it has run longer
   than ``max_decode_s`` seconds (checked each time the decoder reads input).
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
import re
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error
from typing import Any

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

#: The formats :func:`decode_image` opens (Pillow format ids; "JPEG" includes MPO, whose first image is read).
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
#: Wall-clock seconds one image may take to decode (checked whenever the decoder reads input).
DEFAULT_MAX_DECODE_S = 10.0
#: Decode budget: each of these structures makes Pillow do work per element, whatever the pixel count, so
#: a small file within the pixel limit could keep a decoder busy for minutes; more than this is refused.
MAX_JPEG_SCANS = 100  # each scan of a progressive JPEG walks every 8×8 block of the image again
MAX_JPEG_MARKERS = 4096  # markers (segments) of the first image; Pillow parses each in Python
MAX_PNG_CHUNKS = 4096  # chunks of a PNG, plus one per KiB of file; Pillow reads each in Python
MAX_GIF_BLOCKS = 65536  # extension blocks, sub-blocks and stray bytes before a GIF's first frame
MAX_TIFF_STRIPS = 65536  # strips or tiles of a TIFF's first page
MAX_TIFF_TAG_VALUES = 1 << 20  # numeric values in the tags of a TIFF's first page
MAX_BMP_RLE_BYTES = 8 * 1024 * 1024  # run-length data of an RLE BMP; Pillow decodes RLE in Python


class ImageReadError(DataError):
    """A file that cannot be decoded; the message is the reason shown to the user."""


class DecodeBudgetError(ImageReadError):
    """An image refused because decoding it would take too much work (its structure, or the time limit)."""


_clock = time.monotonic  # the decode deadline's clock (tests replace it)
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")  # libjpeg's next_marker: fill bytes swallowed, FF00 is data
_JPEG_SCAN_END = re.compile(rb"\xff+([^\x00\xff\xd0-\xd7])")  # the marker that ends entropy-coded data
_GIF_BLOCK = re.compile(rb"[!,;]")  # what Pillow looks for between a GIF's blocks (other bytes: one read each)
_TIFF_NUMERIC = {3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18}


def _too_much(what: str) -> DecodeBudgetError:
    return DecodeBudgetError(f"{what}: decoding it would take far more work than its pixel count suggests "
                             "(decode budget; refused before decoding)")


def _check_jpeg(d: bytes) -> None:
    """Count the markers and scans libjpeg would read in the first image (it resynchronizes the same way)."""
    pos = markers = scans = 0
    while True:
        m = _JPEG_MARKER.search(d, pos)
        if m is None:
            return
        code, pos = m.group(1)[0], m.end()
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise _too_much(f"JPEG with more than {MAX_JPEG_MARKERS} markers")
        if code == 0xD9:  # EOI: libjpeg stops here (later images of an MPO are never decoded)
            return
        if code in (0x01, 0xD8) or 0xD0 <= code <= 0xD7:  # no length field
            continue
        length = int.from_bytes(d[pos : pos + 2], "big")
        if length < 2:
            return  # libjpeg refuses this; so will Pillow
        pos += length
        if code == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise _too_much(f"progressive JPEG with more than {MAX_JPEG_SCANS} scans")
            end = _JPEG_SCAN_END.search(d, pos)
            if end is None:
                return
            pos = end.start()


def _check_png(d: bytes) -> None:
    """Count the chunks Pillow reads: all of them up to IEND, or of an APNG up to the second frame."""
    limit = MAX_PNG_CHUNKS + len(d) // 1024
    pos, n, animated, seen_idat = 8, 0, False, False
    while pos + 8 <= len(d):
        kind = d[pos + 4 : pos + 8]
        if kind == b"IEND" or (kind == b"fcTL" and animated and seen_idat):
            return
        n += 1
        if n > limit:
            raise _too_much(f"PNG with more than {limit} chunks")
        length = int.from_bytes(d[pos : pos + 4], "big")
        if kind == b"acTL":
            animated = int.from_bytes(d[pos + 8 : pos + 12], "big") > 1
        seen_idat = seen_idat or kind == b"IDAT"
        pos += 12 + length


def _check_gif(d: bytes) -> None:
    pos = 13 + (3 << ((d[10] & 7) + 1) if d[10] & 0x80 else 0)
    blocks = 0
    while pos < len(d):
        m = _GIF_BLOCK.search(d, pos)
        if m is None:
            return
        blocks += m.start() - pos  # stray bytes: Pillow reads them one by one
        if blocks > MAX_GIF_BLOCKS or d[m.start()] != 0x21:  # "," is the first frame, ";" the end
            break
        pos = m.start() + 2
        while pos < len(d):  # the extension's sub-blocks, up to the empty one
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                break
            size = d[pos]
            pos += 1 + size
            if size == 0:
                break
    if blocks > MAX_GIF_BLOCKS:
        raise _too_much(f"GIF with more than {MAX_GIF_BLOCKS} blocks before its first frame")


def _check_tiff(d: bytes) -> None:
    order: str = "little" if d[:2] == b"II" else "big"

    def uint(at: int, size: int) -> int:
        if at + size > len(d):
            raise IndexError(at)
        return int.from_bytes(d[at : at + size], order)  # type: ignore[arg-type]

    big = uint(2, 2) == 43
    csize, esize, vsize = (8, 20, 8) if big else (2, 12, 4)
    ifd = uint(8, 8) if big else uint(4, 4)
    n = uint(ifd, csize)
    if n > 65535:
        raise _too_much(f"TIFF with {n} tags on its first page")
    strips = values = compression = 0
    for i in range(n):
        at = ifd + csize + i * esize
        tag, typ, count = uint(at, 2), uint(at + 2, 2), uint(at + 4, vsize)
        if tag in (273, 279, 324, 325):  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts
            strips = max(strips, count)
        if tag == 259:
            compression = uint(at + 4 + vsize, 2)
        if typ in _TIFF_NUMERIC:
            values += count
    if strips > MAX_TIFF_STRIPS:
        raise _too_much(f"TIFF with {strips} strips or tiles (limit {MAX_TIFF_STRIPS})")
    if values > MAX_TIFF_TAG_VALUES:  # Pillow unpacks each into a Python tuple when it opens the file
        raise _too_much(f"TIFF whose first page has tags holding {values} numbers (limit {MAX_TIFF_TAG_VALUES})")
    if compression in (6, 7) and d.count(b"\xff\xda") > MAX_JPEG_SCANS + 4 * max(strips, 1):
        raise _too_much(f"JPEG-compressed TIFF with more than {MAX_JPEG_SCANS} progressive scans")


def _check_bmp(d: bytes) -> None:
    offset = int.from_bytes(d[10:14], "little")
    if int.from_bytes(d[14:18], "little") >= 40 and int.from_bytes(d[30:34], "little") in (1, 2):
        n = len(d) - offset
        if n > MAX_BMP_RLE_BYTES:
            raise _too_much(f"RLE-compressed BMP with {n} bytes of run data (limit {MAX_BMP_RLE_BYTES})")


def check_decode_work(data: bytes) -> None:
    """Refuse (:class:`DecodeBudgetError`) an encoded image whose structure implies excessive decoding work:
    more than :data:`MAX_JPEG_SCANS` scans or :data:`MAX_JPEG_MARKERS` markers in a JPEG, more than
    :data:`MAX_PNG_CHUNKS` chunks plus one per KiB in a PNG (up to the second frame of an APNG), more than
    :data:`MAX_GIF_BLOCKS` blocks before a GIF's first frame, more than :data:`MAX_TIFF_STRIPS` strips or tiles or
    :data:`MAX_TIFF_TAG_VALUES` numbers in the tags of a TIFF's first page, more than :data:`MAX_BMP_RLE_BYTES`
    of RLE data in a BMP. Reads only the container structure, stops at the limit (milliseconds), and leaves
    anything malformed for the decoder to report."""
    checks = ((b"\xff\xd8", _check_jpeg), (b"\x89PNG\r\n\x1a\n", _check_png), (b"GIF8", _check_gif),
              (b"II*\x00", _check_tiff), (b"MM\x00*", _check_tiff), (b"II+\x00", _check_tiff),
              (b"MM\x00+", _check_tiff), (b"BM", _check_bmp))
    for magic, check in checks:
        if data.startswith(magic):
            try:
                check(data)
            except (IndexError, ValueError, struct_error):
                pass  # malformed structure: the decoder gives the reason
            return


def _timed_out(seconds: float | None) -> DecodeBudgetError:
    return DecodeBudgetError(f"decoding took longer than {seconds:g} s (decode budget: the image is refused, "
                             "not judged)")


class _DecodeTimeout(Exception):
    """Raised inside Pillow's reads once the deadline has passed (not an exception Pillow handles)."""


class _DeadlineReader(io.BytesIO):
    """The encoded bytes, read by Pillow through this object: every read checks the decode deadline, so no
    decoder loop (the per-chunk, per-block and per-byte ones in Pillow's Python code included) outruns it."""

    def __init__(self, data: bytes, seconds: float | None) -> None:
        super().__init__(data)
        self.seconds = seconds
        self.deadline = None if seconds is None else _clock() + seconds
        self.expired = False

    def check(self) -> None:
        """Raise :class:`_DecodeTimeout` once the deadline has passed (and on every call after)."""
        if self.expired or (self.deadline is not None and _clock() > self.deadline):
            self.expired = True
            raise _DecodeTimeout

    def read(self, size: int | None = -1) -> bytes:
        self.check()
        return super().read(size)

    def read1(self, size: int | None = -1) -> bytes:
        self.check()
        return super().read1(size)

    def readinto(self, buffer: Any) -> int:
        self.check()
        return super().readinto(buffer)

    def readline(self, size: int | None = -1) -> bytes:
        self.check()
        return super().readline(size)


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


def decode_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_decode_s: float | None = DEFAULT_MAX_DECODE_S) -> np.ndarray:
    """Decode an image file (path or bytes) to uint8 ``(H, W)`` or ``(H, W, 3)``; raises
    :class:`ImageReadError` with the reason.

    Refused: formats other than :data:`FORMATS`, more than ``max_pixels`` pixels (before decoding), a
    structure that implies excessive decoding work (:func:`check_decode_work`, before decoding), and decoding
    that runs longer than ``max_decode_s`` seconds (``None``: no time limit; checked on every read of the
    decoder, which stops it there, and once more when it is done); the last two raise
    :class:`DecodeBudgetError`. Only the first frame of a multi-frame file is decoded."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    data = bytes(source) if isinstance(source, bytes | bytearray) else read_file_bytes(source)
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    if max_decode_s is not None and not max_decode_s > 0:
        raise ImageReadError(f"max_decode_s must be > 0, got {max_decode_s}")
    fp = _DeadlineReader(data, max_decode_s)
    try:
        check_decode_work(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=FORMATS)
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(f"image too large: {w}×{h} = {w * h} pixels > limit {max_pixels} "
                                     "(decompression-bomb guard; raise --max-pixels to allow)")
            if w < 1 or h < 1:
                raise ImageReadError(f"image has no pixels ({w}×{h})")
            im.load()
            fp.check()  # decoders that read everything at once (libtiff, WebP) are timed here, after the fact
            return _to_8bit(im)
    except ImageReadError:
        raise
    except _DecodeTimeout:
        raise _timed_out(max_decode_s) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"image too large (decompression-bomb guard): {e}") from None
    except UnidentifiedImageError:
        if fp.expired:
            raise _timed_out(max_decode_s) from None
        what = "data" if name == "<bytes>" else f"{Path(name).suffix or 'no extension'} file"
        raise ImageReadError(f"not a recognized image format ({what} whose content is not "
                             "PNG/JPEG/BMP/TIFF/WebP/GIF)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error) as e:
        if fp.expired:
            raise _timed_out(max_decode_s) from None
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
