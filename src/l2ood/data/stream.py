"""The streaming data path: photo-sized data sets that do not fit in memory.

A :class:`StreamingSet` holds only an index of the images (file paths, or offsets into tar shards) and
their labels; the pixels are read, decoded and augmented batch by batch in DataLoader worker
processes, so memory is bounded by ``workers × prefetch × batch`` images whatever the number of
images. Sources:

* ``imagefolder:DIR`` — torchvision ``ImageFolder`` layout (see :mod:`l2ood.data.folders`);
* ``imglist:LISTFILE[@IMAGEROOT]`` — OpenOOD v1.5 image lists (see :mod:`l2ood.data.imglist`);
* ``wds:PATH`` — tar shards in the WebDataset layout: members ``KEY.jpg`` (or ``.jpeg``/``.png``/
  ``.webp``/``.bmp``) with an optional integer label ``KEY.cls``, grouped by ``KEY`` (the member path up to
  the first dot of its file name). ``PATH`` is one ``.tar`` file, a folder of ``*.tar`` shards (or of
  split folders ``train/``, ``test/`` holding them), a glob (``shards/train-*.tar``) or a brace range
  (``shards/train-{000..099}.tar``). An optional ``classes.txt`` beside the shards names the classes.
  Shards must be uncompressed tar files: samples are read by offset (the index holds no pixels).

Transforms (PIL decode, pure functions of their seeds, so they give the same pixels in any worker):

* training (:func:`train_view`): torchvision's ``RandomResizedCrop(size, scale=(0.08, 1),
  ratio=(3/4, 4/3))`` + horizontal flip with probability ½. The crop box is drawn first; JPEG
  images are then decoded at the smallest DCT scale (1/1 … 1/8) that still leaves the crop at least
  ``size`` pixels (Pillow ``draft``), and crop + resize are one antialiased bilinear resample.
* evaluation (:func:`eval_view`): the run's recorded :class:`~l2ood.data.preprocess.Preprocessing`,
  the one path screened files take too (``fit="imagenet"``: shorter side → ``size·256/224``, centre crop).

Determinism (exact resume): the images of step ``s`` of epoch ``e`` are a pure function of
``(seed, e, s)`` — the epoch's permutation comes from ``(seed, e)``, the augmentation of image ``i``
from ``(seed, e, i)`` — independent of the number of workers, so a run killed mid-epoch and resumed
sees the same batches. Under ``torchrun`` with tar shards each rank owns the shards ``rank::world``
and reads only those (steps per epoch = the fewest any rank can fill); other sources split each
global batch into contiguous rank slices, as the in-memory path does.

Unreadable images never stop a training: they enter the batch as label ``-100`` (ignored by the loss)
and are counted in one warning per epoch. Shard headers are not trusted (:func:`index_tar`): sizes, offsets and
labels that cannot be right are a clear :class:`DataFormatError`, a truncated shard keeps the samples before the
cut (one warning), and only regular files are ever opened as shards.
"""

from __future__ import annotations

import glob
import hashlib
import io
import math
import os
import re
import stat
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ConfigError
from .errors import DataError, DataFormatError, DataNotFoundError
from .imageset import DataSource, Op
from .imglist import MAX_LABEL
from .preprocess import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, ImageReadError, _to_8bit, read_file_bytes
from .specs import canonical_spec

