"""Screening in deployment: score images with a trained run, compare with its calibration.

:class:`Screener` wraps a trained model and its :class:`~l2ood.metrics.conformal.Calibration`;
``score`` works on tensors, ``screen`` on files and folders and yields one record per image (or per
file that could not be read). Any detector can drive a screen (the method's ``feature_norm`` by default):
detectors with fitted statistics are loaded once from the files the calibration was made with
(``RUN/detectors/…``, :mod:`l2ood.columns`), ODIN and RankFeat run the model on each batch, and a
combined calibration scores every member and merges their conformal p-values
(:mod:`l2ood.metrics.conformal`): its record's ``score`` is ``ln`` of the unclipped combined p-value and
``p_value`` the combined p-value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..columns import check_score_versions, parse_spec
from ..data import DataError, load_npz
from ..detectors import DETECTORS
from ..errors import ConfigError, L2oodError, RunError
from ..metrics.conformal import Calibration
from ..progress import progress as progress_bar
from ..run import Run
from .images import DEFAULT_MAX_DECODE_S, DEFAULT_MAX_PIXELS, ImageReadError, decode_image, discover


class NotCalibratedError(L2oodError):
    """The run has no calibration and no explicit threshold was given."""


@dataclass
class ScreenOutput:
    """Per-image results of :meth:`Screener.score` (``is_ood`` is True wherever the score is not finite)."""

    scores: np.ndarray
    p_values: np.ndarray | None
    is_ood: np.ndarray | None
    pred: np.ndarray
    confidence: np.ndarray
    finite: np.ndarray


def screenable_detectors() -> list[str]:
    """Detectors that can drive a screen: every registered one (fitted statistics are saved with the run,
    detectors needing the model run it on each batch; see :mod:`l2ood.columns`)."""
    return list(DETECTORS)


class Screener:
    """Score and screen images with a trained run.

    Args:
        run: the trained :class:`~l2ood.run.Run`.
        calibration: threshold / conformal calibration (``None``: scores only, unless ``threshold``).
        threshold: manual threshold (accept as ID when ``score ≥ threshold``); overrides calibration.

    Images reach the model through the run's preprocessing (:mod:`l2ood.data.preprocess`), the path its
    training images took. A score that is not finite never gives a verdict: its record is an error.
    """

    def __init__(self, run: Run, calibration: Calibration | None = None, *, threshold: float | None = None) -> None:
        self.run = run
        cfg = run.config
        self.channels, self.size = int(cfg.in_channels), (int(cfg.image_size[0]), int(cfg.image_size[1]))
        self.class_names: list[str] | None = cfg.class_names
        self.calibration = calibration
        if threshold is not None and not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number, got {threshold}")
        self.threshold = threshold
        if calibration is not None and calibration.weights_sha256 not in (None, run.record.weights_sha256):
            raise RunError(f"calibration '{calibration.detector}' was made with other weights "
                           f"({str(calibration.weights_sha256)[:12]}…) than the run's "
                           f"({run.record.weights_sha256[:12]}…); calibrate again")
        if calibration is not None:
            check_score_versions(calibration)  # a calibration on an older score's scale never gives verdicts
        self.members = parse_spec(calibration.detectors if calibration else ["feature_norm"], cfg.head)
        fitted = calibration.fitted if calibration else {}
        for m in self.members:  # statistics loaded once, from the files the calibration was made with
            m.load(run, fitted.get(m.key))
        self.detector = self.members[0].detector
        self.head = run.head

    @classmethod
    def from_run(cls, path: str | Path | Run, *, calibration: str = "default", threshold: float | None = None,
                 device: str = "auto", precision: str = "auto") -> Screener:
        """Load a run folder (safetensors + JSON only) with its calibration ``calibration``, if any."""
        run = path if isinstance(path, Run) else Run.load(path, device=device, precision=precision)
        cal = run.calibration(calibration)
        if cal is not None:
            check_score_versions(cal, calibration)  # refused here with its name (and again in __init__)
        return cls(run, cal, threshold=threshold)

    @property
    def meta(self) -> dict[str, Any]:
        """The run record as JSON (for reports)."""
        return self.run.record.to_json()

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None or self.threshold is not None

    def to_model_format(self, images: Tensor | np.ndarray) -> Tensor:
        """uint8 images of any size/channels → uint8 ``(N, C, H, W)`` in the model's input format."""
        return self.run.preprocessing(images)

    @torch.no_grad()
    def score(self, images: Tensor) -> ScreenOutput:
        """Score a batch: uint8 (any size/channels, converted) or float [0, 1] in the model format."""
        return self._score(self.to_model_format(images) if images.dtype == torch.uint8 else images)

    @torch.no_grad()
    def _score(self, images: Tensor) -> ScreenOutput:
        """Score a batch already in the model's format: uint8, or float on [0, 1] (never fitted again: a fit that
        crops, such as ``imagenet``, would crop an already cropped image a second time)."""
        if images.dtype == torch.uint8:
            if tuple(images.shape[1:]) != (self.channels, *self.size):
                raise ConfigError(f"images in the model's format are (N, {self.channels}, {self.size[0]}, "
                                  f"{self.size[1]}); got {tuple(images.shape)}")
            x = images
        else:
            x = images.float()
            if tuple(x.shape[1:]) != (self.channels, *self.size):
                raise ConfigError(f"float input must be (N, {self.channels}, {self.size[0]}, {self.size[1]}) "
                                  f"on the [0, 1] scale; got {tuple(x.shape)} (pass uint8 to convert)")
        ext = self.run.forward_batch(x)
        member_scores = np.stack([m.score_batch(self.run, ext, x, self.head) for m in self.members], axis=1)
        if self.calibration is not None and self.calibration.is_combined:
            s = self.calibration.combined_score(member_scores)  # NaN where a member's score is not finite
        else:
            s = member_scores[:, 0]
        finite = np.isfinite(s)
        probs = ext.logits.softmax(1)
        conf, pred = probs.max(1)
        p_values = self.calibration.p_values(s) if self.calibration is not None else None
        if self.threshold is not None:
            is_ood: np.ndarray | None = s < self.threshold
        elif self.calibration is not None:
            is_ood = self.calibration.is_ood(s)
        else:
            is_ood = None
        if p_values is not None:
            p_values = np.where(finite, p_values, np.nan)
        if is_ood is not None:
            is_ood = np.where(finite, is_ood, True)  # fail closed: a non-finite score is never "in"
        return ScreenOutput(s, p_values, is_ood, pred.numpy(), conf.numpy(), finite)

    def records(self, items: list[tuple[str, int | None, Tensor | str]]) -> list[dict[str, Any]]:
        """One record per ``(path, index, image or error reason)`` item, in input order: images (uint8 in the
        model's format) are scored together in one forward pass, strings become error records. A non-finite
        score becomes an error record (fail closed). Used by :meth:`screen` and the HTTP service's batcher."""
        ok = [i for i, (_, _, a) in enumerate(items) if not isinstance(a, str)]
        out = self._score(torch.stack([items[i][2] for i in ok])) if ok else None  # type: ignore[misc]
        row = {i: j for j, i in enumerate(ok)}
        recs = []
        for i, (path, index, a) in enumerate(items):
            if isinstance(a, str):
                recs.append(_error(path, index, a))
                continue
            assert out is not None
            j = row[i]
            if not out.finite[j]:
                recs.append(_error(path, index, "the model gave a non-finite score (NaN or infinite features); "
                                                "no verdict (fail closed)"))
                continue
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

    def screen(self, paths: Iterable[str | Path], *, batch_size: int = 256, progress: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               max_decode_s: float | None = DEFAULT_MAX_DECODE_S) -> Iterator[dict[str, Any]]:
        """Yield one record per image (``status`` "ok") or per unreadable input (``status`` "error"),
        in input order (folders sorted by name). An image whose decoding would take longer than ``max_decode_s``
        seconds (the decode budget, :func:`l2ood.data.preprocess.decode_image`) is an error record."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        # each image is reduced to the model's input size as soon as it is decoded: memory O(batch · C·H·W)
        pending: list[tuple[str, int | None, Tensor | str]] = []  # str = error reason
        n_images = 0
        bar = progress_bar(desc="screen", unit="img", enabled=progress)
        for src in discover(list(paths)):
            if src.kind == "error":
                pending.append((src.path, None, src.error or "unreadable"))
            elif src.kind == "npz":
                try:
                    pack = load_npz(src.path, max_pixels=max_pixels)
                except DataError as e:
                    pending.append((src.path, None, str(e)))
                else:
                    for i in range(len(pack)):
                        pending.append((src.path, i, self.to_model_format(pack.images[i : i + 1])[0]))
                        n_images += 1
                        if n_images >= batch_size:
                            yield from self._flush(pending, bar)
                            n_images = 0
            else:
                try:
                    pending.append((src.path, None, self.to_model_format(
                        decode_image(src.path, max_pixels, max_decode_s))[0]))
                    n_images += 1
                except (ImageReadError, DataError) as e:
                    pending.append((src.path, None, str(e)))
            if n_images >= batch_size or len(pending) >= 4 * batch_size:
                yield from self._flush(pending, bar)
                n_images = 0
        if pending:
            yield from self._flush(pending, bar)
        bar.close()

    def _flush(self, pending: list[tuple[str, int | None, Tensor | str]],
               bar: Any) -> Iterator[dict[str, Any]]:
        recs = self.records(pending)
        bar.update(len(pending))
        pending.clear()
        yield from recs


def _error(path: str, index: int | None, reason: str) -> dict[str, Any]:
    return {"path": path, "index": index, "status": "error", "score": None, "p_value": None,
            "verdict": None, "pred_class": None, "pred_name": None, "confidence": None, "error": reason}


RECORD_FIELDS = ("path", "index", "status", "score", "p_value", "verdict", "pred_class", "pred_name",
                 "confidence", "error")


def file_thumbnail(rec: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_decode_s: float | None = DEFAULT_MAX_DECODE_S) -> bytes | None:
    """A PNG thumbnail of a screened input, read again from its file (or npz pack)."""
    from ..report.review import thumbnail_png

    if rec.get("index") is None:
        return thumbnail_png(decode_image(str(rec["path"]), max_pixels, max_decode_s))
    pack = load_npz(str(rec["path"]), max_pixels=max_pixels)
    return thumbnail_png(pack.images[int(rec["index"])].numpy())


def printable(text: str, encoding: str | None = "utf-8") -> str:
    """``text`` made writable in ``encoding`` without losing information.

    A file name that is not valid UTF-8 reaches Python with each undecodable byte as a lone surrogate
    (``surrogateescape``); here each such byte becomes the four characters ``\\xHH`` (``b"\\xff\\xfe.png"`` →
    ``\\xff\\xfe.png``), and any other character the stream's encoding cannot hold becomes its backslash escape
    (``\\xe9``, ``\\u20ac``). Text that is already writable is returned unchanged.

    >>> printable(b"\\xff\\xfe.png".decode("utf-8", "surrogateescape"))
    '\\\\xff\\\\xfe.png'
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        text = raw.decode("utf-8", "backslashreplace")
    enc = encoding or "utf-8"
    try:
        text.encode(enc)
    except UnicodeEncodeError:
        text = text.encode(enc, "backslashreplace").decode(enc)
    except LookupError:  # an unknown codec name: leave the text to the stream
        pass
    return text


