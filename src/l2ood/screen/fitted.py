"""Any detector can drive a screen: detector specs, fitted statistics saved with the run, scoring.

**Specs.** A screen is driven by one detector key or several joined by commas (a combination, see
:mod:`l2ood.metrics.conformal`). A key is a registered detector name, optionally with the logit variant:
``energy`` (the logits the model was trained with) or ``energy:raw`` (``W·z + b``, normalization removed;
only for logit-based detectors on models trained with a normalized head — elsewhere the two variants are
the same logits and the key is just ``energy``). :func:`parse_spec` turns a spec into canonical
:class:`Member` keys.

**Fitted statistics.** Detectors that need ID training statistics (``knn``, ``mahalanobis``, ``vim``, ...)
are fitted once on the run's exact training split (:meth:`l2ood.run.Run.train_split`, in memory or streamed,
through the run's cached forward pass :meth:`l2ood.run.Run.forward`) by :func:`fitted_detector` and saved as
``RUN/detectors/<key>.safetensors`` (:mod:`l2ood.detectors.store`; ``vim:raw`` → ``vim.raw.safetensors``),
recorded in the run record's ``detectors`` (:class:`l2ood.record.FittedDetectorRecord`: file, SHA-256,
hyper-parameters, the weights digest). A later calibration reuses a recorded fit whose hyper-parameters
match. A calibration stores the SHA-256 of every file it used (``Calibration.fitted``), and a screen or the
HTTP service loads exactly those files, once, checking digest and weights (:func:`load_member`) — never
fitting, since deployment machines need not hold the training data. Files are byte-deterministic, so a refit
that reproduces the statistics keeps the digest; a refit that changes them (other hyper-parameters, other
features) makes every calibration made with the old file refuse to screen until it is calibrated again.

**Model in the loop.** ODIN (input gradients) and RankFeat (feature maps before pooling) score images with
the model (:class:`l2ood.detectors.base.InputDetector`); a screen passes them each batch's images, a
calibration the held-out images batch by batch (≈ 3 and 2 forward passes per image respectively).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..detectors import DETECTORS, Detector, Extraction, Head, make_detector
from ..detectors.base import InputDetector
from ..detectors.store import load_fitted, save_fitted
from ..errors import ConfigError, RunError
from ..models import is_normalized
from ..record import FittedDetectorRecord, add_fitted_detector, fitted_file
from ..run import Images, Run


@dataclass(frozen=True)
class Member:
    """One detector of a screen: its canonical key, registered name and logit variant."""

    key: str
    name: str
    variant: str = "trained"

    @property
    def needs_fit(self) -> bool:
        return DETECTORS[self.name].needs_fit

    @property
    def needs_model(self) -> bool:
        return DETECTORS[self.name].needs_model


def member(key: str, head_mode: str) -> Member:
    """The canonical :class:`Member` of a detector key (``name`` or ``name:trained|raw``) for a model whose head
    is ``head_mode``. ``:raw`` is kept only where it changes the logits (logit-based detector, normalized head)."""
    name, _, variant = key.strip().partition(":")
    variant = variant or "trained"
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector '{name}'; known: {', '.join(DETECTORS)}")
    if variant not in ("trained", "raw"):
        raise ConfigError(f"'{key}': the logit variant must be 'trained' or 'raw', got {variant!r}")
    if variant == "raw" and DETECTORS[name].uses_logits and is_normalized(head_mode):
        return Member(f"{name}:raw", name, "raw")
    return Member(name, name, "trained")


def parse_spec(spec: str | list[str], head_mode: str) -> list[Member]:
    """Comma-separated detector keys (or a list) → canonical members, each once, in the order given."""
    keys = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Member] = []
    for k in keys:
        if not k.strip():
            continue
        m = member(k, head_mode)
        if m in out:
            raise ConfigError(f"detector '{m.key}' is listed twice")
        out.append(m)
    if not out:
        raise ConfigError("no detector given")
    return out


def _require_folder(run: Run) -> Path:
    if run.path is None:
        raise ConfigError("an in-memory run has no folder for fitted detectors: use l2ood.evaluation or fit the "
                          "detector yourself")
    return run.path


def fitted_detector(run: Run, m: Member, *, batch_size: int = 512, progress: bool = False,
                    refit: bool = False, **hyper: object) -> tuple[Detector, str]:
    """The fitted detector of member ``m`` and the SHA-256 of its file ``RUN/detectors/…``.

    A recorded fit with the same hyper-parameters (defaults unless ``hyper``) and a file of the recorded
    digest is loaded; otherwise (or with ``refit``) the detector is fit on the run's training split with the
    head in ``m.variant``, saved atomically and recorded in ``RUN/model.json``."""
    path = _require_folder(run)
    det = make_detector(m.name, **hyper)
    entry = run.record.detectors.get(m.key)
    if entry is not None and not refit and entry.hyper_parameters == _json_hp(det):
        loaded, info = load_fitted(path / entry.file, sha256=entry.sha256, weights_sha256=run.record.weights_sha256)
        return loaded, info.sha256
    train = run.train_split()
    ext = run.forward(train, batch_size=batch_size, progress=progress, desc="extract ID train")
    head = run.head
    if m.variant == "raw":
        head = head.raw()
        ext = ext.with_head(head)
    det.fit(ext, head)
    file = fitted_file(m.key)
    src = run.data.train
    desc = f"{src.describe() if src else train.name} ({len(train)} images)"
    digest = save_fitted(det, path / file, variant=m.variant, weights_sha256=run.record.weights_sha256,
                         n_fit=len(ext), fit_data=desc)
    rec = FittedDetectorRecord(file=file, sha256=digest, detector=m.name, variant=m.variant,  # type: ignore[arg-type]
                               hyper_parameters=_json_hp(det), weights_sha256=run.record.weights_sha256,
                               n_fit=len(ext), fit_data=desc[:8192])
    run.record = add_fitted_detector(path, m.key, rec)
    return det, digest


def _json_hp(det: Detector) -> dict[str, int | float | str | bool | None]:
    hp = det.hyper_parameters()
    bad = {k: type(v).__name__ for k, v in hp.items() if not isinstance(v, int | float | str | bool | type(None))}
    if bad:
        raise ConfigError(f"detector '{det.name}': hyper-parameters {bad} cannot be recorded")
    return hp


def load_member(run: Run, m: Member, sha256: str | None) -> Detector:
    """The detector of member ``m`` ready to score, for a screen: built with defaults when it needs no fit,
    else loaded from ``RUN/detectors/…`` — the file whose SHA-256 is ``sha256`` (the one the calibration used),
    with statistics of the run's weights. Never fits."""
    if not m.needs_fit:
        return make_detector(m.name)
    path = _require_folder(run)
    if sha256 is None:
        raise RunError(f"detector '{m.key}' needs fitted statistics but the calibration names no fitted file; "
                       f"run `l2ood calibrate {path} --detector {m.key}` again")
    det, info = load_fitted(path / fitted_file(m.key), sha256=sha256, weights_sha256=run.record.weights_sha256)
    if info.detector != m.name or info.variant != m.variant:
        raise RunError(f"{path / fitted_file(m.key)}: holds {info.detector} ({info.variant}), not {m.key}")
    return det