IGNORE_LABEL = -100  # a sample that could not be read: cross-entropy ignores it
TAR_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_TAR_MEMBERS = 20_000_000
MAX_SHARDS = 1_000_000  # names a brace range may expand to
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class StreamingSet:
    """An index of images read from disk on demand (see the module doc); the in-memory counterpart
    is :class:`~l2ood.data.ImageSet`.

    ``files[shard[i]]`` holds image ``i``; ``offsets[i] >= 0`` marks a member of a tar shard
    (``sizes[i]`` bytes at that offset), ``-1`` a plain image file."""

    name: str
    files: list[str]
    shard: np.ndarray  # (N,) int32 index into files
    offsets: np.ndarray  # (N,) int64, -1 for plain files
    sizes: np.ndarray  # (N,) int64 member sizes (-1 for plain files)
    labels: Tensor | None
    size: tuple[int, int] = (224, 224)
    class_names: list[str] | None = None
    hflip: bool = True
    source: DataSource | None = None
    keys: list[str] = field(default_factory=list)  # per image: relative path or tar key (fingerprint)
    meta: dict[str, object] = field(default_factory=dict)
    view: str = "imagenet"  # the named fit of the evaluation view (l2ood.data.transforms.FIT_CONFIGS)
    streamed: ClassVar[bool] = True  # an :class:`~l2ood.data.source.ImageSource` read from disk batch by batch

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def is_tar(self) -> bool:
        return bool(len(self.offsets)) and bool(self.offsets[0] >= 0)

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None or len(self.labels) == 0:
            return 0
        return int(self.labels.max().item()) + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, int(self.size[0]), int(self.size[1])

    def with_size(self, size: tuple[int, int]) -> StreamingSet:
        return replace(self, size=(int(size[0]), int(size[1])))

    def take(self, idx: Tensor | np.ndarray, name: str | None = None, op: Op | None = None) -> StreamingSet:
        """The images at ``idx`` (in that order)."""
        i = np.asarray(idx, dtype=np.int64)
        return replace(self, name=name or self.name, shard=self.shard[i], offsets=self.offsets[i],
                       sizes=self.sizes[i], labels=None if self.labels is None else self.labels[torch.as_tensor(i)],
                       keys=[self.keys[j] for j in i] if self.keys else [],
                       source=None if self.source is None or op is None else self.source.then(op))

    def subset(self, n: int | None, seed: int = 0) -> StreamingSet:
        """A seeded subset of ``n`` images — the same indices :meth:`ImageSet.subset` draws."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ConfigError(f"subset size must be >= 1, got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return self.take(idx, op=Op("subset", int(n), int(seed)))

    def split(self, n_holdout: int, seed: int = 0) -> tuple[StreamingSet, StreamingSet]:
        """Seeded ``(rest, holdout)`` — the same split :meth:`ImageSet.split` makes."""
        if not 0 < n_holdout < len(self):
            raise ConfigError(f"holdout size must be in (0, {len(self)}), got {n_holdout}")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        hold, rest = perm[:n_holdout].sort().values, perm[n_holdout:].sort().values
        return (self.take(rest, op=Op("holdout", int(n_holdout), int(seed), "rest")),
                self.take(hold, f"{self.name}-holdout", Op("holdout", int(n_holdout), int(seed), "holdout")))

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i`` (raises :class:`ImageReadError`)."""
        path = self.files[int(self.shard[i])]
        off = int(self.offsets[i])
        if off < 0:
            return read_file_bytes(path)
        size = int(self.sizes[i])
        if size < 0:
            raise ImageReadError(f"{path}: corrupt index (member size {size})")
        if size > DEFAULT_MAX_FILE_BYTES:
            raise ImageReadError(f"tar member too large: {size} bytes")
        try:
            with open(path, "rb") as f:
                f.seek(off)
                data = f.read(size)
        except OSError as e:
            raise ImageReadError(f"cannot read {path}: {e.strerror or e}") from None
        if len(data) != size:
            raise ImageReadError(f"{path}: truncated shard (member at offset {off} cut short)")
        return data

    def describe_item(self, i: int) -> str:
        path = self.files[int(self.shard[i])]
        return path if self.offsets[i] < 0 else f"{path}:{self.keys[i] if self.keys else i}"

    def formatted(self, channels: int, size: tuple[int, int]) -> StreamingSet:  # noqa: ARG002
        """Read at ``size`` (decoded as RGB; the model's channels are taken from the decoded views)."""
        return self.with_size(size)

    def cache_key(self, fit: str) -> str:
        """A short key of the index and the view for caching forward passes."""
        return f"s{self.fingerprint()[:15]}{fit}"

    def batches(self, batch_size: int, *, fit: str = "imagenet", progress: bool = False,
                desc: str | None = None) -> Iterator[tuple[Tensor, Tensor | None, list[str]]]:
        """``(uint8 evaluation views, labels or None, unreadable items)`` in order; unreadable images are left out
        of the batch and named in the third element."""
        for x, y, err in extract_views(self, batch_size=batch_size, fit=fit, progress=progress,
                                       desc=desc or f"extract {self.name}"):
            keep = y != IGNORE_LABEL
            yield x[keep], None if self.labels is None else y[keep], err

    def item_digests(self) -> set[str] | None:
        """``None``: streamed pixels are not hashed (sets are told apart by name)."""
        return None

    def in_memory(self, n: int | None = None, seed: int = 123, fit: str = "imagenet") -> Any:
        """A seeded subset of ``n`` images (all when ``None``) decoded into an in-memory ImageSet."""
        return materialize(self.subset(n, seed=seed), fit=fit)

    def fingerprint(self) -> str:
        """SHA-1 of the index (relative paths or tar keys, member sizes and labels) — streamed pixels are
        not hashed, so this detects added, removed, relabelled or re-packed images, not edited pixels."""
        h = hashlib.sha1()
        labels = None if self.labels is None else self.labels.tolist()
        for i in range(len(self)):
            lab = "" if labels is None else labels[i]
            h.update(f"{self.keys[i] if self.keys else i}\t{int(self.sizes[i])}\t{lab}\n".encode(
                "utf-8", "surrogateescape"))
        return h.hexdigest()

    def owned_by(self, rank: int, world: int) -> np.ndarray:
        """Indices of the images in the shards that ``rank`` of ``world`` owns (shards ``rank::world``)."""
        n_shards = len(self.files)
        if n_shards < world:
            raise ConfigError(f"{self.name}: {n_shards} shard(s) for {world} ranks; each rank needs one at least "
                              "(write more, smaller shards)")
        return np.flatnonzero(self.shard % world == rank)


