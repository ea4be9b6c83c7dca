"""Data by name: the single registry of data sets l2ood knows, and :func:`load_dataset`, which decodes one into
memory.

Names: ``fashion-mnist``, ``mnist`` (IDX, offline-first, see :mod:`l2ood.data.mnist`), ``textures``
and ``noise`` (seeded, generated, see :mod:`l2ood.data.synthetic`), the CIFAR-scale OoD benchmark in
its official formats — ``cifar10``, ``cifar100`` (:mod:`l2ood.data.cifar`, the binary archives: no
pickle is ever parsed), ``svhn`` (:mod:`l2ood.data.svhn`), ``dtd``, ``tin``,
``places365`` (:mod:`l2ood.data.oodsets`) — and the parametric ``npz:PATH`` (see
:mod:`l2ood.data.npz`), ``imagefolder:PATH`` (:mod:`l2ood.data.folders`),
``imglist:LISTFILE[@IMAGEROOT]`` (OpenOOD v1.5 image lists, :mod:`l2ood.data.imglist`) and ``wds:SHARDS`` (tar
shards, :mod:`l2ood.data.stream`). All of them load as uint8 :class:`~l2ood.data.ImageSet` objects kept in
memory; whether a set is streamed instead is decided in one place, :func:`l2ood.data.source.open_images`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cifar import load_cifar
from .errors import DataError, DataNotFoundError
from .folders import load_image_folder, split_folder
from .imageset import DataSource, ImageSet
from .imglist import load_imglist, parse_imglist_spec
from .mnist import load_idx_dataset
from .npz import load_npz
from .oodsets import load_dtd, load_places365, load_tin
from .specs import canonical_spec
from .svhn import load_svhn
from .synthetic import make_noise, make_textures


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


def _cifar(name: str) -> Callable[..., ImageSet]:
    def load(split: str, root: str | Path | None, download: bool, **_: object) -> ImageSet:
        return load_cifar(name, split, root=root, download_ok=download)

    return load


def _svhn(split: str, root: str | Path | None, download: bool, **_: object) -> ImageSet:
    return load_svhn(split, root=root, download_ok=download)


def _folder_set(fn: Callable[..., ImageSet]) -> Callable[..., ImageSet]:
    def load(split: str, root: str | Path | None, download: bool, size: tuple[int, int], **_: object) -> ImageSet:
        return fn(split, root=root, download_ok=download, size=size)

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
    "cifar10": DatasetInfo(_cifar("cifar10"), "CIFAR-10, 32×32 RGB, 10 classes (official binary tarball)",
                           ("train", "test")),
    "cifar100": DatasetInfo(_cifar("cifar100"), "CIFAR-100, 32×32 RGB, 100 fine classes (official tarball)",
                            ("train", "test")),
    "svhn": DatasetInfo(_svhn, "SVHN cropped digits, 32×32 RGB, labels 0–9 (official .mat)",
                        ("train", "test", "extra")),
    "dtd": DatasetInfo(_folder_set(load_dtd), "Describable Textures (all 5 640 images; shorter side + centre crop)",
                       ("test",)),
    "tin": DatasetInfo(_folder_set(load_tin), "Tiny-ImageNet-200, 64×64 resized; 'test' is the OoD split",
                       ("test", "val", "train")),
    "places365": DatasetInfo(_folder_set(load_places365), "Places365 (local subset folder or official val_256)",
                             ("test",)),
}

PARAMETRIC = ("npz:PATH", "imagefolder:PATH", "imglist:LISTFILE[@IMAGEROOT]", "wds:SHARDS")


def has_split(name: str, split: str) -> bool:
    """Whether ``name`` holds a ``split`` of its own, distinct from its other images.

    Registered sets answer from their split list; ``imagefolder:DIR`` only when ``DIR`` holds split
    folders including ``split``; ``npz:`` packs and image lists are single sets (``False``): for them
    ``load_dataset(name, "test")`` returns the same images as ``"train"``.
    """
    if name in DATASETS:
        return split in DATASETS[name].splits
    if name.startswith(("imagefolder:", "wds:")):
        root = Path(name.split(":", 1)[1])
        try:
            return root.is_dir() and split_folder(root, split) != root
        except DataNotFoundError:  # split folders exist, but not this one
            return False
    return False


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
    """Load a data set by name (see :data:`DATASETS`, plus ``npz:PATH``, ``imagefolder:PATH`` and
    ``imglist:LISTFILE[@IMAGEROOT]``).

    Image folders and lists are decoded directly at ``size`` (default 32×32); ``split`` picks
    ``PATH/<split>`` when an image folder holds only split folders (``train``, ``val``, ``test``).

    ``size``/``channels`` convert the images to that input format (OoD sets are brought to the ID
    format this way); ``n`` takes a seeded random subset (or the count of generated images).
    """
    if name.startswith("npz:"):
        ds = load_npz(name[4:])
    elif name.startswith("imagefolder:"):
        ds = load_image_folder(name[len("imagefolder:"):], split, size=size or (32, 32))
    elif name.startswith("imglist:"):
        list_file, image_root = parse_imglist_spec(name[len("imglist:"):])
        ds = load_imglist(list_file, image_root, root=root, size=size or (32, 32))
    elif name.startswith("wds:"):
        from .stream import materialize, open_stream

        ds = materialize(open_stream(name, split, root=root, size=size or (32, 32)))
    elif name in DATASETS:
        info = DATASETS[name]
        if split not in info.splits:
            raise DataError(f"dataset '{name}' has no split '{split}' (has: {', '.join(info.splits)})")
        ds = info.loader(split=split, root=root, download=download, n=n, seed=seed,
                         size=size or (32, 32), channels=channels or 1)
    else:
        known = ", ".join([*DATASETS, *PARAMETRIC])
        raise DataError(f"unknown dataset '{name}'; known: {known}")
    generated = name in DATASETS and DATASETS[name].generated
    if not generated:
        ds.source = DataSource(canonical_spec(name), split, None if root is None else str(Path(root).absolute()))
    if n is not None and not generated:
        ds = ds.subset(n, seed=seed)
    if size is not None or channels is not None:
        ds = ds.formatted(channels or ds.shape[0], size or ds.shape[1:])
    return ds


__all__ = ["DATASETS", "PARAMETRIC", "DatasetInfo", "has_split", "load_dataset"]
