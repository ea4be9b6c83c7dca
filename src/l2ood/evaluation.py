"""Evaluation: ID accuracy and, per OoD set and detector, AUROC / FPR@95TPR / AUPR-In / AUPR-Out.

OoD sets are converted to the model's input format (channels, size) and normalized with the ID
statistics stored in the model. Every detector's score follows the convention higher = ID.

One forward pass per data set serves all detectors (:func:`l2ood.detectors.extract`); with a cache
folder the extractions are stored as safetensors keyed by the model weights' and the images'
SHA-1, so adding a detector later costs no forward pass. For models with a normalized head
(l2, t2fnorm, logitnorm) every logit-based detector is reported twice, as ``name:trained`` (the
logits the model was trained with) and ``name:raw`` (``W·z + b``, all normalization removed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import DataError, ImageSet, has_split, load_dataset, to_format
from .detectors import DETECTORS, Detector, Extraction, Head, all_detectors, extract, make_detector
from .detectors.base import InputDetector
from .metrics import ood_metrics
from .models import Classifier, is_normalized
from .runtime import Runtime, resolve_runtime
from .train import load_artifact
from .train.artifact import WEIGHTS

DEFAULT_DETECTORS = ("feature_norm", "msp", "maxlogit", "energy")


def parse_detectors(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"`` or a comma-separated list of registered names → list (validated)."""
    names = all_detectors() if spec == "all" else (spec.split(",") if isinstance(spec, str) else list(spec))
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}, all")
    if not names:
        raise ValueError("no detector given")
    return list(dict.fromkeys(names))


def columns(detectors: list[str], head_mode: str) -> list[tuple[str, str, str]]:
    """``(column name, detector name, logit variant)`` for each reported score.

    Logit-based detectors on normalized heads appear twice (``:trained`` and ``:raw``).
    """
    out = []
    for d in detectors:
        if DETECTORS[d].uses_logits and is_normalized(head_mode):
            out += [(f"{d}:trained", d, "trained"), (f"{d}:raw", d, "raw")]
        else:
            out.append((d, d, "trained"))
    return out


@dataclass
class EvalResult:
    """Metrics (JSON-able) and raw scores (for plots) of one model."""

    results: dict[str, Any]
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # set -> column -> scores

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.results, indent=2))
        np.savez_compressed(out / "scores.npz", **{f"{s}/{d}": v for s, dd in self.scores.items()
                                                   for d, v in dd.items()})