def score_member(run: Run, m: Member, det: Detector, ext: Extraction, images: Tensor | None,
                 head: Head | None = None) -> np.ndarray:
    """Scores (float64, higher = ID) of one batch: ``ext`` is its forward pass; ``images`` (uint8 in the model's
    format, or float on the [0, 1] scale) are needed by detectors that run the model themselves; ``head``:
    the run's head (:attr:`l2ood.run.Run.head`, taken again when not given)."""
    if isinstance(det, InputDetector):
        if images is None:
            raise ConfigError(f"detector '{m.key}' scores images with the model: pass the images")
        return det.score_images(run.model, images, run.runtime, variant=m.variant).double().numpy()
    head = run.head if head is None else head
    if m.variant == "raw":
        head = head.raw()
        ext = ext.with_head(head)
    return det.score(ext, head).double().numpy()


def score_set(run: Run, m: Member, det: Detector, ds: Images, *, batch_size: int = 512, progress: bool = False,
              desc: str | None = None) -> np.ndarray:
    """Scores of every image of ``ds`` (one cached forward pass; image batches for detectors needing the model)."""
    if isinstance(det, InputDetector):
        parts = [det.score_images(run.model, x, run.runtime, variant=m.variant).double()
                 for x in run.image_batches(ds, batch_size=min(batch_size, 256))]
        return torch.cat(parts).numpy() if parts else np.empty(0)
    ext = run.forward(ds, batch_size=batch_size, progress=progress, desc=desc)
    return score_member(run, m, det, ext, None)
