"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) in their official formats, read without unpickling.

Source: https://www.cs.toronto.edu/~kriz/cifar.html

Python version (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``): pickled dicts, read with
:func:`l2ood.data.safepickle.safe_load` (nothing is executed). ``data`` is a uint8 array ``(N, 3072)``
whose rows hold the red, green and blue 32×32 planes in turn (row-major), so ``data.reshape(N, 3, 32,
32)`` is already channels-first. Labels are ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100);
class names are ``label_names`` in ``batches.meta`` or ``fine_label_names`` in ``meta``. Files
written by Python 2 have ``bytes`` keys and values; both kinds are accepted.

* CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``;
* CIFAR-100: ``cifar-100-python/{train, test, meta}``.

Binary version (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``), used when found locally:
fixed-size records of 1 label byte (CIFAR-10) or 2 (coarse, fine; CIFAR-100) followed by the 3072
pixel bytes in the same plane order.

* CIFAR-10: ``cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin, batches.meta.txt}``;
* CIFAR-100: ``cifar-100-binary/{train.bin, test.bin, fine_label_names.txt}``.

Each folder is searched (see :mod:`l2ood.data.lookup`) for, in order: the extracted python folder,
the python tarball, the extracted binary folder, the binary tarball; a folder named like the
extracted one is accepted directly. Tarballs are read in place (one pass, nothing extracted). If
nothing is found, the python tarball is downloaded (MD5-checked) into the cache.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, DataFormatError, DataNotFoundError
from .imageset import ImageSet
from .lookup import download, missing_message, search_dirs
from .safepickle import safe_load

URL_BASE = "https://www.cs.toronto.edu/~kriz/"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CifarSpec:
    """The official file names, checksums and keys of one CIFAR data set."""

    name: str
    num_classes: int
    python_dir: str
    python_tar: str
    python_md5: str
    python_files: dict[str, tuple[str, ...]]
    meta_file: str
    label_key: str
    names_key: str
    binary_dir: str
    binary_tar: str
    binary_md5: str
    binary_files: dict[str, tuple[str, ...]]
    binary_names_file: str
    label_bytes: int
    default_names: tuple[str, ...] | None = None


CIFAR10 = CifarSpec(
    name="cifar10",
    num_classes=10,
    python_dir="cifar-10-batches-py",
    python_tar="cifar-10-python.tar.gz",
    python_md5="c58f30108f718f92721af3b95e74349a",
    python_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    binary_dir="cifar-10-batches-bin",
    binary_tar="cifar-10-binary.tar.gz",
    binary_md5="c32a1d4ab5d03f1284b67883e8d87530",
    binary_files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
    binary_names_file="batches.meta.txt",
    label_bytes=1,
    default_names=CIFAR10_CLASSES,
)

CIFAR100 = CifarSpec(
    name="cifar100",
    num_classes=100,
    python_dir="cifar-100-python",
    python_tar="cifar-100-python.tar.gz",
    python_md5="eb9058c3a382ffc7106e4002c42a8d85",
    python_files={"train": ("train",), "test": ("test",)},
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    binary_dir="cifar-100-binary",
    binary_tar="cifar-100-binary.tar.gz",
    binary_md5="03b5dce01913d631647c71ecec9e9cb8",
    binary_files={"train": ("train.bin",), "test": ("test.bin",)},
    binary_names_file="fine_label_names.txt",
    label_bytes=2,
)

SPECS = {s.name: s for s in (CIFAR10, CIFAR100)}
_ALIASES = {"cifar10": ("cifar-10", "CIFAR10"), "cifar100": ("cifar-100", "CIFAR100")}


def _text(x: object) -> str:
    return x.decode("latin-1") if isinstance(x, (bytes, bytearray)) else str(x)


def _plain_keys(d: object, where: str) -> dict[str, object]:
    if not isinstance(d, dict):
        raise DataFormatError(f"{where}: expected a pickled dict, got {type(d).__name__}")
    return {_text(k): v for k, v in d.items()}


