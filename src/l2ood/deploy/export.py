"""``l2ood export RUN --format onnx``: the run and its calibrated screen as one ONNX model, for serving without
PyTorch.

The graph takes ``images``: float32 ``(N, C, H, W)`` on the [0, 1] scale in the model's input format
(the run's preprocessing — decode, channels, size, fit — is described in the metadata; the per-channel
normalization is inside the graph) and returns:

* ``logits`` ``(N, K)``: the logits the model was trained with (``W·z/‖z‖ + b`` for the L2 head), for the
  class decision;
* ``z`` ``(N, D)``: the unnormalized penultimate features;
* ``feature_norm`` ``(N,)``: ``‖z‖₂`` (Haas et al., TMLR 2024; higher = more in-distribution);
* ``score`` ``(N,)``, float64: the calibrated detector's score (higher = more in-distribution), computed by the
  detector's own code with its fitted statistics (:mod:`l2ood.deploy.onnx_screen`);
* ``p_value`` ``(N,)``, float64: the conformal p-value ``p = (1 + #{i : s_i ≤ s}) / (n + 1)`` against the
  calibration's scores ``s_i`` (ties count), as :meth:`l2ood.metrics.conformal.Calibration.p_values`;
* ``verdict`` ``(N,)``, bool: True = out of distribution, as :meth:`Calibration.is_ood` (``p ≤ alpha`` when the
  calibration is conformal, else ``score < threshold``); a non-finite score gets ``p_value`` NaN and verdict True
  (fail closed, as :class:`l2ood.screen.Screener`);
* ``member_scores`` ``(N, K)``: each member's score, for a (Bonferroni) combined calibration only.

Every detector that scores a forward pass exports (27 of the 29; :func:`l2ood.deploy.onnx_screen.exportable_detectors`);
those that run the model on each image (ODIN, RankFeat) and Cauchy combinations are refused with a
:class:`~l2ood.errors.ConfigError`. Without a calibration of the requested name the model has ``logits``, ``z``,
``feature_norm`` and ``score`` (= ``feature_norm``) and no ``p_value``/``verdict`` (metadata ``l2ood.screen``
says so).

Metadata (``metadata_props``, JSON strings): ``l2ood.preprocessing``, ``l2ood.model``, ``l2ood.class_names``,
``l2ood.calibration`` (the calibration named at export, with its sorted scores, or ``null``), ``l2ood.detector``
(key, logit variant, hyper-parameters, fitted-statistics digest; ``members`` for a combination),
``l2ood.screen`` (the rule, alpha, threshold, n, the effective score threshold of the verdict, the verification
tolerances), ``l2ood.outputs`` (name → meaning), ``l2ood.provenance`` and ``l2ood.version``.

**Verification** (:func:`verify_onnx`, :func:`check_agreement`): onnxruntime against l2ood's own screen in PyTorch
(the same columns with their fitted statistics; :meth:`Calibration.p_values` / :meth:`~Calibration.is_ood`) on
uint8 images. With ``δ(s) = SCORE_RTOL · max(|s|, σ)``, ``σ`` the spread (max − min) of the calibration scores
(per member for a combination; ``σ = 0`` without a calibration) it requires:

1. every score (each member's) within ``δ`` of PyTorch's; logits within ``LOGIT_RTOL`` of the largest ``|logit|``;
   ``z`` within ``Z_RTOL`` of the largest ``|z|``; ``feature_norm`` within ``SCORE_RTOL`` (relative);
2. self-consistency: the graph's p-values, verdicts (and combined scores) equal what :class:`Calibration`
   computes from the graph's own scores (within ``P_VALUE_ATOL``; verdicts exactly);
3. p-values (and combined scores) equal PyTorch's within ``P_VALUE_ATOL`` on every image except *ambiguous*
   ones: those where a calibration score lies between PyTorch's score and the graph's (of some member; by rule 1
   the two are within ``δ``) — only there can the count ``#{s_i ≤ s}`` legitimately differ;
4. verdicts equal PyTorch's exactly on every image except those *at the boundary*: the effective threshold ``t*``
   (``verdict ⟺ score < t*``; :func:`~l2ood.deploy.onnx_screen.effective_threshold`) lies between PyTorch's
   score and the graph's (so within ``δ`` of PyTorch's score), or, for a combination, an ambiguous image.

Outputs that are not finite (NaN/inf), on either side, never verify. The counts of excused images are reported
(``ambiguous``, ``near_boundary``).

Never a broken file at the destination: a model whose outputs are not finite (NaN/inf) is refused before anything
is written, the export (and, when asked, its verification) runs on the serialized model in memory, and only a
model that passed is written — atomically (:func:`l2ood.runfolder.atomic_write_bytes`), so a failed export
leaves a previous file at ``out`` byte for byte as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..errors import L2oodError, RunError
from ..metrics.conformal import Calibration
from ..run import Run
from ..runfolder import atomic_write_bytes
from .onnx_screen import (
    BACKBONE_OUTPUTS,
    HEAD_OUTPUTS,
    SCORE_BLOCK,
    Backbone,
    ExportError,
    ScreenHead,
    compose,
    effective_threshold,
    screen_columns,
    torch_to_onnx,
)

if TYPE_CHECKING:
    import onnx

    from ..columns import Column
    from ..detectors import Extraction

SCORE_RTOL = 1e-3  # largest score difference a verified export may show, relative to max(|score|, σ) (module doc)
LOGIT_RTOL = 1e-3  # largest logit difference, relative to the largest |logit|, a verified export may show
Z_RTOL = 1e-3  # largest feature difference, relative to the largest |z|, a verified export may show
P_VALUE_ATOL = 1e-12  # largest p-value (and combined score) difference outside ambiguous images
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one serialized model (no external data here)

__all__ = ["LOGIT_RTOL", "P_VALUE_ATOL", "SCORE_RTOL", "Z_RTOL", "ExportError", "check_agreement", "export_backbone",
           "export_onnx", "export_verified", "onnx_metadata", "verify_onnx"]

_OUTPUTS = {
    "logits": "trained logits, float32 (N, K): the class decision is their argmax",
    "z": "unnormalized penultimate features, float32 (N, D)",
    "feature_norm": "||z||_2, float32 (N,), higher = more in-distribution",
}


def _cpu_run(run: Run | str | Path) -> Run:
    run = run if isinstance(run, Run) else Run.load(run, device="cpu", precision="fp32")
    if run.runtime.device.type != "cpu" or run.runtime.amp_dtype is not None:
        run = Run.load(run.path, device="cpu", precision="fp32") if run.path else run
    return run


def _probe(run: Run, batch_size: int) -> tuple[Tensor, Extraction]:
    """Seeded random test inputs and the model's outputs on them; :class:`ExportError` when those are not finite."""
    x = torch.rand(batch_size, run.config.in_channels, *run.config.image_size,
                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ext = run.forward_batch(x)
    if not (torch.isfinite(ext.logits).all() and torch.isfinite(ext.features).all()):
        raise ExportError("the model's outputs are not finite (NaN or inf) on test inputs: a broken model is never "
                          "exported; nothing was written")
    return x, ext


def export_backbone(run: Run | str | Path, *, opset: int = 18, batch_size: int = 2) -> onnx.ModelProto:
    """The run's model as ONNX, ``images → logits, z, feature_norm`` for any batch size (the first part of every
    export; :func:`export_onnx` takes it as ``backbone`` to skip tracing it again). A model whose outputs on
    random test inputs are not finite is refused (:class:`ExportError`)."""
    run = _cpu_run(run)
    x, _ = _probe(run, batch_size)
    model = Backbone(run.model.float().to("cpu")).eval()
    return torch_to_onnx(model, (x,), ["images"], list(BACKBONE_OUTPUTS), opset, dynamic_batch=True)


def _detector_meta(cols: list[Column], cal: Calibration | None) -> dict[str, Any]:
    def one(c: Column) -> dict[str, Any]:
        doc = (type(c.detector).__doc__ or "").strip().splitlines()
        return {"key": c.key, "name": c.name, "variant": c.variant, "hyper_parameters": c.hyper_parameters(),
                "needs_fit": c.needs_fit, "fitted_sha256": c.sha256,
                "score": doc[0].replace("``", "") if doc else c.name}

    if cal is None:
        return {"key": "feature_norm", "name": "feature_norm", "variant": "trained", "hyper_parameters": {},
                "needs_fit": False, "fitted_sha256": None, "score": "||z||_2 (higher = ID)"}
    if cal.is_combined:
        return {"key": cal.detector, "combine": cal.combine, "members": [one(c) for c in cols],
                "score": "ln(K * min_k p_k), the log of the unclipped Bonferroni-combined conformal p-value"}
    return one(cols[0])


def _screen_meta(cal: Calibration | None, name: str, block: int) -> dict[str, Any]:
    tol = {"score_rtol": SCORE_RTOL, "logit_rtol": LOGIT_RTOL, "z_rtol": Z_RTOL, "p_value_atol": P_VALUE_ATOL}
    if cal is None:
        return {"calibrated": False, "calibration": None,
                "note": f"the run has no calibration '{name}': score = feature_norm, no p_value or verdict outputs",
                "verification_tolerances": tol}
    t = effective_threshold(cal)
    return {
        "calibrated": True, "calibration": name, "combined": cal.is_combined, "rule": cal.rule(),
        "alpha": cal.alpha, "threshold": cal.threshold, "n": cal.n, "tpr": cal.tpr,
        "p_value": ("min(1, K * min_k p_k), p_k = (1 + #{i: s_ik <= s_k}) / (n + 1)" if cal.is_combined
                    else "(1 + #{i: s_i <= score}) / (n + 1), s_i the calibration scores (ties count)"),
        "verdict": ("OoD when p_value <= alpha * (1 + 1e-12)" if cal.is_combined else
                    f"OoD when p_value <= {cal.alpha}" if cal.alpha is not None else
                    f"OoD when score < {cal.threshold!r}"),
        "effective_threshold": t if t is not None and math.isfinite(t) else None,
        "effective_threshold_rule": (None if t is None else "verdict OoD <=> score < effective_threshold" +
                                     ("" if math.isfinite(t) else " (every score is OoD)" if t > 0
                                      else " (no score is OoD)")),
        "non_finite": "a score that is not finite gets p_value NaN and verdict OoD (fail closed)",
        "score_block": block, "verification_tolerances": tol,
    }


def export_onnx(run: Run | str | Path, out: str | Path, *, calibration: str = "default", opset: int = 18,
                batch_size: int = 2, verify: Callable[[bytes], None] | None = None, block: int = SCORE_BLOCK,
                backbone: onnx.ModelProto | None = None) -> Path:
    """Export ``run`` with its calibration ``calibration`` (when the run has one of that name) to ``out`` (see the
    module doc); returns the path.

    ``verify`` (e.g. :func:`verify_onnx` on test images) is called with the serialized model before it is
    written; when it raises, nothing is written. A model whose PyTorch outputs are not finite is refused
    (:class:`ExportError`), and so is a calibration the graph cannot hold (:class:`~l2ood.errors.ConfigError`:
    a detector that runs the model on each image, a Cauchy combination). ``backbone``: this run's
    :func:`export_backbone`, to reuse; ``block``: rows per block of the screen head (:mod:`~.onnx_screen`)."""
    try:
        import onnx
    except ImportError:
        raise L2oodError("ONNX export needs the 'onnx' and 'onnxscript' packages: "
                         "pip install 'l2ood[export]'") from None
    run = _cpu_run(run)
    cal = run.calibration(calibration)
    cols: list[Column] = []
    if cal is not None:
        if cal.weights_sha256 not in (None, run.record.weights_sha256):
            raise RunError(f"calibration '{calibration}' was made with other weights "
                           f"({str(cal.weights_sha256)[:12]}…) than the run's ({run.record.weights_sha256[:12]}…); "
                           "calibrate again")
        cols = screen_columns(run, cal, calibration)  # refusals before anything is traced
    if block < 1:
        raise ExportError(f"block must be >= 1, got {block}")
    _, ext = _probe(run, batch_size)  # a broken model is refused even with a backbone given
    base = backbone if backbone is not None else export_backbone(run, opset=opset, batch_size=batch_size)
    head_proto, head = None, None
    if cal is not None:
        head = ScreenHead(cols, run.head, cal).eval()
        rows = torch.arange(block) % batch_size  # the head is traced for exactly ``block`` rows
        head_proto = torch_to_onnx(head, (ext.features[rows], ext.logits[rows]), ["z", "logits"],
                                   head.output_names, opset, dynamic_batch=False)
    proto = compose(base, head_proto, block)
    outputs = {**_OUTPUTS, "score": "feature_norm in float64 (N,) (no calibration)"}
    if head is not None:
        outputs.update({k: HEAD_OUTPUTS[k] for k in head.output_names})
    if cal is not None and cal.is_combined:
        outputs["score"] = ("ln(K * min_k p_k), the log of the unclipped Bonferroni-combined conformal p-value, "
                            "float64 (N,), higher = more in-distribution; NaN where a member's score is not finite")
        outputs["p_value"] = "min(1, exp(score)) = min(1, K * min_k p_k), float64 (N,)"
    cfg = run.config
    meta: dict[str, Any] = {
        "l2ood.preprocessing": run.record.preprocessing.model_dump(mode="json"),
        "l2ood.model": cfg.to_dict(),
        "l2ood.class_names": cfg.class_names,
        "l2ood.calibration": None if cal is None else {**asdict(cal), "name": calibration},
        "l2ood.detector": _detector_meta(cols, cal),
        "l2ood.screen": _screen_meta(cal, calibration, block),
        "l2ood.provenance": run.record.provenance.model_dump(mode="json"),
        "l2ood.version": __version__,
        "l2ood.inputs": "images: float32 (N, C, H, W) on [0, 1] in the preprocessing's channels/size",
        "l2ood.outputs": outputs,
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, json.dumps(v, allow_nan=False)
    if proto.ByteSize() > MAX_PROTO_BYTES:
        raise ExportError(f"the model would take {proto.ByteSize() / 2**30:.1f} GiB, beyond protobuf's 2 GiB for one "
                          "file (a large fitted bank: KNN, NNGuide, Relation); nothing was written")
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if verify is not None:
        verify(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)  # a temporary file beside it, then a rename: never half a model at ``out``
    return out


def onnx_metadata(path: str | Path | bytes) -> dict[str, Any]:
    """The ``l2ood.*`` metadata of an exported model (a file or its bytes), decoded from JSON."""
    import onnx

    proto = (onnx.load_from_string(bytes(path)) if isinstance(path, bytes)
             else onnx.load(str(path), load_external_data=False))
    return {p.key: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("l2ood.")}


def _count_in_band(cal_sorted: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``#{i : lo ≤ cal_i ≤ hi}`` per row."""
    return np.searchsorted(cal_sorted, hi, side="right") - np.searchsorted(cal_sorted, lo, side="left")


def verify_onnx(run: Run | str | Path, path: str | Path | bytes, images: Tensor,
                batch_size: int = 256) -> dict[str, float]:
    """Compare the exported model (a file, or its serialized bytes) with l2ood's screen in PyTorch (fp32, CPU) on
    uint8 images in the model's format, following the rules of the module doc.

    The calibration is the one embedded in the model (``l2ood.calibration``); its detectors are loaded from ``run``
    with the fitted statistics the calibration names (:meth:`l2ood.columns.Column.load`). Returns ``n``; the
    largest absolute and relative score differences (``max_abs_score_diff``, ``max_rel_score_diff``: relative to
    ``max(|s|, σ)``), of the logits (relative to the largest ``|logit|``), of ``z`` and of ``feature_norm``; the
    fraction of equal predicted classes; and, for a calibrated model, the fraction of equal verdicts
    (``same_verdict``) and p-values (``same_p_value``), the counts of excused images (``ambiguous``,
    ``near_boundary``) and of disagreements that are not excused (``p_value_mismatch``, ``score_mismatch``,
    ``verdict_mismatch``, ``inconsistent``), which :func:`check_agreement` requires to be 0. Outputs that are
    not finite, on either side, are never "verified": :class:`ExportError`. No image to compare on is an
    :class:`ExportError` too."""
    import onnxruntime as ort

    if len(images) == 0:
        raise ExportError("no images to verify the export on")
    run = _cpu_run(run)
    model = bytes(path) if isinstance(path, bytes) else str(path)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if not set(BACKBONE_OUTPUTS) | {"score"} <= set(names):
        raise ExportError(f"not an l2ood screen export: outputs {names} (need logits, z, feature_norm, score); "
                          "export it again")
    meta = sess.get_modelmeta().custom_metadata_map
    cal_meta = json.loads(meta.get("l2ood.calibration", "null"))
    cal = name = None
    if cal_meta is not None and "p_value" in names:
        name = str(cal_meta.get("name", "default"))
        cal = Calibration.from_dict({k: v for k, v in cal_meta.items() if k != "name"})
    cols = screen_columns(run, cal, name or "default") if cal is not None else []
    ref: dict[str, list[np.ndarray]] = {k: [] for k in ("logits", "z", "feature_norm", "members")}
    got: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        ext = run.forward_batch(x)
        ref["logits"].append(ext.logits.numpy())
        ref["z"].append(ext.features.numpy())
        ref["feature_norm"].append(ext.features.norm(dim=1).numpy())
        ref["members"].append(np.stack([c.score(ext, run.head) for c in cols], axis=1) if cols
                              else ext.features.norm(dim=1).double().numpy()[:, None])
        for k, v in zip(names, sess.run(None, {"images": x.float().div(255.0).numpy()}), strict=True):
            got[k].append(v)
    r = {k: np.concatenate(v) for k, v in ref.items()}
    o = {k: np.concatenate(v) for k, v in got.items()}
    members_o = o["member_scores"] if "member_scores" in o else o["score"][:, None]
    for what, a in (("PyTorch logits", r["logits"]), ("PyTorch z", r["z"]), ("PyTorch scores", r["members"]),
                    ("ONNX logits", o["logits"]), ("ONNX z", o["z"]), ("ONNX feature_norm", o["feature_norm"]),
                    ("ONNX scores", members_o), ("ONNX score", o["score"]),
                    *((("ONNX p_value", o["p_value"]),) if "p_value" in o else ())):
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise ExportError(f"verification failed: {bad} of the {what} outputs are not finite (NaN or inf) on "
                              f"{len(r['logits'])} test images; a model with non-finite outputs is never verified")
    n = len(r["logits"])
    rl, gl = r["logits"], o["logits"]
    max_logit_diff = float(np.abs(rl - gl).max())
    cal_sets = ([np.asarray(c, dtype=np.float64) for c in (cal.member_scores or [cal.scores])]
                if cal is not None else [np.empty(0)])
    spread = [float(c.max() - c.min()) if c.size else 0.0 for c in cal_sets]
    members_t = r["members"]
    if members_t.shape != members_o.shape:
        raise ExportError(f"verification failed: the model gives scores of shape {members_o.shape}, PyTorch "
                          f"{members_t.shape}")
    scale = np.maximum(np.maximum(np.abs(members_t), np.asarray(spread)[None, :]), 1e-12)
    diff = np.abs(members_o - members_t)
    res: dict[str, float] = {
        "n": float(n), "max_abs_score_diff": float(diff.max()), "max_rel_score_diff": float((diff / scale).max()),
        "max_abs_logit_diff": max_logit_diff,
        "max_rel_logit_diff": max_logit_diff / max(float(np.abs(rl).max()), 1e-12),
        "max_rel_z_diff": float(np.abs(r["z"] - o["z"]).max()) / max(float(np.abs(r["z"]).max()), 1e-12),
        "max_rel_feature_norm_diff": float((np.abs(r["feature_norm"] - o["feature_norm"])
                                            / np.maximum(np.abs(r["feature_norm"]), 1e-12)).max()),
        "same_class": float((rl.argmax(1) == gl.argmax(1)).mean()),
    }
    if cal is None:
        return res
    lo, hi = np.minimum(members_t, members_o), np.maximum(members_t, members_o)  # within δ of each other (rule 1)
    ambiguous = np.zeros(n, dtype=bool)
    for k, c in enumerate(cal_sets):
        ambiguous |= _count_in_band(c, lo[:, k], hi[:, k]) > 0
    if cal.is_combined:
        s_t, s_own = cal.combined_score(members_t), cal.combined_score(members_o)
        near = ambiguous
    else:
        s_t, s_own = members_t[:, 0], o["score"]
        t = effective_threshold(cal)
        near = (lo[:, 0] <= t) & (t <= hi[:, 0]) if t is not None else np.zeros(n, dtype=bool)
    p_t, v_t = cal.p_values(s_t), cal.is_ood(s_t)
    p_o, v_o, score_o = o["p_value"], o["verdict"].astype(bool), o["score"]
    p_own, v_own = cal.p_values(s_own), cal.is_ood(s_own)
    p_close = np.abs(p_o - p_t) <= P_VALUE_ATOL
    score_close = np.abs(score_o - s_t) <= P_VALUE_ATOL * np.maximum(1.0, np.abs(s_t))
    inconsistent = (np.abs(p_o - p_own) > P_VALUE_ATOL) | (v_o != v_own)
    if cal.is_combined:
        inconsistent |= np.abs(score_o - s_own) > P_VALUE_ATOL * np.maximum(1.0, np.abs(s_own))
    res.update({
        "same_verdict": float((v_o == v_t).mean()), "same_p_value": float(p_close.mean()),
        "ambiguous": float(ambiguous.sum()), "near_boundary": float(near.sum()),
        "p_value_mismatch": float((~p_close & ~ambiguous).sum()),
        "score_mismatch": float((~score_close & ~ambiguous).sum()) if cal.is_combined else 0.0,
        "verdict_mismatch": float(((v_o != v_t) & ~near).sum()),
        "inconsistent": float(inconsistent.sum()),
    })
    return res


def check_agreement(v: dict[str, float], score_rtol: float = SCORE_RTOL, logit_rtol: float = LOGIT_RTOL) -> None:
    """Raise :class:`ExportError` unless a :func:`verify_onnx` result shows the export agreeing with PyTorch (the
    rules of the module doc): scores within ``score_rtol`` (relative to ``max(|s|, σ)``), logits within
    ``logit_rtol`` of the largest ``|logit|``, ``z`` within :data:`Z_RTOL` of the largest ``|z|``,
    ``feature_norm`` within ``score_rtol`` (relative), and no p-value, score or verdict disagreement outside the
    excused images, no inconsistency between the graph's p-values/verdicts and its own scores. Keys a result does
    not have (an uncalibrated model has no verdicts) are not checked."""
    if not v["max_rel_score_diff"] <= score_rtol:
        raise ExportError(f"verification failed: the score differs from PyTorch by up to "
                          f"{v['max_rel_score_diff']:.3g} (relative; allowed {score_rtol:g})")
    if not v["max_rel_logit_diff"] <= logit_rtol:
        raise ExportError(f"verification failed: logits differ from PyTorch by up to {v['max_abs_logit_diff']:.3g} "
                          f"({v['max_rel_logit_diff']:.3g} of the largest |logit|; allowed {logit_rtol:g})")
    for key, tol, what in (("max_rel_z_diff", Z_RTOL, "z differs from PyTorch by up to {:.3g} of the largest |z|"),
                           ("max_rel_feature_norm_diff", score_rtol,
                            "feature_norm differs from PyTorch by up to {:.3g} (relative)")):
        if key in v and not v[key] <= tol:
            raise ExportError(f"verification failed: {what.format(v[key])} (allowed {tol:g})")
    for key, what in (("p_value_mismatch", "p-values differ from PyTorch's"),
                      ("score_mismatch", "combined scores differ from PyTorch's"),
                      ("verdict_mismatch", "verdicts differ from PyTorch's away from the threshold"),
                      ("inconsistent", "p-values or verdicts do not follow the calibration from the model's own "
                                       "scores")):
        if key in v and not v[key] == 0:
            raise ExportError(f"verification failed: {what} on {v[key]:.0f} of {v.get('n', 0):.0f} images")


def export_verified(run: Run, out: str | Path, *, calibration: str = "default", images: Tensor | None = None,
                    backbone: onnx.ModelProto | None = None) -> tuple[Path, dict[str, float] | None]:
    """Export ``run`` to ``out``; with ``images``, only after :func:`verify_onnx` and :func:`check_agreement`
    passed on the serialized model (else :class:`ExportError`, and nothing is written). Returns the path and the
    verification (``None`` without images)."""
    result: dict[str, float] = {}

    def check(data: bytes) -> None:
        assert images is not None
        v = verify_onnx(run, data, images)
        check_agreement(v)
        result.update(v)

    path = export_onnx(run, out, calibration=calibration, verify=check if images is not None else None,
                       backbone=backbone)
    return path, (result if images is not None else None)
