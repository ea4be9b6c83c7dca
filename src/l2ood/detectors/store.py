"""Fitted detectors on disk: one safetensors file per fitted detector — tensors and strings, no pickle.

A file holds :meth:`~l2ood.detectors.base.Detector.state_dict` (named tensors; numbers as 0-d tensors) and,
in the safetensors header's metadata, one key ``l2ood.detector`` whose value is a JSON object (keys sorted,
so that equal statistics give equal bytes and an identical refit keeps the file's SHA-256):

====================  ========================================================================
key                   value
====================  ========================================================================
``format``            ``"l2ood.detector/1"``
``detector``          the registered name (``knn``, ``vim``, ...)
``variant``           ``trained`` or ``raw``: the logit variant of the head it was fit with
``hyper_parameters``  the constructor arguments (:meth:`Detector.hyper_parameters`)
``weights_sha256``    digest of the model weights whose features the statistics were computed from
``n_fit``             number of training images it was fit on
``fit_data``          a description of those images
====================  ========================================================================

so that a file is self-describing; the run record (:class:`l2ood.record.FittedDetectorRecord`) holds the same
facts plus the file's SHA-256, which :func:`load_fitted` checks before a byte is parsed as tensors.
Writing (:func:`save_fitted`) serializes in memory and replaces the file atomically (unique temporary name,
fsync, rename), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from ..errors import ConfigError, RunError
from ..runfolder import atomic_write_bytes
from .base import DETECTORS, Detector, make_detector

FORMAT = "l2ood.detector/1"
META_KEY = "l2ood.detector"
MAX_FITTED_BYTES = 64 * 1024**3  # a KNN bank of 10 M × 1 600 fp32 features


@dataclass
class FittedInfo:
    """What a fitted-detector file says about itself (its header metadata) and its SHA-256."""

    detector: str
    variant: str
    hyper_parameters: dict[str, Any]
    weights_sha256: str
    n_fit: int
    fit_data: str = ""
    sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def save_fitted(det: Detector, path: str | Path, *, variant: str, weights_sha256: str, n_fit: int,
                fit_data: str = "") -> str:
    """Write ``det``'s fitted state to ``path`` (atomic); returns the file's SHA-256."""
    if variant not in ("trained", "raw"):
        raise ConfigError(f"variant must be 'trained' or 'raw', got {variant!r}")
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in det.state_dict().items():
        v = v.detach().cpu().contiguous()
        if v.numel() and v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        tensors[k] = v
    meta = {"format": FORMAT, "detector": det.name, "variant": variant, "hyper_parameters": det.hyper_parameters(),
            "weights_sha256": weights_sha256, "n_fit": int(n_fit), "fit_data": fit_data}
    data = st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True, allow_nan=False)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_fitted(path: str | Path, *, sha256: str | None = None) -> tuple[dict[str, Tensor], FittedInfo]:
    """The tensors and the header of a fitted-detector file, after checking that it is a regular file of at
    most :data:`MAX_FITTED_BYTES` and (when given) that its SHA-256 is ``sha256``. Raises :class:`RunError`."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: fitted detector file missing (run `l2ood calibrate` again to fit it)")
    size = path.stat().st_size
    if size > MAX_FITTED_BYTES:
        raise RunError(f"{path}: {size} bytes exceeds the limit of {MAX_FITTED_BYTES} for a fitted detector")
    digest = _sha256(path)
    if sha256 is not None and digest != sha256:
        raise RunError(f"{path}: the file differs from the one recorded (SHA-256 {digest[:12]}… instead of "
                       f"{sha256[:12]}…): it was replaced or refit after calibration; run `l2ood calibrate` again")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            # fresh (aligned) tensors: views at arbitrary file offsets may take other BLAS kernels and round
            # differently from the statistics that were saved
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, ValueError):
        raise RunError(f"{path}: not an l2ood fitted detector (no {META_KEY} metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise RunError(f"{path}: not an l2ood fitted detector (format {got!r}, expected {FORMAT!r})")
    try:
        hp = meta["hyper_parameters"]
        info = FittedInfo(str(meta["detector"]), str(meta["variant"]), hp, str(meta["weights_sha256"]),
                          int(meta["n_fit"]), str(meta.get("fit_data", "")), digest,
                          {k: str(v) for k, v in meta.items() if k not in (
                              "format", "detector", "variant", "hyper_parameters", "weights_sha256", "n_fit",
                              "fit_data")})
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path}: incomplete fitted-detector header ({e})") from None
    if not isinstance(hp, dict) or not all(isinstance(v, int | float | str | bool | type(None)) for v in hp.values()):
        raise RunError(f"{path}: hyper_parameters must be a JSON object of numbers, strings and booleans")
    if info.detector not in DETECTORS:
        raise RunError(f"{path}: unknown detector {info.detector!r}")
    return tensors, info


def load_fitted(path: str | Path, *, sha256: str | None = None,
                weights_sha256: str | None = None) -> tuple[Detector, FittedInfo]:
    """Rebuild the fitted detector saved in ``path``: check the file (:func:`read_fitted`), that its statistics
    belong to the weights ``weights_sha256`` (when given), build the detector with its recorded
    hyper-parameters and restore its state."""
    tensors, info = read_fitted(path, sha256=sha256)
    if weights_sha256 is not None and info.weights_sha256 != weights_sha256:
        raise RunError(f"{path}: fitted on the features of other weights ({info.weights_sha256[:12]}…) than "
                       f"the run's ({weights_sha256[:12]}…); run `l2ood calibrate` again to refit it")
    try:
        det = make_detector(info.detector, **info.hyper_parameters)
        det.check_state(tensors)
        det.load_state_dict(tensors)
    except (TypeError, ConfigError) as e:
        raise RunError(f"{path}: cannot restore detector {info.detector!r}: {e}") from None
    return det, info