def _batch_arrays(spec: CifarSpec, d: dict[str, object], where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = d.get("data"), d.get(spec.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{where}: 'data' must be a uint8 (N, 3072) array, got {got}")
    if labels is None:
        raise DataFormatError(f"{where}: no '{spec.label_key}' entry (keys: {', '.join(d)})")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataFormatError(f"{where}: '{spec.label_key}' is not a list of integers") from e
    if y.shape != (len(data),) or (len(y) and (y.min() < 0 or y.max() >= spec.num_classes)):
        raise DataFormatError(f"{where}: '{spec.label_key}' must be {len(data)} labels in [0, {spec.num_classes})")
    return data.reshape(len(data), 3, 32, 32), y


def _names(spec: CifarSpec, meta: object, where: str) -> list[str]:
    d = _plain_keys(meta, where)
    names = d.get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataFormatError(f"{where}: '{spec.names_key}' must list {spec.num_classes} class names")
    return [_text(s) for s in names]


def _read_python(spec: CifarSpec, split: str, folder: Path | None, tar: Path | None
                 ) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    wanted = [*spec.python_files[split], spec.meta_file]
    found: dict[str, object] = {}
    if folder is not None:
        for m in wanted:
            if (folder / m).is_file():
                found[m] = safe_load(folder / m)
        where = str(folder)
    else:
        assert tar is not None
        names = {f"{spec.python_dir}/{m}": m for m in wanted}
        try:
            with tarfile.open(tar, "r:*") as tf:
                for member in tf:  # one pass over the (gzip) stream, in archive order
                    if member.isfile() and member.name in names:
                        f = tf.extractfile(member)
                        if f is not None:
                            with f:
                                found[names[member.name]] = safe_load(f, source=f"{tar}:{member.name}")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataFormatError(f"{tar}: not a readable tar archive ({e})") from e
        where = f"{tar}:{spec.python_dir}"
    missing = [m for m in spec.python_files[split] if m not in found]
    if missing:
        raise DataFormatError(f"{where}: missing {', '.join(missing)}")
    parts = [_batch_arrays(spec, _plain_keys(found[m], f"{where}/{m}"), f"{where}/{m}")
             for m in spec.python_files[split]]
    names_ = _names(spec, found[spec.meta_file], f"{where}/{spec.meta_file}") if spec.meta_file in found \
        else (list(spec.default_names) if spec.default_names else None)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), names_


def _parse_binary(spec: CifarSpec, raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    rec = spec.label_bytes + 3072
    if len(raw) == 0 or len(raw) % rec:
        raise DataFormatError(f"{where}: size {len(raw)} is not a multiple of the {rec}-byte record")
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    y = a[:, spec.label_bytes - 1].astype(np.int64)  # CIFAR-100: (coarse, fine) -> fine
    if y.max() >= spec.num_classes:
        raise DataFormatError(f"{where}: label {int(y.max())} out of range [0, {spec.num_classes})")
    return np.ascontiguousarray(a[:, spec.label_bytes:]).reshape(-1, 3, 32, 32), y


def _read_binary(spec: CifarSpec, split: str, folder: Path | None, tar: Path | None
                 ) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    wanted = [*spec.binary_files[split], spec.binary_names_file]
    raw: dict[str, bytes] = {}
    if folder is not None:
        raw = {m: (folder / m).read_bytes() for m in wanted if (folder / m).is_file()}
        where = str(folder)
    else:
        assert tar is not None
        try:
            with tarfile.open(tar, "r:*") as tf:
                for member in tf:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and member.name.count("/") <= 1:
                        f = tf.extractfile(member)
                        if f is not None:
                            with f:
                                raw[base] = f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataFormatError(f"{tar}: not a readable tar archive ({e})") from e
        where = f"{tar}:{spec.binary_dir}"
    missing = [m for m in spec.binary_files[split] if m not in raw]
    if missing:
        raise DataFormatError(f"{where}: missing {', '.join(missing)}")
    parts = [_parse_binary(spec, raw[m], f"{where}/{m}") for m in spec.binary_files[split]]
    names: list[str] | None = list(spec.default_names) if spec.default_names else None
    if spec.binary_names_file in raw:
        lines = [s.strip() for s in raw[spec.binary_names_file].decode("latin-1").splitlines() if s.strip()]
        if len(lines) == spec.num_classes:
            names = lines
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), names


def _has_all(folder: Path, files: tuple[str, ...]) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in files)


Reader = Callable[[], tuple[np.ndarray, np.ndarray, "list[str] | None"]]


def _find(spec: CifarSpec, split: str, d: Path) -> tuple[str, Path, Reader] | None:
    """The first usable copy in folder ``d``: (format, path, reader)."""
    py, binf = spec.python_files[split], spec.binary_files[split]
    for folder in (d / spec.python_dir, d if d.name == spec.python_dir else None):
        if folder is not None and _has_all(folder, py):
            return "python", folder, lambda f=folder: _read_python(spec, split, f, None)
    if (d / spec.python_tar).is_file():
        t = d / spec.python_tar
        return "python", t, lambda: _read_python(spec, split, None, t)
    for folder in (d / spec.binary_dir, d if d.name == spec.binary_dir else None):
        if folder is not None and _has_all(folder, binf):
            return "binary", folder, lambda f=folder: _read_binary(spec, split, f, None)
    if (d / spec.binary_tar).is_file():
        t = d / spec.binary_tar
        return "binary", t, lambda: _read_binary(spec, split, None, t)
    return None


def load_cifar(name: str, split: str = "test", root: str | Path | None = None, download_ok: bool = True
               ) -> ImageSet:
    """Load CIFAR-10 or CIFAR-100 as an :class:`ImageSet` of shape ``(N, 3, 32, 32)`` with labels."""
    if name not in SPECS:
        raise DataError(f"unknown CIFAR dataset '{name}'; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    if split not in spec.python_files:
        raise DataError(f"unknown split '{split}' for {name}; use one of {', '.join(spec.python_files)}")
    searched = search_dirs(name, root, _ALIASES[name])
    hit = None
    for _, d in searched:
        hit = _find(spec, split, d)
        if hit is not None:
            break
    if hit is None:
        why = ""
        if download_ok:
            try:
                t = download(name, URL_BASE + spec.python_tar, spec.python_md5)
                hit = ("python", t, lambda: _read_python(spec, split, None, t))
            except DataNotFoundError as e:
                why = str(e)
        if hit is None:
            raise DataNotFoundError(missing_message(
                f"Dataset '{name}' ({split} split)", searched, why, download_ok,
                [f"put {spec.python_tar} (or its extracted {spec.python_dir}/ folder, or the binary version "
                 f"{spec.binary_tar} / {spec.binary_dir}/) in DIR/{name}/ or DIR/ and pass --data-root DIR "
                 "or set L2OOD_DATA=DIR;",
                 f"download it from {URL_BASE}{spec.python_tar} (md5 {spec.python_md5});",
                 "allow network access so the checksummed download can run."]))
    fmt, path, reader = hit
    images, labels, names = reader()
    return ImageSet(
        name=name,
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        class_names=names,
        hflip=True,
        meta={"source": str(path), "format": f"cifar-{fmt}"},
    )
