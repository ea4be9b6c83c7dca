"""One forward pass serves every detector: extracted features and logits of a data set.

:func:`extract` runs the model once over an :class:`~l2ood.data.ImageSet` (no gradients, batched,
same precision as training) and returns :class:`Extraction` — unnormalized features ``z``, the
trained logits, and the labels. Extractions can be cached as safetensors so that adding a detector
costs no forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from ..data import ImageSet
from ..distributed import gather_rows, total
from ..models import Classifier
from ..models.heads import LogitVariant, head_logits, is_normalized
from ..progress import progress as progress_bar
from ..runfolder import atomic_save_safetensors
from ..runtime import Runtime


@dataclass
class Head:
    """The linear head ``W (C×D), b (C,)`` and how the trained logits were formed.

    ``mode``/``tau`` follow :mod:`l2ood.models.heads`; :meth:`logits` recomputes logits from
    features in either variant, so detectors that modify features (ReAct, ASH, …) can form logits.
    """

    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    mode: str = "ce"
    tau: float = 1.0
    variant: LogitVariant = "trained"

    @property
    def normalize(self) -> bool:
        """Whether the logits this head produces involve a normalization."""
        return self.variant == "trained" and is_normalized(self.mode)

    @classmethod
    def of(cls, model: Classifier) -> Head:
        return cls(model.fc.weight.detach().float().cpu(), model.fc.bias.detach().float().cpu(),
                   model.head, model.tau)

    def logits(self, z: Tensor) -> Tensor:
        """Logits of features ``z`` in this head's variant."""
        return head_logits(z.float(), self.weight, self.bias, self.mode, self.tau, self.variant)

    def inputs(self, z: Tensor) -> Tensor:
        """What the linear layer ``W, b`` sees in this variant (fp32): ``z/‖z‖`` (``l2``), ``z/(τ‖z‖)``
        (``t2fnorm``) for the trained logits, else ``z`` (``ce``, ``logitnorm``, every ``raw`` variant)."""
        z = z.float()
        if self.variant == "trained" and self.mode in ("l2", "t2fnorm"):
            n = z.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)  # the eps of head_logits
            return z / (n if self.mode == "l2" else n * self.tau)
        return z

    def raw(self) -> Head:
        """The same head with every normalization removed (``W·z + b``)."""
        return replace(self, variant="raw")


@dataclass
class Extraction:
    """Per-image outputs of one forward pass (CPU, fp32).

    ``sharded``: under ``torchrun``, these are this rank's rows only (a contiguous shard, :mod:`l2ood.distributed`);
    a statistic over them must be reduced across ranks (:meth:`gather`, or a fit that all-reduces its sufficient
    statistics). Always ``False`` in one process."""

    features: Tensor  # (N, D) unnormalized penultimate features z
    logits: Tensor  # (N, C) logits as trained (fc(z/‖z‖) for the L2 head, fc(z) for CE)
    labels: Tensor | None = None  # (N,) or None
    sharded: bool = False

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def chunks(self, size: int = 8192) -> Iterator[Extraction]:
        """Consecutive row blocks of at most ``size`` rows (views, no copies)."""
        for s in range(0, len(self), size):
            yield Extraction(self.features[s : s + size], self.logits[s : s + size],
                             None if self.labels is None else self.labels[s : s + size], self.sharded)

    def with_head(self, head: Head) -> Extraction:
        """The same features with the logits recomputed by ``head`` (e.g. the raw variant)."""
        return Extraction(self.features, head.logits(self.features), self.labels, self.sharded)

    def gather(self) -> Extraction:
        """The whole extraction from every rank's shard, in rank order, on every rank (collective; ``self`` when
        not sharded): :func:`l2ood.distributed.gather_rows` of features, logits and labels."""
        if not self.sharded:
            return self
        return Extraction(gather_rows(self.features), gather_rows(self.logits),
                          None if self.labels is None else gather_rows(self.labels))

    def total(self) -> int:
        """Rows over every rank (collective when sharded; ``len(self)`` otherwise)."""
        return total(len(self)) if self.sharded else len(self)

    def save(self, path: str | Path) -> None:
        """Save atomically as safetensors (an OSError on a full or read-only disk; nothing half-written)."""
        tensors = {"features": self.features.contiguous(), "logits": self.logits.contiguous()}
        if self.labels is not None:
            tensors["labels"] = self.labels.contiguous()
        atomic_save_safetensors(path, tensors)

    @classmethod
    def load(cls, path: str | Path, rows: tuple[int, int] | None = None) -> Extraction:
        """Read a saved extraction into freshly allocated tensors: tensors viewed at an arbitrary offset of the
        file can take other (unaligned) BLAS kernels and round differently from the pass that wrote them.
        ``rows=(start, stop)``: only those rows (read from the file without loading the rest)."""
        if rows is None:
            t = load_file(str(path))
        else:
            with safe_open(str(path), framework="pt") as f:
                t = {k: f.get_slice(k)[rows[0] : rows[1]] for k in f.keys()}
        labels = t.get("labels")
        return cls(t["features"].clone(), t["logits"].clone(), None if labels is None else labels.clone())

    @staticmethod
    def saved_rows(path: str | Path) -> int:
        """The number of rows of a saved extraction, from its header only (``-1`` for a file that is not one)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                return int(f.get_slice("features").get_shape()[0])
        except Exception:  # missing, damaged or foreign file: not a usable extraction
            return -1


@torch.no_grad()
def forward_batch(model: Classifier, images: Tensor, rt: Runtime) -> tuple[Tensor, Tensor]:
    """``(features z, logits)`` of one batch of uint8 images in the model's format (fp32, CPU, no grad).

    The one forward pass that evaluation, calibration, screening, tracking and the bench share:
    :meth:`l2ood.runtime.Runtime.batch` makes the input, the backbone runs under the runtime's autocast."""
    x = rt.batch(images)
    with rt.autocast():
        out = model(x)
    return out.features.float().cpu(), out.logits.float().cpu()


def iter_batches(model: Classifier, data: ImageSet, rt: Runtime, batch_size: int = 512, progress: bool = False,
                 desc: str | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """``(features, logits, labels)`` per batch of ``data`` (fp32, on the CPU; eval mode; no grad).

    For statistics streamed over a large set without keeping all features (memory O(batch·D))."""
    model.eval()
    n = len(data)
    for s in progress_bar(range(0, n, batch_size), desc=desc or f"extract {data.name}", enabled=progress,
                          leave=False, unit="batch"):
        f, lg = forward_batch(model, data.images[s : s + batch_size], rt)
        yield f, lg, None if data.labels is None else data.labels[s : s + batch_size]


def extract(model: Classifier, data: ImageSet, rt: Runtime, batch_size: int = 512,
            progress: bool = False, desc: str | None = None) -> Extraction:
    """Features and logits of every image in ``data`` (one forward pass, eval mode)."""
    feats, logits = [], []
    for f, lg, _ in iter_batches(model, data, rt, batch_size, progress, desc):
        feats.append(f)
        logits.append(lg)
    d = model.fc.in_features
    c = model.fc.out_features
    return Extraction(
        torch.cat(feats) if feats else torch.empty(0, d),
        torch.cat(logits) if logits else torch.empty(0, c),
        None if data.labels is None else data.labels.clone(),
    )
