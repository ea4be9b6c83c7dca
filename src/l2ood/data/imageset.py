"""The in-memory image container used everywhere in l2ood.

Images stay uint8, channels-first ``(N, C, H, W)``, on whatever device they were put on; they are
converted to float only batch by batch (see :mod:`l2ood.data.transforms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError


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
            )

        return take(rest, "", "rest"), take(hold, "-holdout", "holdout")