def serializable_record(rec: dict[str, Any], encoding: str | None = "utf-8") -> dict[str, Any]:
    """A copy of a record whose strings (path, error, class name) are :func:`printable` in ``encoding``."""
    return {k: printable(v, encoding) if isinstance(v, str) else v for k, v in rec.items()}


def screen_to_file(screener: Screener, paths: list[str], out: Any, fmt: str = "csv", *, batch_size: int = 256,
                   progress: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_decode_s: float | None = DEFAULT_MAX_DECODE_S, review: Any | None = None) -> dict[str, int]:
    """Screen ``paths`` and write one CSV row or JSON line per record to the text stream ``out``;
    returns the counts ``{"ok", "out", "error"}``. JSON lines are standard JSON (no NaN). ``review``: a
    :class:`l2ood.report.review.ReviewCollector` that also receives every record (for ``--html``).

    Every string is written through :func:`printable` for the stream's encoding: a file name that is not valid
    UTF-8 (possible on Linux) is written with its undecodable bytes as ``\\xHH``, never a crash (JSON lines are
    ASCII, as before)."""
    import csv
    import json

    if not screener.calibrated:
        raise NotCalibratedError("the run is not calibrated: run `l2ood calibrate RUN` first (or pass a threshold)")
    if fmt not in ("csv", "jsonl"):
        raise ConfigError(f"format must be csv or jsonl, got {fmt!r}")
    counts = {"ok": 0, "out": 0, "error": 0}
    writer = csv.DictWriter(out, fieldnames=RECORD_FIELDS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    encoding = getattr(out, "encoding", None) or "utf-8"
    for rec in screener.screen(paths, batch_size=batch_size, progress=progress, max_pixels=max_pixels,
                               max_decode_s=max_decode_s):
        if rec["status"] == "ok":
            counts["ok"] += 1
            counts["out"] += rec["verdict"] == "out"
        else:
            counts["error"] += 1
        shown = serializable_record(rec, encoding)
        if writer:
            writer.writerow(shown)
        else:
            out.write(json.dumps(shown, allow_nan=False) + "\n")
        if review is not None:  # the page shows the printable name; the thumbnail reads the real file
            review.add(serializable_record(rec), lambda rec=rec: file_thumbnail(rec, max_pixels, max_decode_s))
    return counts