# ------------------------------------------------------------------------------------------------ scanning
def _plain(name: str, files: Sequence[Path], labels: Sequence[int] | None, class_names: Sequence[str] | None,
           root: Path, size: tuple[int, int]) -> StreamingSet:
    n = len(files)
    return StreamingSet(
        name=name, files=[str(f) for f in files], shard=np.arange(n, dtype=np.int64),
        offsets=np.full(n, -1, dtype=np.int64), sizes=np.full(n, -1, dtype=np.int64),
        labels=None if labels is None else torch.as_tensor(list(labels), dtype=torch.long),
        size=size, class_names=list(class_names) if class_names is not None else None,
        keys=[os.path.relpath(f, root) for f in files])


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → ``a-000.tar``, ``a-001.tar``, ``a-002.tar`` (at most :data:`MAX_SHARDS` names)."""
    n = 1
    for lo, hi in re.findall(r"\{(\d+)\.\.(\d+)\}", pattern):
        if max(len(lo), len(hi)) > 18:
            raise DataFormatError(f"{pattern[:200]}: a brace range bound has more than 18 digits")
        n *= max(0, int(hi) - int(lo) + 1)
        if n > MAX_SHARDS:
            raise DataFormatError(f"{pattern}: the brace ranges name more than {MAX_SHARDS} shards")
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    a, b = m.group(1), m.group(2)
    width = len(a)
    out: list[str] = []
    for k in range(int(a), int(b) + 1):
        out += _expand(pattern[: m.start()] + str(k).zfill(width) + pattern[m.end():])
    return out


def shard_paths(path: str, split: str | None = None) -> list[Path]:
    """The tar shards a ``wds:`` path names (see the module doc), sorted."""
    p = Path(path).expanduser()
    if os.path.isdir(p):  # never raises (a pattern may be longer than any file name)
        from .folders import split_folder

        p = split_folder(p, split)
        files = sorted(q for q in p.iterdir() if q.suffix == ".tar" and q.is_file())
        if not files:
            raise DataNotFoundError(f"no .tar shards in {p}")
        return files
    if os.path.isfile(p):
        return [p]
    # only regular files: a FIFO or device matching the pattern would block or never end
    files = sorted({Path(f) for pat in _expand_braces(str(p)) for f in glob.glob(pat) if os.path.isfile(f)})
    if not files:
        raise DataNotFoundError(f"no tar shards match {path}")
    return files


def _tar_shard_size(path: Path) -> int:
    """The size of a shard that is a regular file (never opens FIFOs or devices, which could block forever)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataNotFoundError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataFormatError(f"{path}: not a regular file (a tar shard must be a plain .tar file)")
    return st.st_size


