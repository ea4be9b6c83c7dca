"""Image folders (torchvision ``ImageFolder`` layout) decoded once and cached as npz.

Format: ``ROOT/<class>/**/*.{jpg,jpeg,png,bmp}`` (any case) — class names are the sorted names of the
sub-folders that hold images, label ``k`` is the ``k``-th name; files are taken in sorted order,
recursively (Tiny-ImageNet's ``train/<wnid>/images/`` works; symbolic links are followed, a link loop is a
:class:`DataFormatError` naming the link, a folder reached twice through links is read once). A folder with images
and no class sub-folders is a flat, unlabelled set. If ``ROOT`` only holds split folders (``train``, ``val``,
``test``), the requested split's folder is used (so ``imagefolder:cifar10-jpeg`` serves both splits).

Decoding goes through :mod:`l2ood.data.preprocess` (the path screened files take too): Pillow decode
to 8-bit RGB (alpha composited on white), then either

* ``mode="resize"``: antialiased bilinear resize of the whole image to the target size (default 32×32), or
* ``mode="crop"``: antialiased bilinear resize of the shorter side to the target size, then a centre crop
  (torchvision ``Resize(s)`` + ``CenterCrop(s)``; OpenOOD's processing of Textures/DTD).

Unreadable images are skipped and counted in one warning. The decoded uint8 arrays are cached in
``$L2OOD_CACHE/decoded/`` under a key made of the absolute file paths, their sizes and mtimes, the
labels, the mode and the target size, so loading the same folder again decodes nothing. The cache is capped at
``$L2OOD_DECODED_CACHE_GB`` GiB (default 20, least recently used files go first; :mod:`l2ood.data.cache`).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .cache import decoded_cap_bytes, decoded_dir, enforce_cap, touch
from .errors import DataFormatError, DataNotFoundError
from .imageset import ImageSet
from .preprocess import load_image
from .transforms import FITS

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
MODES = FITS
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
_CACHE_VERSION = "l2ood-decoded-v2"  # v2: decode + resize through data.preprocess


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _dir_key(path: Path | str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of a folder (symlinks followed); ``None`` when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _images_under(folder: Path, outer: dict[tuple[int, int], Path] | None = None) -> list[Path]:
    """All image files below ``folder`` (symlinks followed), sorted by relative path.

    Every folder is identified by ``(st_dev, st_ino)``, so the walk always ends: a symbolic link that leads back
    to a folder on its own path (or to one of ``outer``, e.g. the data root) is a loop, refused with
    :class:`DataFormatError` naming the link; a folder reached a second time through another link is walked
    once (one warning). Unreadable sub-folders are left out, as before."""
    start = _dir_key(folder)
    if start is None:
        return []
    outer = dict(outer or {})
    if start in outer:
        raise DataFormatError(f"symbolic link loop: {folder} leads back to {outer[start]} (a folder it is inside); "
                              "remove the link or point it outside the data folder")
    visited = {start}
    duplicates: list[Path] = []
    out: list[Path] = []
    stack: list[tuple[Path, dict[tuple[int, int], Path]]] = [(folder, {**outer, start: folder})]
    while stack:
        d, ancestors = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                if _is_image(e.name):
                    out.append(d / e.name)
                continue
            key = _dir_key(d / e.name)
            if key is None:
                continue
            if key in ancestors:
                raise DataFormatError(f"symbolic link loop: {d / e.name} leads back to {ancestors[key]} (a folder "
                                      "it is inside); remove the link or point it outside the data folder")
            if key in visited:
                duplicates.append(d / e.name)
                continue
            visited.add(key)
            stack.append((d / e.name, {**ancestors, key: d / e.name}))
    if duplicates:
        warnings.warn(f"{folder}: {len(duplicates)} folder(s) reached a second time through a symbolic link were "
                      f"read once (first: {duplicates[0]})", stacklevel=3)
    return sorted(out, key=lambda p: p.relative_to(folder).parts)


def scan_image_folder(root: str | Path, per_class_limit: int | None = None
                      ) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """``(files, labels, class_names)`` of an image folder (labels/names None for a flat folder).

    ``per_class_limit`` keeps the first ``k`` files (sorted) of each class, or of a flat folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder not found: {root}")
    subdirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: d.name)
    root_key = _dir_key(root)
    outer = {root_key: root} if root_key is not None else {}
    per_class = [(d.name, _images_under(d, outer)) for d in subdirs]
    per_class = [(c, fs[:per_class_limit] if per_class_limit else fs) for c, fs in per_class if fs]
    if per_class:
        files = [f for _, fs in per_class for f in fs]
        labels = [k for k, (_, fs) in enumerate(per_class) for _ in fs]
        return files, labels, [c for c, _ in per_class]
    flat = sorted(root / f.name for f in root.iterdir() if f.is_file() and _is_image(f.name))
    if per_class_limit:
        flat = flat[:per_class_limit]
    if not flat:
        raise DataNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}: expected ROOT/<class>/*.jpg "
            "or a flat folder of images")
    return flat, None, None


def _decode_image(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """One image as uint8 ``(3, H, W)`` at ``size = (H, W)``, through the one preprocessing path
    (:func:`l2ood.data.preprocess.load_image`: the same decode and resize as screened files)."""
    return load_image(path, 3, size, fit=mode).numpy()


def _cache_key(files: Sequence[Path], labels: Sequence[int] | None, class_names: Sequence[str] | None,
               size: tuple[int, int], mode: str) -> str:
    h = hashlib.sha256()
    h.update(f"{_CACHE_VERSION}\n{mode}\n{size[0]}x{size[1]}\n{list(class_names or [])!r}\n".encode())
    for i, f in enumerate(files):
        try:
            st = f.stat()
            stamp = f"{st.st_size}\t{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        lab = "" if labels is None else labels[i]
        h.update(f"{f.absolute()}\t{stamp}\t{lab}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cache_path(name: str, key: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "images"
    return decoded_dir() / f"{slug}-{key[:32]}.npz"


def _read_cache(path: Path, n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int, str] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, kept = z["images"], z["kept"]
            skipped, first = int(z["skipped"]), str(z["first_error"])
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if images.dtype != np.uint8 or images.shape[1:] != (3, *size) or kept.shape != (len(images),) \
            or (len(kept) and (kept.min() < 0 or kept.max() >= n)):
        return None
    return images, kept, skipped, first


def _write_cache(path: Path, images: np.ndarray, kept: np.ndarray, skipped: int, first: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
        np.savez(tmp, images=images, kept=kept, skipped=np.int64(skipped), first_error=np.str_(first))
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the decoded-image cache {path}: {e}", stacklevel=3)
        return
    enforce_cap(path.parent, decoded_cap_bytes(), keep=path)


def decode_images(
    files: Sequence[Path],
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    name: str,
    size: tuple[int, int] = (32, 32),
    mode: str = "resize",
    source: str = "",
    fmt: str = "imagefolder",
    hflip: bool = True,
    progress: bool | None = None,
    cache: bool = True,
) -> ImageSet:
    """Decode image files into an :class:`ImageSet` ``(N, 3, H, W)``, through the npz cache.

    ``progress=None`` reports progress only on a terminal (:func:`l2ood.progress.progress`).
    Unreadable files are skipped (one warning).
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    size = (int(size[0]), int(size[1]))
    files = [Path(f) for f in files]
    if not files:
        raise DataNotFoundError(f"{name}: no image files given")
    if labels is not None and len(labels) != len(files):
        raise ConfigError(f"{len(labels)} labels for {len(files)} files")
    key = _cache_key(files, labels, class_names, size, mode)
    cap = decoded_cap_bytes() if cache else 0
    cache = cache and cap > 0
    cpath = _cache_path(name, key)
    hit = _read_cache(cpath, len(files), size) if cache else None
    if hit is not None:
        images, kept, skipped, first = hit
        touch(cpath)  # least recently used files are evicted first
    else:
        from ..progress import progress as progress_bar

        images = np.empty((len(files), 3, *size), dtype=np.uint8)
        ok = np.zeros(len(files), dtype=bool)
        skipped, first = 0, ""
        bar = progress_bar(files, desc=f"decoding {name}", unit="img", enabled=progress)
        for i, f in enumerate(bar):
            try:
                arr = _decode_image(f, size, mode)
            except Exception as e:  # Pillow raises many types for corrupt files; skip them all
                skipped += 1
                first = first or f"{f}: {type(e).__name__}: {e}"
                continue
            images[i] = arr
            ok[i] = True
        kept = np.flatnonzero(ok).astype(np.int64)
        images = images[kept] if skipped else images
        if len(kept) and cache:
            _write_cache(cpath, images, kept, skipped, first)
    if skipped:
        warnings.warn(f"{name}: skipped {skipped} unreadable image(s) of {len(files)} (first: {first})",
                      stacklevel=2)
    if len(kept) == 0:
        raise DataFormatError(f"{name}: none of the {len(files)} images could be decoded (first: {first})")
    t_labels = None
    if labels is not None:
        t_labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)[kept])
    return ImageSet(
        name=name,
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=t_labels,
        class_names=list(class_names) if class_names is not None else None,
        hflip=hflip,
        meta={"source": source, "format": fmt, "decode": f"{mode} {size[0]}x{size[1]}",
              "skipped": skipped},
        view=mode,
    )


def split_folder(root: Path, split: str | None) -> Path:
    """``root/split`` when ``root`` holds only split folders (train/val/test), else ``root`` itself."""
    if split is None or not root.is_dir():
        return root
    subs = {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if subs and subs <= SPLIT_NAMES:
        if split not in subs:
            raise DataNotFoundError(f"{root} holds split folders ({', '.join(sorted(subs))}) but no '{split}'")
        return root / split
    return root


_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def load_image_folder(
    path: str | Path,
    split: str | None = None,
    *,
    size: tuple[int, int] = (32, 32),
    mode: str = "resize",
    per_class_limit: int | None = None,
    name: str | None = None,
    progress: bool | None = None,
    cache: bool = True,
) -> ImageSet:
    """Load an image folder (see the module doc) as an :class:`ImageSet` ``(N, 3, H, W)``."""
    given = Path(path).expanduser()
    root = split_folder(given, split)
    try:
        files, labels, class_names = scan_image_folder(root, per_class_limit)
    except DataNotFoundError as e:
        raise DataNotFoundError(
            f"{e}\nWays to supply it: pass imagefolder:DIR with DIR/<class>/*.jpg (sorted class names give the "
            "labels) or a flat DIR/*.jpg (no labels); DIR may also hold train/ and test/ split folders.") from None
    default_name = given.absolute().name
    if default_name in _SPLIT_NAMES and given.absolute().parent.name:  # cifar10/test -> "cifar10"
        default_name = given.absolute().parent.name
    return decode_images(files, labels, class_names, name=name or default_name, size=size, mode=mode,
                         source=str(root.absolute()), progress=progress, cache=cache)
