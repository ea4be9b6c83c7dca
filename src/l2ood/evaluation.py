"""Evaluation: ID accuracy and, per OoD set and detector, AUROC / FPR@95TPR / AUPR-In / AUPR-Out.

OoD sets are converted to the model's input format (channels, size) and normalized with the ID
statistics stored in the model. Every detector's score follows the convention higher = ID.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ImageSet, load_dataset
from .detectors import DETECTORS, Extraction, Head, extract, make_detector
from .metrics import ood_metrics
from .models import Classifier
from .runtime import resolve_runtime
from .train import load_artifact

DEFAULT_DETECTORS = ("feature_norm", "msp", "maxlogit", "energy")


def parse_detectors(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"`` or a comma-separated list of registered names → list (validated)."""
    names = list(DETECTORS) if spec == "all" else (spec.split(",") if isinstance(spec, str) else list(spec))
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}, all")
    if not names:
        raise ValueError("no detector given")
    return names


@dataclass
class EvalResult:
    """Metrics (JSON-able) and raw scores (for plots) of one model."""

    results: dict[str, Any]
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # set -> detector -> scores

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.results, indent=2))
        np.savez_compressed(out / "scores.npz", **{f"{s}/{d}": v for s, dd in self.scores.items()
                                                   for d, v in dd.items()})


def evaluate_model(
    model: Classifier,
    meta: dict[str, Any],
    id_test: ImageSet,
    ood_sets: list[ImageSet],
    detectors: list[str],
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 512,
    progress: bool = False,
    fit_set: ImageSet | None = None,
) -> EvalResult:
    """Evaluate an already-loaded model; ``fit_set`` feeds detectors that need ID statistics."""
    rt = resolve_runtime(device, precision)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = meta["model"]
    c, size = int(cfg["in_channels"]), tuple(cfg["image_size"])
    head = Head.of(model)
    id_ext = extract(model, id_test, rt, batch_size, progress)
    acc = float((id_ext.logits.argmax(1) == id_ext.labels).float().mean()) if id_ext.labels is not None \
        else float("nan")
    dets = {name: make_detector(name) for name in detectors}
    if any(d.needs_fit for d in dets.values()):
        if fit_set is None:
            raise ValueError("these detectors need ID training data: "
                             + ", ".join(n for n, d in dets.items() if d.needs_fit))
        fit_ext = extract(model, fit_set, rt, batch_size, progress, desc="extract ID train")
        for d in dets.values():
            if d.needs_fit:
                d.fit(fit_ext, head)
    id_scores = {n: d.score(id_ext, head).numpy() for n, d in dets.items()}
    scores: dict[str, dict[str, np.ndarray]] = {id_test.name: id_scores}
    ood_res: dict[str, Any] = {}
    for ds in ood_sets:
        from .data import to_format

        ext: Extraction = extract(model, to_format(ds, c, size), rt, batch_size, progress)
        s = {n: d.score(ext, head).numpy() for n, d in dets.items()}
        scores[ds.name] = s
        ood_res[ds.name] = {"n": len(ds), "detectors": {n: dict(ood_metrics(id_scores[n], s[n]))
                                                        for n in dets}}
    results = {
        "model": cfg,
        "head": cfg["head"],
        "id_dataset": id_test.name,
        "n_id_test": len(id_test),
        "id_accuracy": acc,
        "detectors": list(dets),
        "ood": ood_res,
        "runtime": rt.describe(),
        "train": meta.get("train", {}),
        "convention": "higher score = more in-distribution; ID is the positive class",
    }
    return EvalResult(results, scores)


def load_ood_sets(names: list[str], *, root: str | Path | None, n: int | None, seed: int,
                  channels: int, size: tuple[int, int]) -> list[ImageSet]:
    """Load OoD sets by name, converted to the ID format."""
    return [load_dataset(nm, "test", root=root, n=n, seed=seed, channels=channels, size=size)
            for nm in names]


def evaluate_run(
    run_dir: str | Path,
    ood: list[str],
    detectors: list[str],
    *,
    data_root: str | Path | None = None,
    n_ood: int | None = None,
    n_id: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> EvalResult:
    """Load a trained run, its ID test split and the named OoD sets, and evaluate."""
    model, meta = load_artifact(run_dir)
    cfg = meta["model"]
    c, size = int(cfg["in_channels"]), tuple(cfg["image_size"])
    id_name = meta.get("dataset", "fashion-mnist")
    id_test = load_dataset(id_name, "test", root=data_root, n=n_id, seed=seed, channels=c, size=size)
    ood_sets = load_ood_sets(ood, root=data_root, n=n_ood, seed=seed, channels=c, size=size)
    fit_set = None
    if any(DETECTORS[d].needs_fit for d in detectors):
        fit_set = load_dataset(id_name, "train", root=data_root, channels=c, size=size)
    return evaluate_model(model, meta, id_test, ood_sets, detectors, device=device,
                          precision=precision, progress=progress, fit_set=fit_set)
