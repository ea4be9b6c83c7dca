"""What l2ood keeps in its cache folder (``$L2OOD_CACHE``, else the OS cache folder for ``l2ood``), and its limits.

Layout::

    CACHE/decoded/     image folders/lists decoded to uint8 arrays (npz), one file per folder x size x mode
    CACHE/extracted/   archives unpacked (Textures, Places365, ...)
    CACHE/logs/        tracebacks of internal errors (exit status 3)
    CACHE/<name>/      checksummed downloads, one folder per data set

The decoded-image cache is the one that grows with use (one file per folder and input size). It is capped at
``$L2OOD_DECODED_CACHE_GB`` GiB (default 20; ``0`` turns the cache off): after each write the least recently used
files (by modification time, refreshed on every cache hit) are deleted until the total fits. ``l2ood cache info``
shows the sizes, ``l2ood cache clear`` deletes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .lookup import cache_dir

CAP_ENV = "L2OOD_DECODED_CACHE_GB"
DEFAULT_CAP_GB = 20.0
GIB = 1 << 30
KINDS = ("decoded", "extracted", "logs", "downloads")
_SPECIAL = {"decoded", "extracted", "logs"}


def decoded_dir() -> Path:
    """Where decoded image folders are cached."""
    return cache_dir() / "decoded"


def decoded_cap_bytes() -> int:
    """The decoded-image cache's size cap in bytes (``$L2OOD_DECODED_CACHE_GB``, default 20 GiB; 0 = no cache)."""
    raw = os.environ.get(CAP_ENV, "").strip()
    if not raw:
        return int(DEFAULT_CAP_GB * GIB)
    try:
        gb = float(raw)
    except ValueError:
        raise ConfigError(f"{CAP_ENV} must be a number of GiB (0 = no decoded-image cache), got {raw!r}") from None
    if gb < 0:
        raise ConfigError(f"{CAP_ENV} must be >= 0, got {raw!r}")
    return int(gb * GIB)


def touch(path: Path) -> None:
    """Mark a cache file as just used (its mtime orders the eviction)."""
    try:
        os.utime(path)
    except OSError:
        pass


def enforce_cap(folder: Path, cap: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used ``*.npz`` files of ``folder`` until their total is at most ``cap`` bytes;
    ``keep`` (the file just written) goes last. Returns the deleted files."""
    files = []
    for p in folder.glob("*.npz"):
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((p == keep, st.st_mtime, p, st.st_size))
    total = sum(f[3] for f in files)
    deleted = []
    for _, _, p, size in sorted(files, key=lambda f: (f[0], f[1])):
        if total <= cap:
            break
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        deleted.append(p)
    return deleted


@dataclass(frozen=True)
class Entry:
    """One part of the cache: its kind, folder, file count and bytes."""

    kind: str
    path: Path
    files: int
    bytes: int


def _size(path: Path) -> tuple[int, int]:
    if path.is_file():
        return 1, path.stat().st_size
    n = b = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                b += os.lstat(os.path.join(dirpath, name)).st_size
                n += 1
            except OSError:
                continue
    return n, b


def entries(root: Path | None = None) -> list[Entry]:
    """Every top-level part of the cache folder with its size, decoded/extracted/logs first, then downloads."""
    root = root or cache_dir()
    if not root.is_dir():
        return []
    out = []
    for kind in ("decoded", "extracted", "logs"):
        p = root / kind
        if p.exists():
            out.append(Entry(kind, p, *_size(p)))
    for p in sorted(root.iterdir()):
        if p.name not in _SPECIAL:
            out.append(Entry("downloads", p, *_size(p)))
    return out


def clear(kinds: list[str], root: Path | None = None) -> list[Entry]:
    """Delete the parts of the cache of the given kinds (``decoded``, ``extracted``, ``logs``, ``downloads``);
    returns what was deleted."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"unknown cache part(s) {', '.join(bad)}: choose from {', '.join(KINDS)} or all")
    gone = []
    for e in entries(root):
        if e.kind in kinds:
            if e.path.is_dir() and not e.path.is_symlink():
                shutil.rmtree(e.path)
            else:
                e.path.unlink()
            gone.append(e)
    return gone
