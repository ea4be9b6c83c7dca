"""Data by name: the single registry of data sets l2ood knows.

Names: ``fashion-mnist``, ``mnist`` (IDX, offline-first, see :mod:`l2ood.data.mnist`), ``textures``
and ``noise`` (seeded, generated, see :mod:`l2ood.data.synthetic`) and ``npz:PATH`` (see
:mod:`l2ood.data.npz`). All loaders return uint8 :class:`ImageSet` objects kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, DataFormatError, DataNotFoundError
from .imageset import ImageSet
from .mnist import load_idx_dataset
from .npz import load_npz, save_npz
from .synthetic import make_noise, make_textures
from .transforms import augment_batch, channel_stats, convert_format, to_format

__all__ = [
    "DATASETS",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "ImageSet",
    "augment_batch",
    "channel_stats",
    "convert_format",
    "load_dataset",
    "load_npz",
    "save_npz",
    "to_format",
]


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: how to load a named data set and what it is."""

    loader: Callable[..., ImageSet]
    description: str
    splits: tuple[str, ...]
    generated: bool = False  # generated data are made directly in the requested format


def _idx(name: str) -> Callable[..., ImageSet]:
    def load(split: str, root: str | Path | None, download: bool, **_: object) -> ImageSet:
        return load_idx_dataset(name, split, root=root, download=download)

    return load


def _textures(split: str, n: int | None, seed: int, size: tuple[int, int], channels: int,
              **_: object) -> ImageSet:
    return make_textures(n or 2000, size=size, channels=channels, seed=seed + (0 if split == "test" else 1))


def _noise(split: str, n: int | None, seed: int, size: tuple[int, int], channels: int,
           **_: object) -> ImageSet:
    return make_noise(n or 2000, size=size, channels=channels, seed=seed + (0 if split == "test" else 1))


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(_idx("fashion-mnist"), "Fashion-MNIST, 28×28 gray, 10 classes",
                                 ("train", "test")),
    "mnist": DatasetInfo(_idx("mnist"), "MNIST digits, 28×28 gray, 10 classes", ("train", "test")),
    "textures": DatasetInfo(_textures, "seeded patches of scikit-image's CC0 brick/grass/gravel photos",
                            ("train", "test"), generated=True),
    "noise": DatasetInfo(_noise, "seeded uniform + Gaussian noise images", ("train", "test"),
                         generated=True),
}


def load_dataset(
    name: str,
    split: str = "test",
    *,
    root: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    download: bool = True,
) -> ImageSet:
    """Load a data set by name (see :data:`DATASETS`, plus ``npz:PATH``).

    ``size``/``channels`` convert the images to that input format (OoD sets are brought to the ID
    format this way); ``n`` takes a seeded random subset (or the count of generated images).
    """
    if name.startswith("npz:"):
        ds = load_npz(name[4:])
    elif name in DATASETS:
        info = DATASETS[name]
        if split not in info.splits:
            raise DataError(f"dataset '{name}' has no split '{split}' (has: {', '.join(info.splits)})")
        ds = info.loader(split=split, root=root, download=download, n=n, seed=seed,
                         size=size or (32, 32), channels=channels or 1)
    else:
        known = ", ".join([*DATASETS, "npz:PATH"])
        raise DataError(f"unknown dataset '{name}'; known: {known}")
    if n is not None and not (name in DATASETS and DATASETS[name].generated):
        ds = ds.subset(n, seed=seed)
    if size is not None or channels is not None:
        ds = to_format(ds, channels or ds.shape[0], size or ds.shape[1:])
    return ds
