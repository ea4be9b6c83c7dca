"""OpenOOD v1.5 image lists: ``imglist:LISTFILE[@IMAGEROOT]``.

Source: https://github.com/Jingkang50/OpenOOD (``scripts/download/download.py`` fetches
``benchmark_imglist`` and the image folders ``images_classic`` / ``images_largescale``).

Format: text files ``benchmark_imglist/<id-dataset>/<split>_<dataset>.txt`` with one image per line,
``relative/path/to/image.png label`` (OpenOOD splits the line at its first space); the label is an
integer, ``-1`` or absent for OoD sets. Paths are relative to an image root: OpenOOD's
``images_classic/`` for the CIFAR benchmarks and ``images_largescale/`` for ImageNet.

Image root: the ``@IMAGEROOT`` part if given; else the first of ``<data>/images_classic``,
``<data>/images_largescale`` (for a list below ``<data>/benchmark_imglist/``), ``--data-root``
(+ ``/images_classic``, ``/images_largescale``), ``L2OOD_DATA`` (same) and the list's folder in which
the first listed image exists. Images are decoded and cached with :func:`l2ood.data.folders.decode_images`:
a list inside an OpenOOD ``benchmark_imglist/`` folder with OpenOOD's test transform (shorter side resized to the
target size, then a centre crop: torchvision ``Resize(s)`` + ``CenterCrop(s)``, OpenOOD's
``TestStandardPreProcessor``; the same pixels as a plain resize for square images such as CIFAR's), any other list
with a bilinear resize of the whole image (``mode`` overrides both). Labels are kept only when every line has a label
``>= 0``; class names are not part of the format. Listed files that are missing are skipped with one
warning (the ``openood-*`` benchmarks refuse to start instead: :mod:`l2ood.bench.openood`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePosixPath

from .errors import DataFormatError, DataNotFoundError
from .folders import decode_images
from .imageset import ImageSet

IMAGE_ROOT_NAMES = ("images_classic", "images_largescale")
MAX_LIST_BYTES = 512 * 1024 * 1024
MAX_LABEL = 1_000_000


def parse_imglist_spec(spec: str) -> tuple[Path, Path | None]:
    """``LISTFILE[@IMAGEROOT]`` → (list file, image root or None); an existing file name wins over ``@``."""
    if Path(spec).expanduser().is_file() or "@" not in spec:
        return Path(spec).expanduser(), None
    lst, _, img_root = spec.rpartition("@")
    return Path(lst).expanduser(), Path(img_root).expanduser() if img_root else None


def read_imglist(path: str | Path) -> list[tuple[str, int | None]]:
    """``(relative image path, label or None)`` for each non-empty line of an OpenOOD image list."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"image list not found: {path}")
    if path.stat().st_size > MAX_LIST_BYTES:
        raise DataFormatError(f"{path}: {path.stat().st_size} bytes is larger than any image list "
                              f"(limit {MAX_LIST_BYTES})")
    out: list[tuple[str, int | None]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a readable text file ({e})") from e
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        label: int | None = None
        if len(parts) == 2:
            try:
                label = int(parts[1].strip())
            except ValueError:
                raise DataFormatError(f"{path}:{i}: expected 'path label', got {line[:200]!r}") from None
            if not -1 <= label < MAX_LABEL:
                raise DataFormatError(f"{path}:{i}: label {parts[1].strip()[:30]} outside [-1, {MAX_LABEL})")
        rel = PurePosixPath(parts[0])
        if rel.is_absolute() or ".." in rel.parts:
            raise DataFormatError(f"{path}:{i}: image path {parts[0][:200]!r} leaves the image root "
                                  "(absolute or '..'); image lists hold paths relative to it")
        out.append((parts[0], label))
    if not out:
        raise DataFormatError(f"{path}: the image list is empty")
    return out


def in_openood_layout(list_file: str | Path) -> bool:
    """Whether ``list_file`` sits in an OpenOOD ``benchmark_imglist/<id>/`` folder."""
    return any(a.name == "benchmark_imglist" for a in Path(list_file).expanduser().absolute().parents)


def default_mode(list_file: str | Path) -> str:
    """How a list's images are brought to the target size when no mode is given: ``"crop"`` (OpenOOD's test
    transform, shorter side + centre crop) for a list in OpenOOD's layout, ``"resize"`` otherwise.

    >>> default_mode("DATA/benchmark_imglist/cifar10/test_texture.txt"), default_mode("my_list.txt")
    ('crop', 'resize')
    """
    return "crop" if in_openood_layout(list_file) else "resize"


def _root_candidates(list_file: Path, root: str | Path | None) -> list[Path]:
    cands: list[Path] = []
    for a in list_file.absolute().parents:
        if a.name == "benchmark_imglist":
            cands += [a.parent / n for n in IMAGE_ROOT_NAMES]
    for r in (root, os.environ.get("L2OOD_DATA")):
        if r:
            rp = Path(r).expanduser()
            cands += [rp / n for n in IMAGE_ROOT_NAMES] + [rp]
    cands.append(list_file.absolute().parent)
    return cands


def load_imglist(
    list_file: str | Path,
    image_root: str | Path | None = None,
    *,
    root: str | Path | None = None,
    size: tuple[int, int] = (32, 32),
    mode: str | None = None,
    name: str | None = None,
    progress: bool | None = None,
    cache: bool = True,
) -> ImageSet:
    """Load the images of an OpenOOD image list (see the module doc) as an :class:`ImageSet`; ``mode`` (``"resize"``,
    ``"crop"``, ...: :data:`l2ood.data.folders.MODES`) defaults to :func:`default_mode` of the list."""
    list_file = Path(list_file).expanduser()
    if mode is None:
        mode = default_mode(list_file)
    entries = read_imglist(list_file)
    if image_root is not None:
        cands = [Path(image_root).expanduser()]
    else:
        cands = _root_candidates(list_file, root)
    img_root = next((c for c in cands if (c / entries[0][0]).is_file()), None)
    if img_root is None:
        looked = "\n".join(f"  - {c / entries[0][0]}" for c in cands)
        raise DataNotFoundError(
            f"images of {list_file} not found; the first listed image was looked for at:\n{looked}\n"
            "Ways to supply it: pass imglist:LISTFILE@IMAGEROOT, or keep OpenOOD's layout "
            "(DATA/benchmark_imglist/... next to DATA/images_classic/ or DATA/images_largescale/), "
            "or set --data-root / L2OOD_DATA to DATA.")
    files = [img_root / rel for rel, _ in entries]
    present = [i for i, f in enumerate(files) if f.is_file()]
    if len(present) < len(files):
        missing = next(f for f in files if not f.is_file())
        warnings.warn(f"{list_file}: {len(files) - len(present)} listed image(s) missing under {img_root} "
                      f"(first: {missing})", stacklevel=2)
    labels_all = [lab for _, lab in entries]
    has_labels = all(lab is not None and lab >= 0 for lab in labels_all)
    return decode_images(
        [files[i] for i in present],
        [int(labels_all[i]) for i in present] if has_labels else None,  # type: ignore[arg-type]
        None,
        name=name or list_file.stem,
        size=size,
        mode=mode,
        source=f"{list_file.absolute()}@{img_root.absolute()}",
        fmt="openood-imglist",
        progress=progress,
        cache=cache,
    )