def _sha1(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()[:16]


class _Extractor:
    """Runs (or loads from the cache) one forward pass per data set."""

    def __init__(self, model: Classifier, rt: Runtime, batch_size: int, progress: bool,
                 cache_dir: Path | None, model_key: str) -> None:
        self.model, self.rt, self.batch_size, self.progress = model, rt, batch_size, progress
        self.cache_dir, self.model_key = cache_dir, model_key

    def __call__(self, ds: ImageSet, desc: str | None = None) -> Extraction:
        path = None
        if self.cache_dir is not None:
            name = f"{ds.name.replace('/', '_')}-{len(ds)}-{self.model_key}-{_sha1(ds.images)}"
            path = self.cache_dir / f"{name}.safetensors"
            if path.is_file():
                return Extraction.load(path)
        ext = extract(self.model, ds, self.rt, self.batch_size, self.progress, desc=desc)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            ext.save(path)
        return ext


def _score(det: Detector, ext: Extraction, head: Head, ds: ImageSet, model: Classifier, rt: Runtime,
           variant: str) -> np.ndarray:
    if isinstance(det, InputDetector):
        return det.score_images(model, ds.images.float() / 255.0, rt, variant=variant).numpy()
    if variant == "raw":
        head = head.raw()
        ext = ext.with_head(head)
    return det.score(ext, head).float().numpy()


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
    cache_dir: str | Path | None = None,
    model_key: str = "model",
    detector_kwargs: dict[str, dict[str, Any]] | None = None,
) -> EvalResult:
    """Evaluate an already-loaded model; ``fit_set`` feeds detectors that need ID statistics."""
    rt = resolve_runtime(device, precision)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    cfg = meta["model"]
    c, size = int(cfg["in_channels"]), tuple(cfg["image_size"])
    head = Head.of(model)
    run_extract = _Extractor(model, rt, batch_size, progress, Path(cache_dir) if cache_dir else None,
                             model_key)
    id_test = to_format(id_test, c, size)
    id_ext = run_extract(id_test)
    acc = float((id_ext.logits.argmax(1) == id_ext.labels).float().mean()) if id_ext.labels is not None \
        else float("nan")
    cols = columns(detectors, head.mode)
    kw = detector_kwargs or {}
    dets = {col: make_detector(d, **kw.get(d, {})) for col, d, _ in cols}
    variants = {col: v for col, _, v in cols}
    need_fit = [col for col, d in dets.items() if d.needs_fit]
    if need_fit:
        if fit_set is None:
            raise ValueError("these detectors need ID training data: " + ", ".join(need_fit))
        fit_ext = run_extract(to_format(fit_set, c, size), desc="extract ID train")
        fit_raw = fit_ext.with_head(head.raw()) if any(variants[col] == "raw" for col in need_fit) else None
        for col in need_fit:
            if variants[col] == "raw":
                dets[col].fit(fit_raw, head.raw())  # type: ignore[arg-type]
            else:
                dets[col].fit(fit_ext, head)
    id_scores = {col: _score(d, id_ext, head, id_test, model, rt, variants[col]) for col, d in dets.items()}
    scores: dict[str, dict[str, np.ndarray]] = {id_test.name: id_scores}
    ood_res: dict[str, Any] = {}
    for ds in ood_sets:
        ds = to_format(ds, c, size)
        ext = run_extract(ds)
        s = {col: _score(d, ext, head, ds, model, rt, variants[col]) for col, d in dets.items()}
        scores[ds.name] = s
        ood_res[ds.name] = {"n": len(ds), "detectors": {col: dict(ood_metrics(id_scores[col], s[col]))
                                                        for col in dets}}
    results = {
        "model": cfg,
        "head": cfg["head"],
        "id_dataset": id_test.name,
        "n_id_test": len(id_test),
        "id_accuracy": acc,
        "detectors": list(dets),
        "detector_params": {col: d.params() for col, d in dets.items()},
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


Split = tuple[ImageSet, ImageSet | None]  # (training images, held-out ID images or None)


def recorded_split(meta: dict[str, Any], root: str | Path | None = None) -> Split:
    """``(training images, held-out ID images or None)`` of a run, rebuilt from its recorded holdout."""
    full = load_dataset(meta.get("dataset", "fashion-mnist"), "train", root=root)
    hold = meta.get("data", {}).get("holdout", {"n": 0, "seed": 0})
    if not hold.get("n"):
        return full, None
    return full.split(int(hold["n"]), seed=int(hold.get("seed", 0)))


def id_test_set(meta: dict[str, Any], root: str | Path | None = None,
                split: Split | None = None) -> tuple[ImageSet, str]:
    """``(ID test images, where they come from)`` of a run — never images it was trained on.

    In order: the ``--test-data`` set recorded at training; the data set's own ``test`` split
    (registered sets, image folders with a ``test/`` folder); else the run's recorded holdout
    (npz packs, image lists and class-folder trees have no separate test split). ``split``: the
    run's :func:`recorded_split` when the caller already has it (saves loading the data again).
    """
    data = meta.get("data", {})
    if data.get("test"):
        return load_dataset(data["test"], "test", root=root), str(data["test"])
    name = meta.get("dataset", "fashion-mnist")
    if has_split(name, "test"):
        return load_dataset(name, "test", root=root), f"{name} (test split)"
    _, hold = split if split is not None else recorded_split(meta, root)
    if hold is None:
        raise DataError(f"{name} has no separate test split and the run kept no holdout (--holdout 0): "
                        "retrain with --holdout N or --test-data SPEC so ID test images are not training images")
    return hold, f"{name} (holdout of {len(hold)}, seed {data['holdout'].get('seed', 0)})"


def training_split(meta: dict[str, Any], root: str | Path | None = None) -> ImageSet:
    """The exact images a run was trained on (its data set minus the recorded holdout)."""
    return recorded_split(meta, root)[0]


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
    cache: bool = True,
    batch_size: int = 512,
) -> EvalResult:
    """Load a trained run, its ID test split and the named OoD sets, and evaluate.

    Detectors that need ID statistics are fitted on the run's training split (holdout excluded).
    Extractions are cached in ``RUN/eval/cache`` unless ``cache=False``.
    """
    model, meta = load_artifact(run_dir)
    cfg = meta["model"]
    c, size = int(cfg["in_channels"]), tuple(cfg["image_size"])
    split = recorded_split(meta, data_root) if any(DETECTORS[d].needs_fit for d in detectors) else None
    id_test, _ = id_test_set(meta, data_root, split)
    if n_id is not None:
        id_test = id_test.subset(n_id, seed=seed)
    id_test = to_format(id_test, c, size)
    ood_sets = load_ood_sets(ood, root=data_root, n=n_ood, seed=seed, channels=c, size=size)
    fit_set = split[0] if split is not None else None
    key = hashlib.sha1((Path(run_dir) / WEIGHTS).read_bytes()).hexdigest()[:16]
    return evaluate_model(model, meta, id_test, ood_sets, detectors, device=device, batch_size=batch_size,
                          precision=precision, progress=progress, fit_set=fit_set,
                          cache_dir=Path(run_dir) / "eval" / "cache" if cache else None, model_key=key)
