"""Post-hoc OoD detection for any PyTorch classifier whose last layer is linear.

Name the model's linear head; l2ood reads the penultimate features ``z`` as the head's input (a forward
hook, flattened) and the head's ``W, b``, so every detector works on the user's network unchanged,
including ODIN (the model stays in the loop for its input gradients)::

    from l2ood.posthoc import PostHoc

    ph = PostHoc(my_model, head="fc", detectors=["feature_norm", "energy", "knn", "mahalanobis", "odin"])
    ph.fit(train_loader)            # DataLoader of (images, labels), a Dataset, or an (N, C, H, W) tensor
    scores = ph.score(images)       # {detector: (N,) tensor}, higher = more in-distribution
    ood = ph.evaluate(id_images, {"noise": noise_images})   # AUROC / FPR@95 per detector

Images are passed exactly as the model expects them (float, already normalized); uint8 images are scaled to
[0, 1] first. The head's output must be the model's output (the logits), as in torchvision's and timm's
classifiers (``fc``, ``head``, ``classifier``, ``classifier.1`` ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .columns import Column
from .detectors import DETECTORS, Extraction, Head
from .errors import ConfigError
from .metrics import OODMetrics, ood_metrics
from .models.imported import HookedClassifier
from .runtime import Runtime, resolve_runtime


def _batches(data: Any, batch_size: int) -> Iterable[tuple[Tensor, Tensor | None]]:
    """(images, labels or None) batches from a DataLoader, a Dataset, a tensor or an (images, labels) pair."""
    if isinstance(data, Tensor):
        for s in range(0, len(data), batch_size):
            yield data[s : s + batch_size], None
        return
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        for s in range(0, len(data[0]), batch_size):
            yield data[0][s : s + batch_size], data[1][s : s + batch_size]
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size)
    for item in data:
        if isinstance(item, Tensor):
            yield item, None
        elif isinstance(item, list | tuple):
            yield item[0], (item[1] if len(item) > 1 and isinstance(item[1], Tensor) else None)
        elif isinstance(item, Mapping):
            yield item["image"], item.get("label")
        else:
            raise ConfigError(f"cannot read a batch of type {type(item).__name__}; give (images, labels) batches")


class PostHoc:
    """Fit and score l2ood's detectors on a user's classifier (see the module doc).

    Args:
        model: the classifier (its output must be the logits of ``head``).
        head: the name of its last linear layer (``model.get_submodule(head)``) or the layer itself.
        detectors: registered detector names (:data:`l2ood.detectors.DETECTORS`).
        device: where the model runs (``"auto"``: cuda > mps > cpu); the model is moved there.
        batch_size: images per forward pass.
    """

    def __init__(self, model: nn.Module, head: str | nn.Linear = "fc",
                 detectors: Iterable[str] = ("feature_norm", "energy", "maxlogit", "msp"), *,
                 device: str = "auto", batch_size: int = 256, detector_kwargs: dict[str, dict[str, Any]] | None = None
                 ) -> None:
        names = list(detectors)
        unknown = [d for d in names if d not in DETECTORS]
        if unknown:
            raise ConfigError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}")
        self.rt: Runtime = resolve_runtime(device, "fp32")
        self.net = HookedClassifier(model, head).to(self.rt.device).eval()
        kw = detector_kwargs or {}
        self.columns: dict[str, Column] = {d: Column.of(d, "ce", **kw.get(d, {})) for d in names}
        self.batch_size = batch_size
        self.fitted = not any(c.needs_fit for c in self.columns.values())

    @property
    def head(self) -> Head:
        return Head(self.net.fc.weight.detach().float().cpu(), self.net.fc.bias.detach().float().cpu()
                    if self.net.fc.bias is not None else torch.zeros(self.net.fc.out_features), "ce")

    def _input(self, x: Tensor) -> Tensor:
        x = x.to(self.rt.device)
        return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()

    @torch.no_grad()
    def extract(self, data: Any) -> Extraction:
        """Features (the head's input), logits and labels of every image in ``data``."""
        feats, logits, labels = [], [], []
        for x, y in _batches(data, self.batch_size):
            out = self.net(self._input(x))
            feats.append(out.features.cpu())
            logits.append(out.logits.cpu())
            if y is not None:
                labels.append(torch.as_tensor(y).long())
        if not feats:
            raise ConfigError("no images given")
        return Extraction(torch.cat(feats), torch.cat(logits), torch.cat(labels) if labels else None)

    def fit(self, data: Any) -> PostHoc:
        """Fit the detectors that need ID statistics on ``data`` (the model's ID training images)."""
        need = [c for c in self.columns.values() if c.needs_fit]
        if need:
            ext, head = self.extract(data), self.head
            for c in need:
                c.fit(ext, head)
        self.fitted = True
        return self

    def score(self, images: Any) -> dict[str, Tensor]:
        """``{detector: (N,) scores}`` for ``images`` (a tensor, DataLoader or Dataset); higher = ID."""
        if not self.fitted:
            raise ConfigError("call fit(ID training data) first: " + ", ".join(
                n for n, c in self.columns.items() if c.needs_fit) + " need ID statistics")
        ext = None
        out: dict[str, Tensor] = {}
        for name, c in self.columns.items():
            if c.needs_model:
                xs = torch.cat([self._input(x).cpu() for x, _ in _batches(images, self.batch_size)])
                s = c.score_images(self.net, self.rt, xs)  # type: ignore[arg-type]
            else:
                ext = ext if ext is not None else self.extract(images)
                s = c.score(ext, self.head)
            out[name] = torch.from_numpy(s).float()
        return out

    def evaluate(self, id_images: Any, ood: Mapping[str, Any]) -> dict[str, dict[str, OODMetrics]]:
        """``{ood set: {detector: {auroc, fpr95, fpr95_ood_pos, aupr_in, aupr_out}}}`` (:mod:`l2ood.metrics.ood`)."""
        s_id = {k: v.numpy() for k, v in self.score(id_images).items()}
        res: dict[str, dict[str, OODMetrics]] = {}
        for name, data in ood.items():
            s = self.score(data)
            res[name] = {d: ood_metrics(np.asarray(s_id[d]), s[d].numpy()) for d in s_id}
        return res
