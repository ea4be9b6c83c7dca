"""The in-memory image container used everywhere in l2ood.

Images stay uint8, channels-first ``(N, C, H, W)``, on whatever device they were put on; they are
converted to float only batch by batch (see :mod:`l2ood.data.transforms`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..progress import progress as progress_bar
from .transforms import convert_format


@dataclass(frozen=True)
class Op:
    """One seeded selection applied after loading: ``holdout`` (split off ``n`` images with ``seed``,
    keep ``part`` = ``"rest"`` or ``"holdout"``) or ``subset`` (a seeded subset of ``n``)."""

    kind: str
    n: int
    seed: int
    part: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.kind, "n": self.n, "seed": self.seed}
        if self.kind == "holdout":
            d["part"] = self.part
        return d


@dataclass(frozen=True)
class DataSource:
    """How to load an :class:`ImageSet` again: ``load_dataset(spec, split, root=root)`` followed by
    ``ops`` in order. Recorded in a run so its exact training images can be rebuilt."""

    spec: str
    split: str
    root: str | None = None
    ops: tuple[Op, ...] = ()
    stream: bool = False  # read from disk batch by batch (:mod:`l2ood.data.stream`), not loaded into memory

    def then(self, op: Op) -> DataSource:
        return replace(self, ops=(*self.ops, op))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec, "split": self.split, "root": self.root,
                             "ops": [o.to_dict() for o in self.ops]}
        if self.stream:
            d["stream"] = True
        return d

    def describe(self) -> str:
        parts = [f"{self.spec} ({self.split})"]
        for o in self.ops:
            parts.append((f"held-out n={o.n} seed={o.seed}" if o.part == "holdout"
                          else f"minus held-out n={o.n} seed={o.seed}") if o.kind == "holdout"
                         else f"subset n={o.n} seed={o.seed}")
        return ", ".join(parts)



@dataclass
class ImageSet:
    """A named set of uint8 images ``(N, C, H, W)`` with optional integer labels ``(N,)``."""

    name: str
    images: Tensor
    labels: Tensor | None = None
    class_names: list[str] | None = None
    hflip: bool = False  # whether horizontal flips are a sensible augmentation for this data
    meta: dict[str, object] = field(default_factory=dict)
    source: DataSource | None = None  # how to load these exact images again (None: built in memory)
    view: str = "resize"  # the named fit (l2ood.data.transforms.FIT_CONFIGS) that made files these pixels
    streamed: ClassVar[bool] = False  # an :class:`~l2ood.data.source.ImageSource` held in memory

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8:
            raise TypeError(f"{self.name}: images must be uint8, got {self.images.dtype}")
        if self.images.ndim != 4:
            raise ConfigError(f"{self.name}: images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels is not None:
            if self.labels.ndim != 1 or len(self.labels) != len(self.images):
                raise ConfigError(
                    f"{self.name}: labels must be (N,) with N={len(self.images)}, "
                    f"got {tuple(self.labels.shape)}"
                )
            self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (from ``class_names`` or the largest label + 1)."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None or len(self.labels) == 0:
            return 0
        return int(self.labels.max().item()) + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """A seeded random subset of ``n`` images (the whole set when ``n`` is None or ≥ len)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ConfigError(f"subset size must be >= 1, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return ImageSet(
            name=self.name,
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            hflip=self.hflip,
            meta=dict(self.meta),
            source=None if self.source is None else self.source.then(Op("subset", int(n), int(seed))),
            view=self.view,
        )

    def split(self, n_holdout: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Seeded split into ``(rest, holdout)`` with ``len(holdout) == n_holdout``."""
        if not 0 < n_holdout < len(self):
            raise ConfigError(f"holdout size must be in (0, {len(self)}), got {n_holdout}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        hold, rest = perm[:n_holdout].sort().values, perm[n_holdout:].sort().values

        def take(idx: Tensor, suffix: str, part: str) -> ImageSet:
            return ImageSet(
                name=f"{self.name}{suffix}",
                images=self.images[idx],
                labels=None if self.labels is None else self.labels[idx],
                class_names=self.class_names,
                hflip=self.hflip,
                meta=dict(self.meta),
                source=None if self.source is None else self.source.then(
                    Op("holdout", int(n_holdout), int(seed), part)),
                view=self.view,
            )

        return take(rest, "", "rest"), take(hold, "-holdout", "holdout")

    # ------------------------------------------------------------------ the image-source protocol (data.source)
    def formatted(self, channels: int, size: tuple[int, int]) -> ImageSet:
        """The images converted to ``channels`` and ``size`` (:func:`l2ood.data.transforms.convert_format`;
        the set itself when nothing changes)."""
        images = convert_format(self.images, channels, size)
        if images is self.images:
            return self
        return ImageSet(self.name, images, self.labels, self.class_names, self.hflip, dict(self.meta), self.source,
                        self.view)

    def fingerprint(self) -> str:
        """SHA-1 of the pixels (shape included): identifies the exact images (:func:`pixel_fingerprint`)."""
        return pixel_fingerprint(self.images)

    def cache_key(self, fit: str) -> str:  # noqa: ARG002  (pixels in memory are already in the model's format)
        """A short key of the pixels for caching forward passes."""
        return hashlib.sha1(self.images.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]

    def batches(self, batch_size: int, *, fit: str = "resize", progress: bool = False,  # noqa: ARG002
                desc: str | None = None) -> Iterator[tuple[Tensor, Tensor | None, list[str]]]:
        """``(uint8 images, labels or None, unreadable items)`` in order, ``batch_size`` at a time."""
        for s in progress_bar(range(0, len(self), batch_size), desc=desc or f"extract {self.name}", enabled=progress,
                              leave=False, unit="batch"):
            yield (self.images[s : s + batch_size], None if self.labels is None else self.labels[s : s + batch_size],
                   [])

    def describe_item(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def item_digests(self) -> set[str] | None:
        """SHA-1 of each image's pixels (to find images shared between two sets)."""
        x = self.images.contiguous().cpu().numpy()
        return {hashlib.sha1(x[i].tobytes()).hexdigest() for i in range(len(x))}

    def in_memory(self, n: int | None = None, seed: int = 123, fit: str = "resize") -> ImageSet:  # noqa: ARG002
        """The set itself (already in memory)."""
        return self


def pixel_fingerprint(images: Tensor) -> str:
    """SHA-1 of a uint8 image tensor's bytes (shape included): identifies the exact training images."""
    h = hashlib.sha1(repr(tuple(images.shape)).encode())
    t = images.contiguous().cpu()
    for s in range(0, len(t), 8192):
        h.update(t[s : s + 8192].numpy().tobytes())
    return h.hexdigest()
