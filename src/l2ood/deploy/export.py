"""``l2ood export RUN --format onnx``: the run as one ONNX model, for serving without PyTorch.

The graph takes ``images``: float32 ``(N, C, H, W)`` on the [0, 1] scale in the model's input format
(the run's preprocessing — decode, channels, size, fit — is described in the metadata; the per-channel
normalization is inside the graph) and returns two outputs:

* ``logits`` ``(N, K)``: the logits the model was trained with (``W·z/‖z‖ + b`` for the L2 head), for the
  class decision;
* ``feature_norm`` ``(N,)``: ``‖z‖₂`` of the unnormalized penultimate features, the OoD score
  (Haas et al., TMLR 2024; higher = more in-distribution).

Metadata (``metadata_props``, JSON strings): ``l2ood.preprocessing``, ``l2ood.model``, ``l2ood.class_names``,
``l2ood.calibration`` (the run's calibration named at export: detector, threshold, alpha, the sorted
calibration scores for conformal p-values ``p = (1 + #{s_i ≤ s}) / (n + 1)``), ``l2ood.provenance`` and
``l2ood.version``. Verified against PyTorch with onnxruntime (:func:`verify_onnx`).

Never a broken file at the destination: a model whose outputs are not finite (NaN/inf) is refused before anything
is written, the export (and, when asked, its verification) runs on the serialized model in memory, and only a
model that passed is written — atomically (:func:`l2ood.runfolder.atomic_write_bytes`), so a failed export
leaves a previous file at ``out`` byte for byte as it was.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import ConfigError, L2oodError
from ..run import Run
from ..runfolder import atomic_write_bytes

SCORE_RTOL = 1e-3  # largest relative |feature_norm| difference a verified export may show
LOGIT_RTOL = 1e-3  # largest logit difference, relative to the largest |logit|, a verified export may show


class ExportError(L2oodError):
    """The export or its verification failed; nothing was written at the destination."""


class _Scored(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images)
        return out.logits, out.score


def export_onnx(run: Run | str | Path, out: str | Path, *, calibration: str = "default", opset: int = 18,
                batch_size: int = 2, verify: Callable[[bytes], None] | None = None) -> Path:
    """Export ``run`` to ``out`` (see the module doc); returns the path.

    ``verify`` (e.g. :func:`verify_onnx` on test images) is called with the serialized model before it is
    written; when it raises, nothing is written. A model whose PyTorch outputs are not finite is refused
    (:class:`ExportError`)."""
    try:
        import onnx
    except ImportError:
        raise L2oodError("ONNX export needs the 'onnx' and 'onnxscript' packages: "
                         "pip install 'l2ood[export]'") from None
    run = run if isinstance(run, Run) else Run.load(run, device="cpu", precision="fp32")
    if run.runtime.device.type != "cpu" or run.runtime.amp_dtype is not None:
        run = Run.load(run.path, device="cpu", precision="fp32") if run.path else run
    cfg = run.config
    cal = run.calibration(calibration)
    if cal is not None and cal.detector != "feature_norm":
        raise ConfigError(f"calibration '{calibration}' uses {cal.detector}; the ONNX model outputs logits and "
                          "feature_norm, so export a feature_norm calibration (l2ood calibrate --name ...)")
    model = _Scored(run.model.float().to("cpu")).eval()
    x = torch.rand(batch_size, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, score = model(x)
    if not (torch.isfinite(logits).all() and torch.isfinite(score).all()):
        raise ExportError("the model's outputs are not finite (NaN or inf) on test inputs: a broken model is never "
                          "exported; nothing was written")
    out = Path(out)
    n = torch.export.Dim("n", min=1, max=1_000_000)
    with warnings.catch_warnings():  # torch.export's own deprecation notices are not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(model, (x,), input_names=["images"], output_names=["logits", "feature_norm"],
                                    dynamic_shapes={"images": {0: n}}, dynamo=True, opset_version=opset,
                                    verbose=False)
    if program is None:
        raise L2oodError("torch.onnx.export returned no program")
    proto = program.model_proto
    meta: dict[str, Any] = {
        "l2ood.preprocessing": run.record.preprocessing.model_dump(mode="json"),
        "l2ood.model": cfg.to_dict(),
        "l2ood.class_names": cfg.class_names,
        "l2ood.calibration": None if cal is None else {**asdict(cal), "name": calibration},
        "l2ood.provenance": run.record.provenance.model_dump(mode="json"),
        "l2ood.version": __version__,
        "l2ood.inputs": "images: float32 (N, C, H, W) on [0, 1] in the preprocessing's channels/size",
        "l2ood.outputs": "logits: trained logits (N, K); feature_norm: ||z||_2 (N,), higher = more in-distribution",
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, json.dumps(v, allow_nan=False)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if verify is not None:
        verify(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)  # a temporary file beside it, then a rename: never half a model at ``out``
    return out


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``l2ood.*`` metadata of an exported model, decoded from JSON."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("l2ood.")}


def verify_onnx(run: Run | str | Path, path: str | Path | bytes, images: Tensor,
                batch_size: int = 256) -> dict[str, float]:
    """Compare the exported model (a file, or its serialized bytes) with PyTorch (fp32, CPU) on uint8 images in
    the model's format.

    Returns the largest absolute and relative differences of ``feature_norm``, the largest absolute and relative
    (to the largest ``|logit|``) logit differences, the fraction of equal predicted classes and — when the run is
    calibrated — the fraction of equal verdicts. Outputs that are not finite, on either side, are never
    "verified": :class:`ExportError`. No image to compare on is an :class:`ExportError` too."""
    import onnxruntime as ort

    if len(images) == 0:
        raise ExportError("no images to verify the export on")
    run = run if isinstance(run, Run) else Run.load(run, device="cpu", precision="fp32")
    model = bytes(path) if isinstance(path, bytes) else str(path)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ref_s, ref_l, got_s, got_l = [], [], [], []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        ext = run.forward_batch(x)
        ref_s.append(ext.features.norm(dim=1).numpy())
        ref_l.append(ext.logits.numpy())
        lo, no = sess.run(None, {"images": x.float().div(255.0).numpy()})
        got_s.append(no)
        got_l.append(lo)
    rs, gs = np.concatenate(ref_s), np.concatenate(got_s)
    rl, gl = np.concatenate(ref_l), np.concatenate(got_l)
    for what, a in (("PyTorch feature_norm", rs), ("PyTorch logits", rl), ("ONNX feature_norm", gs),
                    ("ONNX logits", gl)):
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise ExportError(f"verification failed: {bad} of the {what} outputs are not finite (NaN or inf) on "
                              f"{len(rs)} test images; a model with non-finite outputs is never verified")
    max_logit_diff = float(np.abs(rl - gl).max())
    res = {"n": float(len(rs)), "max_abs_score_diff": float(np.abs(rs - gs).max()),
           "max_rel_score_diff": float((np.abs(rs - gs) / np.maximum(np.abs(rs), 1e-12)).max()),
           "max_abs_logit_diff": max_logit_diff,
           "max_rel_logit_diff": max_logit_diff / max(float(np.abs(rl).max()), 1e-12),
           "same_class": float((rl.argmax(1) == gl.argmax(1)).mean())}
    cal = run.calibration()
    if cal is not None:
        res["same_verdict"] = float((cal.is_ood(rs) == cal.is_ood(gs)).mean())
    return res


def check_agreement(v: dict[str, float], score_rtol: float = SCORE_RTOL, logit_rtol: float = LOGIT_RTOL) -> None:
    """Raise :class:`ExportError` unless a :func:`verify_onnx` result shows the export agreeing with PyTorch:
    ``feature_norm`` within ``score_rtol`` (relative) and logits within ``logit_rtol`` of the largest ``|logit|``."""
    if not v["max_rel_score_diff"] <= score_rtol:
        raise ExportError(f"verification failed: feature_norm differs from PyTorch by up to "
                          f"{v['max_rel_score_diff']:.3g} (relative; allowed {score_rtol:g})")
    if not v["max_rel_logit_diff"] <= logit_rtol:
        raise ExportError(f"verification failed: logits differ from PyTorch by up to {v['max_abs_logit_diff']:.3g} "
                          f"({v['max_rel_logit_diff']:.3g} of the largest |logit|; allowed {logit_rtol:g})")


def export_verified(run: Run, out: str | Path, *, calibration: str = "default",
                    images: Tensor | None = None) -> tuple[Path, dict[str, float] | None]:
    """Export ``run`` to ``out``; with ``images``, only after :func:`verify_onnx` and :func:`check_agreement`
    passed on the serialized model (else :class:`ExportError`, and nothing is written). Returns the path and the
    verification (``None`` without images)."""
    result: dict[str, float] = {}

    def check(data: bytes) -> None:
        assert images is not None
        v = verify_onnx(run, data, images)
        check_agreement(v)
        result.update(v)

    path = export_onnx(run, out, calibration=calibration, verify=check if images is not None else None)
    return path, (result if images is not None else None)
