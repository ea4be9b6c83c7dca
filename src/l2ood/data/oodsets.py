"""Image-folder OoD sets of the CIFAR-scale benchmark (OpenOOD v1.5 style): Textures, Tiny-ImageNet, Places365.

All three are decoded with :func:`l2ood.data.folders.decode_images` (cached npz after the first load)
and looked up like the other sets (:mod:`l2ood.data.lookup`): extracted folders first, then the
official archive found in a searched folder (extracted once into ``$L2OOD_CACHE/extracted/<name>``),
then a checksummed download of the archive.

* ``dtd`` — Describable Textures (Cimpoi et al., 2014), https://www.robots.ox.ac.uk/~vgg/data/dtd/:
  ``dtd-r1.0.1.tar.gz`` → ``dtd/images/<class>/*.jpg`` (47 classes, 5 640 images). All images form
  the ``test`` split (OpenOOD's "Textures"); decoded with the shorter side resized to the target size
  and a centre crop.
* ``tin`` — Tiny-ImageNet-200 (CS231n), http://cs231n.stanford.edu/tiny-imagenet-200.zip:
  ``tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG +
  val/val_annotations.txt, test/images/*.JPEG}``; 64×64 images resized (bilinear) to the target size.
  ``test`` (10 000, unlabelled; the OoD set), ``val`` (10 000, labelled) and ``train``; labels index
  the sorted wnids.
* ``places365`` — Places365 (Zhou et al., 2017), http://places2.csail.mit.edu/: a local folder
  ``places365/<class>/*.jpg`` (OpenOOD's subset) or flat ``places365/*.jpg``, or the official
  small-image validation tarball ``val_256.tar`` → ``val_256/*.jpg`` (36 500 images, unlabelled;
  2.1 GB, downloaded only when nothing local is found).

These readers serve the ``cifar10`` / ``cifar100`` benchmarks: whole official test splits, not OpenOOD v1.5's
curated subsets (its ``test_tin.txt`` keeps 7 793 Tiny-ImageNet images, ``test_places365.txt`` 35 195 Places365
images, ...). The ``openood-*`` benchmarks read OpenOOD's own lists and images (:mod:`l2ood.bench.openood`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import DataError, DataFormatError, DataNotFoundError
from .folders import decode_images, scan_image_folder
from .imageset import ImageSet
from .lookup import Searched, cache_dir, download, extract, missing_message, search_dirs

DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
DTD_MD5 = "fff73e5086ae6bdbea199a49dfb8a4c1"
TIN_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TIN_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
PLACES_URL = "http://data.csail.mit.edu/places/places365/val_256.tar"
PLACES_MD5 = "e27b17d8d44f4af9a78502beb927f808"


def _has_entries(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())
    except OSError:
        return False


def _locate(
    name: str,
    title: str,
    root: str | Path | None,
    aliases: tuple[str, ...],
    folders: Callable[[Path], list[Path]],
    valid: Callable[[Path], bool],
    archive: str,
    prefix: str,
    url: str,
    md5: str,
    download_ok: bool,
    supply: list[str],
) -> Path:
    """The data folder: a valid local folder, else the extracted local/downloaded archive."""
    searched: Searched = search_dirs(name, root, aliases)
    extracted = cache_dir() / "extracted" / name
    for d in [*(d for _, d in searched), extracted]:
        for c in folders(d):
            if valid(c):
                return c

    def from_archive(a: Path) -> Path:
        out = extract(a, extracted, lambda m: m.startswith(prefix))
        for c in folders(out):
            if valid(c):
                return c
        raise DataFormatError(f"{a}: the archive does not hold the expected {prefix} layout")

    for _, d in searched:
        if (d / archive).is_file():
            return from_archive(d / archive)
    why = ""
    if download_ok:
        try:
            return from_archive(download(name, url, md5, archive))
        except DataNotFoundError as e:
            why = str(e)
    raise DataNotFoundError(missing_message(
        title, [*searched, ("extracted archives", extracted)], why, download_ok,
        [*supply, f"or put {archive} (from {url}, md5 {md5}) in DIR/{name}/ or DIR/;",
         "allow network access so the checksummed download can run."]))


# --- Textures / DTD -----------------------------------------------------------------------------

def _dtd_folders(d: Path) -> list[Path]:
    out = [d / "dtd" / "images"]
    if d.name.lower() == "dtd":
        out.append(d / "images")
    return out


def load_dtd(split: str = "test", root: str | Path | None = None, download_ok: bool = True,
             size: tuple[int, int] = (32, 32), progress: bool | None = None) -> ImageSet:
    """All DTD images, shorter side → ``size`` + centre crop, labelled by the 47 texture classes."""
    if split != "test":
        raise DataError(f"unknown split '{split}' for dtd; use 'test' (all images, as in OpenOOD)")
    folder = _locate(
        "dtd", "Dataset 'dtd' (Describable Textures)", root, ("DTD", "textures-dtd"), _dtd_folders,
        _has_entries, "dtd-r1.0.1.tar.gz", "dtd/images/", DTD_URL, DTD_MD5, download_ok,
        ["put the extracted tarball (dtd/images/<class>/*.jpg) in DIR/ or DIR/dtd/ and pass --data-root DIR "
         "or set L2OOD_DATA=DIR;"])
    files, labels, names = scan_image_folder(folder)
    return decode_images(files, labels, names, name="dtd", size=size, mode="crop", source=str(folder),
                         fmt="dtd", progress=progress)


# --- Tiny-ImageNet ------------------------------------------------------------------------------

TIN_SPLITS = ("test", "val", "train")
_TIN_PROBE = {"test": "test/images", "val": "val/images", "train": "train"}


def _tin_folders(d: Path) -> list[Path]:
    out = [d / "tiny-imagenet-200"]
    if d.name == "tiny-imagenet-200":
        out.append(d)
    return out


def _tin_wnids(base: Path) -> list[str]:
    if (base / "wnids.txt").is_file():
        return sorted({s.strip() for s in (base / "wnids.txt").read_text().splitlines() if s.strip()})
    if (base / "train").is_dir():
        return sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    return []


def load_tin(split: str = "test", root: str | Path | None = None, download_ok: bool = True,
             size: tuple[int, int] = (32, 32), progress: bool | None = None) -> ImageSet:
    """Tiny-ImageNet-200 ``test`` (unlabelled), ``val`` or ``train``, resized (bilinear) to ``size``."""
    if split not in TIN_SPLITS:
        raise DataError(f"unknown split '{split}' for tin; use one of {', '.join(TIN_SPLITS)}")
    base = _locate(
        "tin", f"Dataset 'tin' (Tiny-ImageNet-200, {split} split)", root, ("tiny-imagenet", "tinyimagenet"),
        _tin_folders, lambda c: _has_entries(c / _TIN_PROBE[split]), "tiny-imagenet-200.zip",
        "tiny-imagenet-200/", TIN_URL, TIN_MD5, download_ok,
        ["put the extracted zip (tiny-imagenet-200/{train,val,test}/...) in DIR/ or DIR/tin/ and pass "
         "--data-root DIR or set L2OOD_DATA=DIR;"])
    common = {"name": "tin", "size": size, "mode": "resize", "fmt": "tiny-imagenet", "progress": progress}
    if split == "test":
        files, _, _ = scan_image_folder(base / "test" / "images")
        return decode_images(files, None, None, source=str(base / "test"), **common)  # type: ignore[arg-type]
    wnids = _tin_wnids(base)
    if split == "train":
        files, labels, names = scan_image_folder(base / "train")
        if wnids and names != wnids:
            index = {w: i for i, w in enumerate(wnids)}
            labels = [index[names[k]] for k in labels or [] if names[k] in index]  # type: ignore[index]
            if len(labels) != len(files):
                raise DataFormatError(f"{base / 'train'}: class folders do not match wnids.txt")
            names = wnids
        return decode_images(files, labels, names, source=str(base / "train"), **common)  # type: ignore[arg-type]
    ann = base / "val" / "val_annotations.txt"
    files, _, _ = scan_image_folder(base / "val" / "images")
    if not ann.is_file():
        return decode_images(files, None, None, source=str(base / "val"), **common)  # type: ignore[arg-type]
    by_file: dict[str, str] = {}
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            by_file[parts[0].strip()] = parts[1].strip()
    wnids = wnids or sorted(set(by_file.values()))
    index = {w: i for i, w in enumerate(wnids)}
    try:
        labels = [index[by_file[f.name]] for f in files]
    except KeyError as e:
        raise DataFormatError(f"{ann}: no annotation / unknown wnid for {e}") from None
    return decode_images(files, labels, wnids, source=str(base / "val"), **common)  # type: ignore[arg-type]


# --- Places365 ----------------------------------------------------------------------------------

def _places_folders(d: Path) -> list[Path]:
    out = [d / "val_256"]
    if d.name.lower() in ("places365", "places"):
        out.append(d)
    return out


def _places_valid(c: Path) -> bool:
    if not c.is_dir():
        return False
    try:
        scan_image_folder(c, per_class_limit=1)
    except DataNotFoundError:
        return False
    return True


def load_places365(split: str = "test", root: str | Path | None = None, download_ok: bool = True,
                   size: tuple[int, int] = (32, 32), progress: bool | None = None) -> ImageSet:
    """Places365 from a local class/flat folder or the official ``val_256.tar``, resized to ``size``."""
    if split != "test":
        raise DataError(f"unknown split '{split}' for places365; use 'test'")
    folder = _locate(
        "places365", "Dataset 'places365'", root, ("places",), _places_folders, _places_valid,
        "val_256.tar", "val_256/", PLACES_URL, PLACES_MD5, download_ok,
        ["put images in DIR/places365/<class>/*.jpg (OpenOOD's subset) or DIR/places365/*.jpg, or the "
         "extracted val_256/ folder in DIR/ or DIR/places365/, and pass --data-root DIR or set L2OOD_DATA=DIR;"])
    files, labels, names = scan_image_folder(folder)
    return decode_images(files, labels, names, name="places365", size=size, mode="resize", source=str(folder),
                         fmt="places365", progress=progress)
