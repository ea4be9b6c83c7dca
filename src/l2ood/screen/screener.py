"""Screening in deployment: score images with a trained run, compare with its calibration.

:class:`Screener` wraps a trained model and its :class:`~l2ood.screen.calibrate.Calibration`;
``score`` works on tensors, ``screen`` on files and folders and yields one record per image (or per
file that could not be read). Only post-hoc detectors that need no fitted statistics can drive a
screen (the method's ``feature_norm`` by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data import DataError, load_npz
from ..data.transforms import convert_format
from ..detectors import DETECTORS, Extraction, Head, make_detector
from ..models import Classifier
from ..runtime import resolve_runtime
from ..train import load_artifact
from .calibrate import Calibration
from .images import DEFAULT_MAX_PIXELS, ImageReadError, decode_image, discover


class NotCalibratedError(Exception):
    """The run has no calibration and no explicit threshold was given."""


@dataclass
class ScreenOutput:
    """Per-image results of :meth:`Screener.score`."""

    scores: np.ndarray
    p_values: np.ndarray | None
    is_ood: np.ndarray | None
    pred: np.ndarray
    confidence: np.ndarray


def screenable_detectors() -> list[str]:
    """Detectors that can drive a screen (no fitted statistics, no gradients)."""
    return [n for n, c in DETECTORS.items() if not c.needs_fit and not c.needs_model]


class Screener:
    """Score and screen images with a trained l2ood model.

    Args:
        model, meta: as returned by :func:`l2ood.train.load_artifact`.
        calibration: threshold / conformal calibration (``None``: scores only, unless ``threshold``).
        threshold: manual threshold (accept as ID when ``score ≥ threshold``); overrides calibration.
    """

    def __init__(self, model: Classifier, meta: dict[str, Any], calibration: Calibration | None = None,
                 *, threshold: float | None = None, device: str = "auto", precision: str = "auto") -> None:
        self.rt = resolve_runtime(device, precision)
        self.model = model.to(self.rt.device).eval()
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.meta = meta
        cfg = meta["model"]
        self.channels, self.size = int(cfg["in_channels"]), tuple(int(v) for v in cfg["image_size"])
        self.class_names: list[str] | None = cfg.get("class_names")
        self.calibration = calibration
        self.threshold = threshold
        name = calibration.detector if calibration else "feature_norm"
        if name not in screenable_detectors():
            raise ValueError(f"detector '{name}' cannot drive a screen; use one of {screenable_detectors()}")
        self.detector = make_detector(name)
        self.head = Head.of(model)

    @classmethod
    def from_run(cls, path: str | Path, *, threshold: float | None = None, device: str = "auto",
                 precision: str = "auto") -> Screener:
        """Load a run folder (safetensors + JSON only) with its calibration, if any."""
        model, meta = load_artifact(path)
        cal = Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None
        return cls(model, meta, cal, threshold=threshold, device=device, precision=precision)

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None or self.threshold is not None

    def to_model_format(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` of any size/channels → uint8 in the model's input format."""
        return convert_format(images, self.channels, self.size)  # type: ignore[arg-type]

    @torch.no_grad()
    def score(self, images: Tensor) -> ScreenOutput:
        """Score a batch: uint8 (any size/channels, converted) or float [0, 1] in the model format."""
        if images.dtype == torch.uint8:
            x = self.to_model_format(images).float().div_(255.0)
        else:
            x = images.float()
            if tuple(x.shape[1:]) != (self.channels, *self.size):
                raise ValueError(f"float input must be (N, {self.channels}, {self.size[0]}, {self.size[1]}) "
                                 f"on the [0, 1] scale; got {tuple(x.shape)} (pass uint8 to convert)")
        x = x.to(self.rt.device)
        if self.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.rt.autocast():
            out = self.model(x)
        ext = Extraction(out.features.float().cpu(), out.logits.float().cpu())
        s = self.detector.score(ext, self.head).numpy().astype(np.float64)
        probs = ext.logits.softmax(1)
        conf, pred = probs.max(1)
        p_values = self.calibration.p_values(s) if self.calibration is not None else None
        if self.threshold is not None:
            is_ood: np.ndarray | None = s < self.threshold
        elif self.calibration is not None:
            is_ood = self.calibration.is_ood(s)
        else:
            is_ood = None
        return ScreenOutput(s, p_values, is_ood, pred.numpy(), conf.numpy())

    def _records(self, items: list[tuple[str, int | None, np.ndarray | str]]) -> list[dict[str, Any]]:
        """Records in input order; string entries are error reasons, arrays are scored together."""
        ok = [i for i, (_, _, a) in enumerate(items) if not isinstance(a, str)]
        out = self.score(torch.stack([self._item_tensor(items[i][2]) for i in ok])) if ok else None  # type: ignore[arg-type]
        row = {i: j for j, i in enumerate(ok)}
        recs = []
        for i, (path, index, a) in enumerate(items):
            if isinstance(a, str):
                recs.append(_error(path, index, a))
                continue
            assert out is not None
            j = row[i]
            pred = int(out.pred[j])
            recs.append({
                "path": path, "index": index, "status": "ok", "score": float(out.scores[j]),
                "p_value": None if out.p_values is None else float(out.p_values[j]),
                "verdict": None if out.is_ood is None else ("out" if out.is_ood[j] else "in"),
                "pred_class": pred,
                "pred_name": (self.class_names[pred]
                              if self.class_names and pred < len(self.class_names) else None),
                "confidence": float(out.confidence[j]), "error": None,
            })
        return recs

    def _item_tensor(self, a: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.array(a, dtype=np.uint8, copy=True))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        return self.to_model_format(t[None])[0]

    def screen(self, paths: Iterable[str | Path], *, batch_size: int = 256, progress: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[dict[str, Any]]:
        """Yield one record per image (``status`` "ok") or per unreadable input (``status`` "error"),
        in input order (folders sorted by name)."""
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        pending: list[tuple[str, int | None, np.ndarray | str]] = []  # str = error reason
        n_images = 0
        bar = tqdm(desc="screen", unit="img", disable=not progress)
        for src in discover(list(paths)):
            if src.kind == "error":
                pending.append((src.path, None, src.error or "unreadable"))
            elif src.kind == "npz":
                try:
                    pack = load_npz(src.path)
                except DataError as e:
                    pending.append((src.path, None, str(e)))
                else:
                    for i in range(len(pack)):
                        pending.append((src.path, i, pack.images[i].permute(1, 2, 0).numpy()))
                        n_images += 1
                        if n_images >= batch_size:
                            yield from self._flush(pending, bar)
                            n_images = 0
            else:
                try:
                    pending.append((src.path, None, decode_image(src.path, max_pixels)))
                    n_images += 1
                except ImageReadError as e:
                    pending.append((src.path, None, str(e)))
            if n_images >= batch_size or len(pending) >= 4 * batch_size:
                yield from self._flush(pending, bar)
                n_images = 0
        if pending:
            yield from self._flush(pending, bar)
        bar.close()

    def _flush(self, pending: list[tuple[str, int | None, np.ndarray | str]],
               bar: Any) -> Iterator[dict[str, Any]]:
        recs = self._records(pending)
        bar.update(len(pending))
        pending.clear()
        yield from recs


def _error(path: str, index: int | None, reason: str) -> dict[str, Any]:
    return {"path": path, "index": index, "status": "error", "score": None, "p_value": None,
            "verdict": None, "pred_class": None, "pred_name": None, "confidence": None, "error": reason}


RECORD_FIELDS = ("path", "index", "status", "score", "p_value", "verdict", "pred_class", "pred_name",
                 "confidence", "error")
