"""The calibrated screen as ONNX: a detector's score, its conformal p-value and the verdict, after the model.

:func:`l2ood.deploy.export.export_onnx` builds the graph from two exports (``torch.onnx.export(..., dynamo=True)``)
joined here (:func:`compose`)::

    images (N, C, H, W) ── backbone (any N) ──► logits (N, K), z (N, D), feature_norm (N,)
    (z, logits): the last row repeated up to a multiple of B rows, cut into blocks of B rows
        ── Scan over the blocks, body = the screen head (:class:`ScreenHead`) traced for exactly B rows
        ──► score (N,), p_value (N,), verdict (N,) once the padding rows are cut off.

**The score** is the detector's own code: :class:`ScreenHead` builds an
:class:`~l2ood.detectors.Extraction` from ``(z, logits)`` and calls the column's ``Detector.score`` with its
fitted statistics, in the column's logit variant, as float64 (:meth:`l2ood.columns.Column.score_tensor`, which
:meth:`l2ood.columns.Column.score` returns as numpy). Detectors process rows in chunks with Python loops over
``len(x)``, which ``torch.export`` can only trace for a fixed number of rows; so the head is traced for ``B``
rows (:data:`SCORE_BLOCK`) and ONNX's ``Scan`` repeats it over the blocks. Every detector scores each row on its
own (no batch statistics), so the padding rows change no other row's score; they are discarded.

**The p-value** is split conformal (:class:`l2ood.metrics.conformal.Calibration`)::

    p(s) = (1 + #{i : s_i ≤ s}) / (n + 1)

with ``#{i : s_i ≤ s}`` counted by a binary search over the sorted calibration scores (:func:`conformal_counts`;
equal to ``numpy.searchsorted(scores, s, side="right")``, ties counted as ``≤``), in float64, so the p-value is
the one :meth:`Calibration.p_values` gives for the same score, bit for bit.

**The verdict** (True = out of distribution) is :meth:`Calibration.is_ood`: ``p ≤ alpha`` when the calibration is
conformal (``alpha`` set), else ``score < threshold``. A conformal verdict is a threshold on the score too:
``p(s) ≤ alpha ⟺ s < t*`` with ``t* = s_(m+1)``, the (m+1)-th smallest calibration score, where ``m`` is the
largest count with ``(1 + m)/(n + 1) ≤ alpha`` (:func:`effective_threshold`). A score that is not finite gets
``p_value`` NaN and verdict True (fail closed), as :class:`l2ood.screen.Screener` decides.

**Bonferroni combinations** (``Calibration.members``): each member's score and conformal p-value ``p_k`` as
above; ``score = ln(K · min_k p_k)`` (the unclipped combined p-value's log), ``p = min(1, exp(score))``,
OoD when ``p ≤ alpha·(1 + 1e-12)`` — :meth:`Calibration.combined_score`, :meth:`~Calibration.p_values` and
:meth:`~Calibration.is_ood`, in the same float64 operations. The members' scores are an extra output
``member_scores`` ``(N, K)``. Cauchy combinations are refused: only the Bonferroni rule is built into the graph
(the Cauchy rule's float64 ``tan``/``atan2`` would need their own agreement analysis).

**Refused** (:class:`~l2ood.errors.ConfigError`, before anything is traced): detectors that run the model on each
image (:attr:`Detector.needs_model`: ODIN's input gradients, RankFeat's feature maps before pooling) — they are
not functions of ``z`` and the logits.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..columns import Column, check_score_versions, parse_spec
from ..detectors import DETECTORS, Extraction, Head
from ..errors import ConfigError, L2oodError

if TYPE_CHECKING:
    import onnx

    from ..metrics.conformal import Calibration
    from ..run import Run

SCORE_BLOCK = 32  # rows the screen head is traced for; ONNX's Scan repeats it over blocks of this many rows
BONFERRONI_SLACK = 1e-12  # Calibration.is_ood: a combined p-value counts as ≤ alpha up to this relative slack

#: why a detector that runs the model on each image cannot be part of the graph
MODEL_IN_THE_LOOP = {
    "odin": "it perturbs each input along the gradient of the loss w.r.t. the image and runs the model again",
    "rankfeat": "it removes the rank-1 component of feature maps before pooling and runs the rest of the network",
}

#: the screen head's outputs, in order: name → meaning (``member_scores`` only for combined calibrations)
HEAD_OUTPUTS = {
    "score": "the calibrated detector's score, float64 (N,), higher = more in-distribution",
    "p_value": "conformal p-value (1 + #{i: s_i <= score}) / (n + 1) against the calibration scores s_i, "
               "float64 (N,); NaN where the score is not finite",
    "verdict": "bool (N,), True = out of distribution (Calibration.is_ood: p_value <= alpha when alpha is set, "
               "else score < threshold); True where the score is not finite (fail closed)",
    "member_scores": "float64 (N, K): each member detector's score (combined calibrations only)",
}


class ExportError(L2oodError):
    """The export or its verification failed; nothing was written at the destination."""


def exportable_detectors() -> list[str]:
    """Registered detectors that can be part of an exported screen: every one that scores a forward pass
    (``z`` and the logits), i.e. all but those that run the model on each image (:data:`MODEL_IN_THE_LOOP`)."""
    return [n for n, cls in DETECTORS.items() if not cls.needs_model]


def screen_columns(run: Run, cal: Calibration, name: str = "default") -> list[Column]:
    """The columns of calibration ``cal`` (named ``name``) with the fitted statistics it was made with
    (:meth:`l2ood.columns.Column.load`: the files of the recorded SHA-256), ready to trace; refuses
    (:class:`~l2ood.errors.ConfigError`) what the graph cannot hold: detectors that run the model on each image
    and Cauchy combinations, and (:class:`~l2ood.errors.RunError`) calibrations made with another score version
    of a detector (:func:`l2ood.columns.check_score_versions`)."""
    if cal.is_combined and cal.combine != "bonferroni":
        raise ConfigError(f"calibration '{name}' combines {', '.join(cal.detectors)} by the {cal.combine} rule; "
                          "only Bonferroni combinations (the default) can be exported to ONNX. Calibrate the "
                          "combination with --combine bonferroni under another name and export that")
    check_score_versions(cal, name)  # scores on an older scale: the graph would hold stale thresholds
    cols = parse_spec(cal.detectors, run.config.head)
    for c in cols:
        if c.needs_model:
            why = MODEL_IN_THE_LOOP.get(c.name, "it runs the model on each image")
            raise ConfigError(
                f"calibration '{name}' uses detector '{c.key}', which cannot be exported to ONNX: {why}, so its "
                "score is not a function of the features z and the logits. Exportable detectors: "
                f"{', '.join(exportable_detectors())}. Calibrate one of them under another name "
                "(l2ood calibrate RUN --detectors KEY --name NAME) and export that (--calibration NAME)")
    for c in cols:
        c.load(run, cal.fitted.get(c.key))
    return cols


def conformal_counts(cal_sorted: Tensor, s: Tensor) -> Tensor:
    """``#{i : cal_i ≤ s}`` for each entry of ``s`` (int64), by binary search over ``cal_sorted`` (ascending,
    length ``n ≥ 1``): ``bit_length(n)`` halvings of ``[lo, hi)``, each a gather and two selects, so it traces to
    ONNX with a fixed number of steps. Equal to ``numpy.searchsorted(cal_sorted, s, side="right")`` for every ``s``
    that is not NaN (``+inf`` counts ``n``, ``-inf`` counts 0).

    >>> conformal_counts(torch.tensor([1.0, 2.0, 2.0, 3.0], dtype=torch.float64),
    ...                  torch.tensor([0.5, 2.0, 2.5, 9.0], dtype=torch.float64)).tolist()
    [0, 3, 3, 4]
    """
    n = int(cal_sorted.shape[0])
    lo = torch.zeros_like(s, dtype=torch.int64)
    hi = torch.full_like(s, n, dtype=torch.int64)
    for _ in range(n.bit_length()):
        active = lo < hi
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        right = cal_sorted[mid.clamp(max=n - 1)] <= s  # s_mid ≤ s: the answer is above mid
        lo = torch.where(active & right, mid + 1, lo)
        hi = torch.where(active & ~right, mid, hi)
    return lo


def conformal_p(cal_sorted: Tensor, s: Tensor) -> Tensor:
    """``(1 + #{i : cal_i ≤ s}) / (n + 1)`` in float64 (:func:`l2ood.metrics.conformal.conformal_p_values`)."""
    return (1.0 + conformal_counts(cal_sorted, s).double()) / (cal_sorted.shape[0] + 1.0)


def effective_threshold(cal: Calibration) -> float | None:
    """The score ``t`` with ``is_ood(s) ⟺ s < t`` for a single-detector calibration (``None`` for a combined one).

    Threshold calibrations: ``t = threshold``. Conformal ones: ``p(s) ≤ alpha ⟺ #{s_i ≤ s} ≤ m`` with ``m`` the
    largest count whose p-value ``(1 + m)/(n + 1)`` (the same float64 expression) is ``≤ alpha``, and
    ``#{s_i ≤ s} ≤ m ⟺ s < s_(m+1)`` (sorted scores, 1-based); ``inf`` when every score is OoD (m = n), ``-inf``
    when none is."""
    if cal.is_combined:
        return None
    if cal.alpha is None:
        return float(cal.threshold)
    n = len(cal.scores)
    p = (1.0 + np.arange(n + 1, dtype=np.float64)) / (n + 1.0)
    ok = np.nonzero(p <= cal.alpha)[0]
    if ok.size == 0:
        return -math.inf
    m = int(ok[-1])
    return math.inf if m >= n else float(cal.scores[m])


class ScreenHead(nn.Module):
    """``(z, logits) → (score, p_value, verdict[, member_scores])`` of a calibration (see the module doc)."""

    def __init__(self, columns: list[Column], head: Head, cal: Calibration) -> None:
        super().__init__()
        self.columns = columns
        self.run_head = head
        self.cal = cal
        sets = cal.member_scores if cal.member_scores is not None else [cal.scores]
        self.cal_sorted = [torch.tensor(c, dtype=torch.float64) for c in sets]  # validated ascending
        if len(sets) != len(columns):
            raise ConfigError(f"calibration holds {len(sets)} score lists for {len(columns)} detectors")

    @property
    def output_names(self) -> list[str]:
        return ["score", "p_value", "verdict"] + (["member_scores"] if self.cal.is_combined else [])

    def forward(self, z: Tensor, logits: Tensor) -> tuple[Tensor, ...]:
        ext = Extraction(z, logits)
        members = [c.score_tensor(ext, self.run_head) for c in self.columns]
        cal = self.cal
        if cal.is_combined:
            assert cal.alpha is not None
            p_k = torch.stack([conformal_p(c, s) for c, s in zip(self.cal_sorted, members, strict=True)], dim=1)
            finite = torch.stack([torch.isfinite(s) for s in members], dim=1).all(dim=1)
            score = torch.log(float(len(members)) * p_k.amin(dim=1))
            score = torch.where(finite, score, torch.full_like(score, math.nan))
            p = torch.minimum(torch.exp(score), torch.ones_like(score))
            ood = p <= cal.alpha * (1 + BONFERRONI_SLACK)
        else:
            score = members[0]
            p = conformal_p(self.cal_sorted[0], score)
            ood = p <= cal.alpha if cal.alpha is not None else score < cal.threshold
        finite = torch.isfinite(score)
        p = torch.where(finite, p, torch.full_like(p, math.nan))
        verdict = ood | ~finite  # fail closed (a logical or: ONNX Runtime has no Where for bool values)
        out: tuple[Tensor, ...] = (score, p, verdict)
        if cal.is_combined:
            out = (*out, torch.stack(members, dim=1))
        return out


class Backbone(nn.Module):
    """``images → (logits, z, feature_norm)``: the model's forward pass as the graph's first part."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images)
        return out.logits, out.features, out.score


BACKBONE_OUTPUTS = ("logits", "z", "feature_norm")


def _cdist(x1: Any, x2: Any, p: float = 2.0, compute_mode: int | None = None) -> Any:
    """``aten._cdist_forward`` (torch.cdist; FDBD's distances between weight rows), which the ONNX exporter lacks:
    ``sqrt(Σ (x1_i − x2_j)²)`` for ``p = 2``."""
    from onnxscript import opset18 as op

    del compute_mode  # how torch computes it (matrix products or differences); the value is the same
    if p != 2.0:
        raise ConfigError(f"torch.cdist with p = {p} has no ONNX translation here (only p = 2)")
    axes: Any = ([-2], [-3], [-1])  # int lists become INT64 constants (onnxscript's stubs want tensors)
    d = op.Sub(op.Unsqueeze(x1, axes[0]), op.Unsqueeze(x2, axes[1]))
    return op.Sqrt(op.ReduceSum(op.Mul(d, d), axes[2], keepdims=0))


def torch_to_onnx(module: nn.Module, args: tuple[Tensor, ...], input_names: list[str], output_names: list[str],
                  opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    """``torch.onnx.export(..., dynamo=True)`` of ``module`` (the first dimension of every input dynamic when
    ``dynamic_batch``), its own deprecation notices silenced; a failure is an :class:`ExportError` naming it."""
    dynamic_shapes = None
    if dynamic_batch:
        n = torch.export.Dim("n", min=1, max=1_000_000)
        dynamic_shapes = tuple({0: n} for _ in args)
    try:
        with warnings.catch_warnings():  # torch.export's own deprecation notices are not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            # nan_to_num's ±DBL_MAX fill values pass through a float32 constant on their way to float64 (±inf)
            warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
            program = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                        dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=opset,
                                        verbose=False,
                                        custom_translation_table={torch.ops.aten._cdist_forward.default: _cdist})
    except L2oodError:
        raise
    except Exception as e:  # the exporter raises many types; the user gets one line, not its traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"torch.onnx.export failed ({type(e).__name__}: {first[:300]}); nothing was written") from e
    if program is None:
        raise ExportError("torch.onnx.export returned no program; nothing was written")
    proto = program.model_proto
    if dynamic_batch and proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"):
        raise ExportError("torch.onnx.export fixed the batch size of the graph instead of keeping it dynamic; "
                          "nothing was written")
    return proto


def _const(name: str, values: list[int]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                             [len(values)], values))


def compose(backbone: onnx.ModelProto, head: onnx.ModelProto | None, block: int = SCORE_BLOCK) -> onnx.ModelProto:
    """One model: ``backbone`` (``images → logits, z, feature_norm``, any batch size) followed by ``head``
    (``z, logits → score, p_value, verdict[, member_scores]`` traced for exactly ``block`` rows) run by a ``Scan``
    over blocks of ``block`` rows (see the module doc). Without a head, ``score`` is ``feature_norm`` in float64."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(backbone)
    g = model.graph
    outs = {o.name: o for o in g.output}
    if tuple(outs) != BACKBONE_OUTPUTS:
        raise ExportError(f"the backbone graph has outputs {list(outs)}, expected {list(BACKBONE_OUTPUTS)}")
    batch = outs["logits"].type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or "N"
    if head is None:
        g.node.append(helper.make_node("Cast", ["feature_norm"], ["score"], to=TensorProto.DOUBLE))
        g.output.append(helper.make_tensor_value_info("score", TensorProto.DOUBLE, [batch_dim]))
        return model
    d = outs["z"].type.tensor_type.shape.dim[1].dim_value
    k = outs["logits"].type.tensor_type.shape.dim[1].dim_value
    if d < 1 or k < 1:
        raise ExportError("the backbone graph's feature and logit widths are not static")
    body = onnx.compose.add_prefix(head, "screen.")
    bg = body.graph
    if [i.name for i in bg.input] != ["screen.z", "screen.logits"]:
        raise ExportError(f"the screen head has inputs {[i.name for i in bg.input]}, expected z and logits")
    for i, width in zip(bg.input, (d, k), strict=True):
        dims = [x.dim_value for x in i.type.tensor_type.shape.dim]
        if dims != [block, width]:
            raise ExportError(f"the screen head was traced for inputs {dims}, expected {[block, width]}")
    p = "screen/"
    nodes = [
        _const(p + "block", [block]), _const(p + "zero", [0]),
        _const(p + "z_shape", [-1, block, d]), _const(p + "logits_shape", [-1, block, k]),
        _const(p + "flat", [-1]), _const(p + "start", [0]),
        helper.make_node("Shape", ["z"], [p + "n"], start=0, end=1),
        helper.make_node("Mod", [p + "n", p + "block"], [p + "rem"]),
        helper.make_node("Sub", [p + "block", p + "rem"], [p + "gap"]),
        helper.make_node("Mod", [p + "gap", p + "block"], [p + "pad"]),  # rows added: (−N) mod B
        helper.make_node("Concat", [p + "zero", p + "zero", p + "pad", p + "zero"], [p + "pads"], axis=0),
        helper.make_node("Pad", ["z", p + "pads"], [p + "z_pad"], mode="edge"),  # the last row repeated
        helper.make_node("Pad", ["logits", p + "pads"], [p + "logits_pad"], mode="edge"),
        helper.make_node("Reshape", [p + "z_pad", p + "z_shape"], [p + "z_blocks"]),
        helper.make_node("Reshape", [p + "logits_pad", p + "logits_shape"], [p + "logits_blocks"]),
    ]
    head_outs = [o.name.removeprefix("screen.") for o in bg.output]
    nodes.append(helper.make_node("Scan", [p + "z_blocks", p + "logits_blocks"],
                                  [f"{p}{o}_blocks" for o in head_outs], body=bg, num_scan_inputs=2))
    for o, info in zip(head_outs, bg.output, strict=True):
        if len(info.type.tensor_type.shape.dim) == 1:  # (M, B) → (M·B,)
            nodes.append(helper.make_node("Reshape", [f"{p}{o}_blocks", p + "flat"], [f"{p}{o}_padded"]))
        else:  # (M, B, K) → (M·B, K)
            nodes.append(helper.make_node("Flatten", [f"{p}{o}_blocks"], [f"{p}{o}_padded"], axis=2))
        nodes.append(helper.make_node("Slice", [f"{p}{o}_padded", p + "start", p + "n", p + "zero"], [o]))
        elem = info.type.tensor_type.elem_type
        shape = [batch_dim] + [x.dim_value for x in info.type.tensor_type.shape.dim[1:]]
        g.output.append(helper.make_tensor_value_info(o, elem, shape))
    g.node.extend(nodes)
    known = {f.name for f in model.functions}
    model.functions.extend(f for f in body.functions if f.name not in known)
    have = {(o.domain, o.version) for o in model.opset_import}
    domains = {o.domain for o in model.opset_import}
    for o in body.opset_import:
        if o.domain not in domains:
            model.opset_import.append(o)
        elif (o.domain, o.version) not in have:
            raise ExportError(f"the backbone and the screen head use different versions of opset '{o.domain}'")
    return model
