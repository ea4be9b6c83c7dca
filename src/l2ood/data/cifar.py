"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from their official **binary** archives.

Source: https://www.cs.toronto.edu/~kriz/cifar.html

Binary version (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``): fixed-size records of 1
label byte (CIFAR-10) or 2 (coarse, fine; CIFAR-100) followed by 3072 pixel bytes, the red, green and
blue 32×32 planes in turn (row-major), so the pixels reshape directly to channels-first ``(3, 32, 32)``.

* CIFAR-10: ``cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin, batches.meta.txt}``;
* CIFAR-100: ``cifar-100-binary/{train.bin, test.bin, fine_label_names.txt}``.

Why only the binary version: the python version is a set of pickles, and reading a pickle safely
needs a pickle interpreter. l2ood 0.1.0 had a non-executing one, but crafted batches could still make
it recurse, hang or allocate gigabytes; the binary format needs no parser at all. Every read is
bounded: a batch file must be an exact multiple of the record size and at most the official size
(checked from the file system or the tar header before reading), and class-name files are at most
64 KiB. Finding only the python version gives a message saying which file to get instead.

Each folder is searched (see :mod:`l2ood.data.lookup`) for the extracted binary folder, then the
binary tarball (read in place, one pass, nothing extracted); a folder named like the extracted one
is accepted directly. If nothing is found, the binary tarball is downloaded (MD5-checked).
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

URL_BASE = "https://www.cs.toronto.edu/~kriz/"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CifarSpec:
    """The official file names, checksums and keys of one CIFAR data set."""

    name: str
    num_classes: int
    python_dir: str
    python_tar: str
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
    binary_dir="cifar-100-binary",
    binary_tar="cifar-100-binary.tar.gz",
    binary_md5="03b5dce01913d631647c71ecec9e9cb8",
    binary_files={"train": ("train.bin",), "test": ("test.bin",)},
    binary_names_file="fine_label_names.txt",
    label_bytes=2,
)

SPECS = {s.name: s for s in (CIFAR10, CIFAR100)}
_ALIASES = {"cifar10": ("cifar-10", "CIFAR10"), "cifar100": ("cifar-100", "CIFAR100")}


MAX_NAMES_BYTES = 64 * 1024


def _max_records(member: str) -> int:
    """The official number of records in one batch file (an upper bound for any copy)."""
    return 50_000 if member == "train.bin" else 10_000


def _check_size(spec: CifarSpec, member: str, size: int, where: str) -> None:
    if member == spec.binary_names_file:
        if size > MAX_NAMES_BYTES:
            raise DataFormatError(f"{where}: {size} bytes is too large for a class-name list")
        return
    rec = spec.label_bytes + 3072
    if size == 0 or size % rec or size // rec > _max_records(member):
        raise DataFormatError(f"{where}: {size} bytes is not 1 to {_max_records(member)} records of "
                              f"{rec} bytes (not a CIFAR binary batch)")


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
        for m in wanted:
            fp = folder / m
            if fp.is_file():
                _check_size(spec, m, fp.stat().st_size, str(fp))
                raw[m] = fp.read_bytes()
        where = str(folder)
    else:
        assert tar is not None
        try:
            with tarfile.open(tar, "r:*") as tf:
                for member in tf:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and member.name.count("/") <= 1:
                        _check_size(spec, base, member.size, f"{tar}:{member.name}")
                        f = tf.extractfile(member)
                        if f is not None:
                            with f:
                                raw[base] = f.read(member.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataFormatError(f"{tar}: not a readable tar archive ({e})") from e
        where = f"{tar}:{spec.binary_dir}"
    missing = [m for m in spec.binary_files[split] if m not in raw]
    if missing:
        raise DataFormatError(f"{where}: missing {', '.join(missing)}")
    for m in spec.binary_files[split]:
        _check_size(spec, m, len(raw[m]), f"{where}/{m}")
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
    binf = spec.binary_files[split]
    for folder in (d / spec.binary_dir, d if d.name == spec.binary_dir else None):
        if folder is not None and _has_all(folder, binf):
            return "binary", folder, lambda f=folder: _read_binary(spec, split, f, None)
    if (d / spec.binary_tar).is_file():
        t = d / spec.binary_tar
        return "binary", t, lambda: _read_binary(spec, split, None, t)
    return None


def _python_copies(spec: CifarSpec, searched: list[tuple[str, Path]]) -> list[Path]:
    out = []
    for _, d in searched:
        for p in (d / spec.python_tar, d / spec.python_dir):
            if p.exists():
                out.append(p)
    return out


def load_cifar(name: str, split: str = "test", root: str | Path | None = None, download_ok: bool = True
               ) -> ImageSet:
    """Load CIFAR-10 or CIFAR-100 as an :class:`ImageSet` of shape ``(N, 3, 32, 32)`` with labels."""
    if name not in SPECS:
        raise DataError(f"unknown CIFAR dataset '{name}'; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    if split not in spec.binary_files:
        raise DataError(f"unknown split '{split}' for {name}; use one of {', '.join(spec.binary_files)}")
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
                t = download(name, URL_BASE + spec.binary_tar, spec.binary_md5)
                hit = ("binary", t, lambda: _read_binary(spec, split, None, t))
            except DataNotFoundError as e:
                why = str(e)
        if hit is None:
            py = _python_copies(spec, searched)
            note = (f"found only the python (pickle) version ({', '.join(map(str, py))}), which l2ood does not "
                    f"read (pickles need a parser; the binary version needs none); get the binary version "
                    f"{spec.binary_tar} instead. " if py else "")
            raise DataNotFoundError(note + missing_message(
                f"Dataset '{name}' ({split} split)", searched, why, download_ok,
                [f"put {spec.binary_tar} (or its extracted {spec.binary_dir}/ folder) in DIR/{name}/ or DIR/ and "
                 "pass --data-root DIR or set L2OOD_DATA=DIR;",
                 f"download it from {URL_BASE}{spec.binary_tar} (md5 {spec.binary_md5});",
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
