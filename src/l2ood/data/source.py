"""One image source for images in memory and images streamed from disk, and the one place that chooses.

:class:`ImageSource` is what every consumer of images sees — training, evaluation, calibration, tracking and the
bench: a named, optionally labelled, seeded-selectable set (``subset``/``split``, recorded in its
:class:`~l2ood.data.DataSource`) that can be brought to a model's input format (``formatted``), identified
(``fingerprint``, ``cache_key``) and read in order, batch by batch, as uint8 tensors (``batches``). Two classes
implement it:

* :class:`~l2ood.data.ImageSet`: decoded pixels in memory (``streamed = False``);
* :class:`~l2ood.data.stream.StreamingSet`: an index of files or tar members, decoded on demand in worker
  processes (``streamed = True``).

:func:`choose_data_path` is the only function that decides between them and :func:`open_images` the only way a
data set spec is opened for either: image folders, image lists and tar shards (:data:`STREAMABLE`) may be
streamed; everything else is decoded into memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from ..errors import ConfigError
from .errors import DataError
from .imageset import DataSource
from .registry import load_dataset

STREAMABLE = ("imagefolder:", "imglist:", "wds:")  # specs that can be read batch by batch from disk
DATA_PATHS = ("auto", "memory", "stream")  # what a user chooses (--data-path)
_PATHS = (*DATA_PATHS, "prefer-stream")  # and what l2ood asks for OoD sets of streamed models
STREAM_MIN_SIDE = 128  # auto: images at least this large are streamed
STREAM_BUDGET_GIB = 4  # auto: data sets larger than this once decoded are streamed
DEFAULT_STREAM_SIZE = (224, 224)


@runtime_checkable
class ImageSource(Protocol):
    """A set of images in memory or on disk (see the module doc)."""

    name: str
    labels: Tensor | None
    class_names: list[str] | None
    source: DataSource | None
    hflip: bool
    view: str  # the named fit (l2ood.data.transforms.FIT_CONFIGS) through which files become these images
    streamed: ClassVar[bool]

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def num_classes(self) -> int: ...

    def subset(self, n: int | None, seed: int = 0) -> Any: ...

    def split(self, n_holdout: int, seed: int = 0) -> tuple[Any, Any]: ...

    def formatted(self, channels: int, size: tuple[int, int]) -> Any: ...

    def fingerprint(self) -> str: ...

    def cache_key(self, fit: str) -> str: ...

    def batches(self, batch_size: int, *, fit: str = ..., progress: bool = False,
                desc: str | None = None) -> Iterator[tuple[Tensor, Tensor | None, list[str]]]: ...

    def describe_item(self, i: int) -> str: ...

    def item_digests(self) -> set[str] | None: ...

    def in_memory(self, n: int | None = None, seed: int = 123, fit: str = ...) -> Any: ...


def choose_data_path(spec: str, data_path: str = "auto", size: tuple[int, int] | None = None,
                     n_images: int | None = None) -> str:
    """``"memory"`` or ``"stream"`` for the data set ``spec``.

    ``memory``/``stream``: as asked (``stream`` only for :data:`STREAMABLE` specs); ``prefer-stream``: streamed
    whenever the spec can be; ``auto``: tar shards, images of at least :data:`STREAM_MIN_SIDE` px and sets over
    :data:`STREAM_BUDGET_GIB` GiB once decoded (``n_images`` at ``size``) are streamed, everything else is
    decoded into memory."""
    if data_path not in _PATHS:
        raise ConfigError(f"data path must be one of {DATA_PATHS}, got {data_path!r}")
    streamable = spec.startswith(STREAMABLE)
    if data_path == "stream" and not streamable:
        raise ConfigError(f"--data-path stream reads {', '.join(s + '...' for s in STREAMABLE)} sources; "
                          f"'{spec}' is loaded into memory (--data-path memory)")
    if data_path == "prefer-stream":
        return "stream" if streamable else "memory"
    if data_path != "auto":
        return data_path
    if not streamable:
        return "memory"
    if spec.startswith("wds:") or (size is not None and min(size) >= STREAM_MIN_SIDE):
        return "stream"
    side = size or (32, 32)
    if n_images is not None and n_images * 3 * side[0] * side[1] > STREAM_BUDGET_GIB * 2**30:
        return "stream"
    return "memory"


def open_images(spec: str, split: str = "test", *, root: str | Path | None = None,
                size: tuple[int, int] | None = None, channels: int | None = None, n: int | None = None,
                seed: int = 0, data_path: str = "memory") -> ImageSource:
    """Open the data set ``spec`` in memory or as a stream, as :func:`choose_data_path` decides for ``data_path``.

    In memory: :func:`l2ood.data.load_dataset` (converted to ``channels``/``size`` when given). Streamed: an index
    read at ``size`` (default 224×224). ``n`` takes a seeded subset (seed ``seed``) either way."""
    if data_path != "memory" and spec.startswith(STREAMABLE):
        from .stream import open_stream

        index = open_stream(spec, split, root=root, size=size or DEFAULT_STREAM_SIZE)
        if choose_data_path(spec, data_path, size, len(index)) == "stream":
            return index.subset(n, seed=seed)
    else:
        choose_data_path(spec, data_path, size)  # the errors for bad combinations
    return load_dataset(spec, split, root=root, n=n, seed=seed, size=size, channels=channels)


def load_source(source: DataSource, *, root: str | Path | None = None,
                size: tuple[int, int] | None = None) -> ImageSource:
    """Load the exact images a :class:`~l2ood.data.DataSource` describes (``root`` overrides the recorded data
    root): an :class:`~l2ood.data.ImageSet`, or for a streamed source (``source.stream``) a
    :class:`~l2ood.data.stream.StreamingSet` (an index; pixels are read when iterated). The recorded
    operations (seeded subsets, holdout splits) are replayed in order."""
    where = root if root is not None else source.root
    ds: Any = open_images(source.spec, source.split, root=where, size=size,
                          data_path="stream" if source.stream else "memory")
    for op in source.ops:
        if op.kind == "subset":
            ds = ds.subset(op.n, seed=op.seed)
        elif op.kind == "holdout":
            if not 0 < op.n < len(ds):
                raise DataError(f"{source.spec}: the recorded holdout of {op.n} images does not fit the "
                                f"{len(ds)} images found now (the data changed since the run was trained)")
            rest, hold = ds.split(op.n, seed=op.seed)
            ds = hold if op.part == "holdout" else rest
        else:
            raise DataError(f"{source.spec}: unknown data operation '{op.kind}'")
    return ds


__all__ = ["DATA_PATHS", "STREAMABLE", "ImageSource", "choose_data_path", "load_source", "open_images"]
