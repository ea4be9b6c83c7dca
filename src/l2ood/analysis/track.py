"""Tracking during training (``l2ood train --track every=K``).

Every K epochs (and after the last), on rank 0 with the model in eval mode, the tracker records to
``RUN/track.jsonl``: the NC metrics (:mod:`l2ood.analysis.collapse`) of a fixed seeded subset of the
ID training images (un-augmented; ``n_train=all``: the whole training split), streamed in batches
so memory stays O(batch·D) whatever the size, ID test accuracy, ‖z‖ statistics for the ID test subset and for
each configured OoD set, and the AUROC / FPR@95 of the feature-norm score per OoD set. The raw
norms of that epoch go to ``RUN/track/epoch-XXXX.npz`` for histograms. Cost per tracked epoch:
forward passes over ``2·n_train + n_test + Σ n_ood`` images (NC4 needs a second pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageSet, load_dataset
from ..detectors import extract, iter_batches
from ..errors import ConfigError
from ..metrics import ood_metrics
from ..models import Classifier
from ..runfolder import TRACK_DIR
from ..runtime import Runtime
from .collapse import nc_metrics


@dataclass
class TrackConfig:
    every: int = 1
    ood: list[str] = field(default_factory=lambda: ["mnist", "textures", "noise"])
    n_train: int | None = 5000  # None: the whole training split (streamed)
    n_test: int = 2000
    n_ood: int = 2000

    @classmethod
    def parse(cls, spec: str, ood: str | None = None) -> TrackConfig:
        """``"every=K"`` (or ``"K"``), optionally ``",n_train=N,n_test=N,n_ood=N"``; ``n_train=all`` streams
        the NC metrics over the whole training split."""
        cfg = cls()
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            key, _, val = part.partition("=") if "=" in part else ("every", "", part)
            if key not in ("every", "n_train", "n_test", "n_ood"):
                raise ConfigError(f"--track: unknown key '{key}' (use every=K, n_train=N, n_test=N, n_ood=N)")
            if key == "n_train" and val == "all":
                cfg.n_train = None
                continue
            try:
                v = int(val)
            except ValueError:
                raise ConfigError(f"--track: '{part}' needs an integer value") from None
            if v < 1:
                raise ConfigError(f"--track: {key} must be >= 1")
            setattr(cfg, key, v)
        if ood is not None:
            cfg.ood = [s.strip() for s in ood.split(",") if s.strip()]
        return cfg


class Tracker:
    """Callable for :func:`l2ood.train.train`'s ``on_epoch_end``."""

    def __init__(self, cfg: TrackConfig, train_set: ImageSet, id_test: ImageSet, ood_sets: list[ImageSet],
                 run_dir: str | Path, rt: Runtime, total_epochs: int) -> None:
        self.cfg, self.rt, self.total = cfg, rt, total_epochs
        c, h, w = train_set.shape
        self.train = train_set.subset(cfg.n_train, seed=123)
        self.test = id_test.formatted(c, (h, w)).subset(cfg.n_test, seed=123)
        self.ood = [o.formatted(c, (h, w)).subset(cfg.n_ood, seed=123) for o in ood_sets]
        self.dir = Path(run_dir) / TRACK_DIR
        self.num_classes = train_set.num_classes

    @classmethod
    def build(cls, cfg: TrackConfig, train_set: ImageSet, id_test: ImageSet, run_dir: str | Path, rt: Runtime,
              total_epochs: int, root: str | Path | None = None) -> Tracker:
        """``id_test``: the run's ID test images (never training images; see
        :func:`l2ood.pipeline.id_test_for`); the OoD sets of ``cfg`` are loaded here."""
        c, h, w = train_set.shape
        ood = [load_dataset(n, "test", root=root, n=cfg.n_ood, seed=0, channels=c, size=(h, w))
               for n in cfg.ood]
        return cls(cfg, train_set, id_test, ood, run_dir, rt, total_epochs)

    def __call__(self, epoch: int, model: Classifier) -> dict[str, Any] | None:
        if epoch % self.cfg.every and epoch != self.total:
            return None
        # streamed: two forward passes over the training images (moments, then NC4), memory O(batch·D)
        nc = nc_metrics(lambda: iter_batches(model, self.train, self.rt), model.fc.weight.detach().float().cpu(),
                        self.num_classes)
        te = extract(model, self.test, self.rt)
        acc = float((te.logits.argmax(1) == te.labels).float().mean()) if te.labels is not None else None
        id_norm = te.features.norm(dim=1).numpy()
        norms = {"id": id_norm}
        ood: dict[str, Any] = {}
        for ds in self.ood:
            e = extract(model, ds, self.rt)
            n = e.features.norm(dim=1).numpy()
            norms[ds.name] = n
            m = ood_metrics(id_norm, n)
            ood[ds.name] = {"auroc": m["auroc"], "fpr95": m["fpr95"], "norm_mean": float(n.mean()),
                            "norm_std": float(n.std())}
        self.dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(self.dir / f"epoch-{epoch:04d}.npz", **norms)
        return {"nc": nc, "test_acc": acc, "id_norm_mean": float(id_norm.mean()),
                "id_norm_std": float(id_norm.std()), "ood": ood}