def _parse_label(path: Path, name: str, raw: bytes) -> int:
    """The integer label of a ``.cls`` member: ``-1`` (unlabelled) or ``0 ≤ label <`` :data:`MAX_LABEL`."""
    try:
        label = int(raw.decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError included
        raise DataFormatError(f"{path}: {name} is not an integer label ({raw[:32]!r})") from None
    if not -1 <= label < MAX_LABEL:
        raise DataFormatError(f"{path}: {name} holds the label {raw.decode('ascii').strip()[:30]}, outside "
                              f"[-1, {MAX_LABEL}) (-1 marks an unlabelled sample)")
    return label


def index_tar(path: Path) -> tuple[list[str], list[int], list[int], list[int | None]]:
    """``(keys, offsets, sizes, labels)`` of the samples of one WebDataset shard (headers only; ``.cls``
    members are read). Samples without an image member are skipped.

    Hostile headers never crash or hang the index: a negative or unparsable size, a label that is not an integer
    in ``[-1, MAX_LABEL)`` and a shard that is not a regular file are :class:`DataFormatError`; a member whose data
    would run past the end of the file (a truncated shard, or a size field larger than the file), or a corrupt
    header after the first, ends the index of that shard with one warning (the samples before it are kept), as
    unreadable images are left out rather than stopping a training. Sparse members (not readable by offset) are
    skipped with the same warning."""
    file_size = _tar_shard_size(path)
    groups: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    try:
        with tarfile.open(path, "r:") as tf:
            for count, m in enumerate(tf):
                if count >= MAX_TAR_MEMBERS:
                    raise DataFormatError(f"{path}: more than {MAX_TAR_MEMBERS} members")
                if m.size < 0 or m.offset_data < 0:
                    # checked before the next header is read: tarfile would step backwards (and loop)
                    raise DataFormatError(f"{path}: member {m.name!r} has a corrupt header (size {m.size} at offset "
                                          f"{m.offset_data})")
                if m.issparse():  # its size is the expanded one; tarfile steps over the stored blocks itself
                    problems.append(f"sparse member {m.name!r} left out (not readable by offset)")
                    continue
                has_data = m.isreg() or m.type not in tarfile.SUPPORTED_TYPES  # tarfile steps over m.size bytes
                if has_data and m.offset_data + m.size > file_size:
                    problems.append(f"member {m.name!r} claims {m.size} bytes at offset {m.offset_data}, past the "
                                    f"end of the {file_size}-byte file (truncated shard or corrupt size field); "
                                    "it and any members after it are left out")
                    break  # the next header would be read past the end of the file
                if not m.isfile():
                    continue
                d, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot or not stem:
                    continue
                key = f"{d}/{stem}" if d else stem
                g = groups.setdefault(key, {})
                ext = "." + ext.lower()
                if ext in TAR_IMAGE_EXTS and "img" not in g:
                    g["img"] = (m.offset_data, m.size)
                elif ext == ".cls":
                    if m.size > 32:
                        raise DataFormatError(f"{path}: {m.name} is not an integer label ({m.size} bytes)")
                    f = tf.extractfile(m)
                    g["cls"] = _parse_label(path, m.name, f.read(32) if f is not None else b"")
            else:  # tarfile ends its iteration silently at a corrupt header after the first: say so
                with open(path, "rb") as fh:
                    fh.seek(tf.offset)
                    rest = fh.read(tarfile.BLOCKSIZE)
                if rest.strip(b"\0"):
                    problems.append(f"corrupt or truncated tar header at byte {tf.offset}; the members after it are "
                                    "left out")
    except tarfile.ReadError as e:
        raise DataFormatError(f"{path}: not an uncompressed tar shard, or a corrupt one ({e}); WebDataset shards are "
                              "read by offset, so they must be plain .tar files") from None
    except (tarfile.TarError, ValueError, OverflowError, EOFError) as e:  # e.g. a size field beyond any file
        raise DataFormatError(f"{path}: corrupt tar shard ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise DataNotFoundError(f"{path}: cannot read ({e.strerror or e})") from None
    keys, offs, sizes, labels = [], [], [], []
    for key, g in groups.items():
        if "img" not in g:
            continue
        keys.append(key)
        offs.append(int(g["img"][0]))
        sizes.append(int(g["img"][1]))
        labels.append(g.get("cls"))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        warnings.warn(f"{path}: {problems[0]}{more}; {len(keys)} sample(s) indexed", stacklevel=3)
    return keys, offs, sizes, labels


def _tar_set(name: str, shards: list[Path], size: tuple[int, int]) -> StreamingSet:
    keys: list[str] = []
    shard_ids: list[int] = []
    offs: list[int] = []
    sizes: list[int] = []
    labels: list[int | None] = []
    for s, p in enumerate(shards):
        k, o, z, lab = index_tar(p)
        keys += [f"{p.name}:{x}" for x in k]
        shard_ids += [s] * len(k)
        offs += o
        sizes += z
        labels += lab
    if not keys:
        raise DataFormatError(f"{name}: no samples with an image member ({', '.join(TAR_IMAGE_EXTS)}) in "
                              f"{len(shards)} shard(s)")
    has = all(lab is not None and lab >= 0 for lab in labels)
    if any(lab is not None for lab in labels) and not has:
        warnings.warn(f"{name}: some samples have no .cls label (or a negative one): the set is read unlabelled",
                      stacklevel=3)
    names_file = shards[0].parent / "classes.txt"
    class_names = None
    if names_file.is_file() and names_file.stat().st_size < 64 * 1024 * 1024:
        try:
            text = names_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataFormatError(f"{names_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        class_names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lab_t = torch.as_tensor(labels, dtype=torch.long) if has else None
    if lab_t is not None and class_names is not None and int(lab_t.max()) >= len(class_names):
        raise DataFormatError(f"{names_file}: {len(class_names)} class names, but a label {int(lab_t.max())}")
    return StreamingSet(name=name, files=[str(p) for p in shards], shard=np.asarray(shard_ids, dtype=np.int64),
                        offsets=np.asarray(offs, dtype=np.int64), sizes=np.asarray(sizes, dtype=np.int64),
                        labels=lab_t, size=size, class_names=class_names, keys=keys)


def open_stream(spec: str, split: str = "train", *, root: str | Path | None = None,
                size: tuple[int, int] = (224, 224)) -> StreamingSet:
    """Index a data set for streaming (``imagefolder:``, ``imglist:`` or ``wds:`` spec); reads no pixels."""
    from .folders import scan_image_folder, split_folder
    from .imglist import _root_candidates, parse_imglist_spec, read_imglist

    size = (int(size[0]), int(size[1]))
    if spec.startswith("imagefolder:"):
        given = Path(spec[len("imagefolder:"):]).expanduser()
        folder = split_folder(given, split)
        files, labels, names = scan_image_folder(folder)
        name = given.absolute().name
        ds = _plain(name, files, labels, names, folder, size)
    elif spec.startswith("imglist:"):
        list_file, image_root = parse_imglist_spec(spec[len("imglist:"):])
        entries = read_imglist(list_file)
        cands = [image_root] if image_root is not None else _root_candidates(list_file, root)
        img_root = next((c for c in cands if (c / entries[0][0]).is_file()), None)
        if img_root is None:
            raise DataNotFoundError(f"images of {list_file} not found (first listed image {entries[0][0]} looked for "
                                    f"under: {', '.join(map(str, cands))}); pass imglist:LISTFILE@IMAGEROOT")
        has = all(lab is not None and lab >= 0 for _, lab in entries)
        ds = _plain(list_file.stem, [img_root / r for r, _ in entries],
                    [int(lab) for _, lab in entries] if has else None, None,  # type: ignore[arg-type]
                    img_root, size)
    elif spec.startswith("wds:"):
        path = spec[len("wds:"):]
        shards = shard_paths(path, split)
        ds = _tar_set(Path(path).expanduser().absolute().name or "shards", shards, size)
    else:
        raise DataError(f"'{spec}' cannot be streamed: streaming reads imagefolder:DIR, imglist:LIST[@ROOT] and "
                        "wds:SHARDS (tar) sources; other data sets are small enough for memory (--data-path memory)")
    ds.source = DataSource(canonical_spec(spec), split, None if root is None else str(Path(root).absolute()),
                           stream=True)
    ds.meta = {"format": spec.split(":", 1)[0], "streamed": True}
    return ds


# ------------------------------------------------------------------------------------------------ transforms
def _seed(*parts: int) -> int:
    h = 0xCBF29CE484222325
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


def rrc_box(w: int, h: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(left, top, crop_w, crop_h)`` of torchvision's ``RandomResizedCrop`` algorithm: up to 10 draws of
    area ∈ scale·(w·h) and log-uniform aspect ∈ ratio; else the centred crop of the clamped aspect."""
    area = w * h
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def train_view(data: bytes, size: tuple[int, int], rng: np.random.Generator, hflip: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One training view: random resized crop (+ flip) of an encoded image → uint8 ``(3, H, W)``."""
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise ImageReadError(f"image too large: {w}×{h} pixels > limit {max_pixels}")
        left, top, cw, ch = rrc_box(w, h, rng)
        flip = hflip and rng.random() < 0.5
        th, tw = size
        if im.format == "JPEG":  # decode at the smallest DCT scale that keeps the crop >= the output
            im.draft(im.mode if im.mode in ("L", "RGB") else "RGB",
                     (math.ceil(w * tw / cw), math.ceil(h * th / ch)))
        sx, sy = im.size[0] / w, im.size[1] / h
        im.load()
        rgb: Image.Image = im if im.mode == "RGB" else Image.fromarray(_to_8bit(im)).convert("RGB")
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        out = rgb.resize((tw, th), Image.Resampling.BILINEAR, box=box)
        a = np.asarray(out)
        if flip:
            a = a[:, ::-1]
        return np.ascontiguousarray(a.transpose(2, 0, 1))
    except ImageReadError:
        raise
    except Exception as e:  # Pillow raises many types on corrupt data
        raise ImageReadError(f"corrupt or unreadable image: {type(e).__name__}: {e}") from None


def eval_view(data: bytes, size: tuple[int, int], fit: str = "imagenet") -> np.ndarray:
    """One evaluation view through the recorded preprocessing (:func:`l2ood.data.preprocess.to_model_input`)."""
    from .preprocess import to_model_input

    return to_model_input(data, 3, size, fit)[0].numpy()


class _Views(torch.utils.data.Dataset):
    """Item ``(i, epoch_seed)`` → ``(uint8 (3, H, W), label)``; ``epoch_seed < 0``: the evaluation view."""

    def __init__(self, ds: StreamingSet, fit: str, hflip: bool) -> None:
        self.ds, self.fit, self.hflip = ds, fit, hflip

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, str]:
        i, epoch_seed = key
        label = int(self.ds.labels[i]) if self.ds.labels is not None else -1
        try:
            data = self.ds.read(i)
            if epoch_seed >= 0:
                a = train_view(data, self.ds.size, np.random.default_rng(_seed(epoch_seed, i)), self.hflip)
            else:
                a = eval_view(data, self.ds.size, self.fit)
            return torch.from_numpy(a), label, ""
        except (ImageReadError, DataError) as e:
            return torch.zeros(3, *self.ds.size, dtype=torch.uint8), IGNORE_LABEL, f"{self.ds.describe_item(i)}: {e}"


_LIBC: Any = None
_BATCHES = 0
TRIM_EVERY = 8  # batches between heap trims in a worker


def _trim_heap() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Called by each DataLoader worker every :data:`TRIM_EVERY` batches. Decoded photos are large buffers of
    varying size; glibc raises its mmap threshold after each large free, so later decodes come from the heap,
    which then fragments: without trimming a worker's memory grows with every image it decodes (measured:
    125 → 680 MiB over 20 000 photos of 375×500 px); with it the workers stay flat (131 MiB). Trimming after
    every batch, or fixing the threshold with ``mallopt``, also bounds memory but costs throughput in page
    faults (a fifth, for ``mallopt``)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _LIBC = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _collate(batch: list[tuple[Tensor, int, str]]) -> tuple[Tensor, Tensor, list[str]]:
    in_worker = torch.utils.data.get_worker_info() is not None
    # default_collate stacks straight into shared memory inside a worker (no extra copy on the way out)
    images = torch.utils.data.default_collate([b[0] for b in batch])
    out = images, torch.as_tensor([b[1] for b in batch], dtype=torch.long), [b[2] for b in batch if b[2]]
    global _BATCHES
    if in_worker:
        _BATCHES += 1
        if _BATCHES % TRIM_EVERY == 0:
            _trim_heap()
    return out


def default_workers() -> int:
    """DataLoader workers when not given: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def loader(ds: StreamingSet, batches: Sequence[Sequence[tuple[int, int]]], *, workers: int | None = None,
           fit: str = "imagenet", hflip: bool = True,
           pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
    """Batches of ``(uint8 images, labels, read errors)`` for the given lists of ``(index, epoch_seed)``,
    decoded in ``workers`` processes (0: in this process)."""
    w = default_workers() if workers is None else workers
    dl = torch.utils.data.DataLoader(
        _Views(ds, fit, hflip), batch_sampler=batches, num_workers=w, collate_fn=_collate,  # type: ignore[arg-type]
        pin_memory=pin_memory, prefetch_factor=2 if w else None, persistent_workers=False)
    yield from dl


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation seed of an epoch (image ``i``'s view is drawn from ``(epoch_seed, i)``)."""
    return _seed(seed, epoch, 0x5EED) & 0x7FFFFFFFFFFFFFFF


def eval_batches(n: int, batch_size: int) -> list[list[tuple[int, int]]]:
    return [[(i, -1) for i in range(s, min(n, s + batch_size))] for s in range(0, n, batch_size)]


def sample_stats(ds: StreamingSet, n: int = 512, seed: int = 0, fit: str = "imagenet",
                 workers: int | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean/std (on the [0, 1] scale) of the evaluation views of a seeded sample of ``n`` images."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[: min(n, len(ds))].tolist()
    s1 = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x, y, _ in loader(ds, [[(i, -1) for i in idx[k:k + 64]] for k in range(0, len(idx), 64)],
                          workers=workers, fit=fit):
        x = x[y != IGNORE_LABEL].double() / 255.0
        s1 += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise DataFormatError(f"{ds.name}: none of the {len(idx)} sampled images could be read")
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def extract_views(ds: StreamingSet, *, batch_size: int = 256, fit: str = "imagenet", workers: int | None = None,
                  progress: bool = False, desc: str | None = None) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
    """The evaluation views of every image of ``ds`` in order, batch by batch (with a progress bar)."""
    from ..progress import progress as progress_bar

    batches = eval_batches(len(ds), batch_size)
    it = loader(ds, batches, workers=workers, fit=fit)
    yield from progress_bar(it, total=len(batches), desc=desc or f"read {ds.name}", enabled=progress, leave=False,
                            unit="batch")


def materialize(ds: StreamingSet, fit: str = "resize", workers: int | None = None) -> Any:
    """Decode a (small) streamed set into an in-memory :class:`~l2ood.data.ImageSet` at ``ds.size``;
    unreadable images are skipped with one warning."""
    from .imageset import ImageSet

    images, labels, errors = [], [], []
    for x, y, err in extract_views(ds, fit=fit, workers=workers):
        keep = y != IGNORE_LABEL
        images.append(x[keep])
        labels.append(y[keep])
        errors += err
    if errors:
        warnings.warn(f"{ds.name}: skipped {len(errors)} unreadable image(s) of {len(ds)} (first: {errors[0]})",
                      stacklevel=2)
    if not images or sum(len(t) for t in images) == 0:
        raise DataFormatError(f"{ds.name}: none of the {len(ds)} images could be decoded")
    return ImageSet(ds.name, torch.cat(images), torch.cat(labels) if ds.labels is not None else None,
                    ds.class_names, ds.hflip, dict(ds.meta), None, view=fit)


def write_shards(files: Sequence[str | Path], labels: Sequence[int] | None, out_dir: str | Path, *,
                 per_shard: int = 1000, prefix: str = "shard", class_names: Sequence[str] | None = None) -> list[Path]:
    """Pack image files into WebDataset tar shards ``out_dir/PREFIX-000000.tar`` … (``KEY.jpg`` + ``KEY.cls``),
    in the given order; ``class_names`` go to ``out_dir/classes.txt``. Returns the shard paths."""
    import time

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if per_shard < 1:
        raise ConfigError(f"per_shard must be >= 1, got {per_shard}")
    paths: list[Path] = []
    now = time.time()
    for s in range(0, len(files), per_shard):
        path = out / f"{prefix}-{s // per_shard:06d}.tar"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(s, min(len(files), s + per_shard)):
                f = Path(files[i])
                key = f"{i:09d}"
                data = read_file_bytes(f)
                members = [(f"{key}{f.suffix.lower()}", data)]
                if labels is not None:
                    members.append((f"{key}.cls", str(int(labels[i])).encode()))
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(payload), int(now), 0o644
                    tf.addfile(info, io.BytesIO(payload))
        os.replace(tmp, path)
        paths.append(path)
    if class_names is not None:
        (out / "classes.txt").write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    return paths
