"""Softmax-family scores free of float saturation (issue 26).

On confident inputs (logit margins of 30-100 between the top logit and the rest, as an L2 head's raw logits have)
the softmax rounds to one-hot: the float32 MSP of 0.1 was exactly 1.0 for all of them, so they tied. Every
softmax-family detector now computes in the log domain in float64 (:mod:`l2ood.detectors._softmax`). Checked here:

* margins 30, 40, ..., 100 (and 200, 400, 700; rows with a tie at the top; 10 and 20 classes, i.e. both layouts)
  give distinct scores equal to a 360-digit mpmath reference, hence in the exact order, for msp, temp_scale, odin,
  entropy and gen; klm as far as one float64 can hold it (see its module doc);
* the 0.1 float32 formulas tie there (or are far from the reference): these tests fail without the fix;
* where nothing saturates (margins below 5) the AUROC is exactly the old one;
* the helper's ``log1p`` survives the ONNX export (``torch.log1p`` becomes ``Log(1 + x)``) and the exported scores
  keep the saturated rows apart;
* calibrations record the score version; one made with the old scale is refused with one clear message.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from l2ood.columns import check_score_versions
from l2ood.detectors import DETECTORS, Extraction, Head, make_detector
from l2ood.detectors._softmax import log1p, top_softmax
from l2ood.errors import RunError
from l2ood.metrics.conformal import Calibration, calibrate, calibrate_combined
from l2ood.runtime import resolve_runtime

mpmath.mp.dps = 360  # e^-700 ≈ 1e-304 next to numbers of order 1: the reference needs ~320 digits
MARGINS = [30, 40, 50, 60, 70, 80, 90, 100, 200, 400, 700]
TEMPERATURE = 1.5
TIE_MARGINS = [3, 10, 20]  # below a tie at the top: p_top ≈ 1/2, resolvable in float64


def _head(c: int) -> Head:
    return Head(torch.zeros(c, 2), torch.zeros(c), mode="ce")


def _saturated(c: int) -> torch.Tensor:
    """One row per margin (top logit 4.5, the others 4.5 − m − j/4: exact in float32) and rows whose top two tie."""
    rows = [[4.5] + [4.5 - m - 0.25 * j for j in range(c - 1)] for m in MARGINS]
    rows += [[4.5, 4.5] + [4.5 - m - 0.5 * j for j in range(c - 2)] for m in TIE_MARGINS]
    f = torch.tensor(rows, dtype=torch.float32)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(c))
    return f[:, perm]  # the top class is not the first one


def _ext(f: torch.Tensor) -> Extraction:
    return Extraction(torch.zeros(f.shape[0], 2), f)


# ------------------------------------------------------------------------------------------------ the reference

def _mp_log_softmax(row: list[float], t: float = 1.0) -> list[Any]:
    x = [mpmath.mpf(v) / mpmath.mpf(t) for v in row]  # float32 logits as exact numbers
    lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in x))
    return [v - lse for v in x]


def _reference(name: str, f: torch.Tensor, **kw: Any) -> np.ndarray:
    out = []
    for row in f.double().tolist():
        lp = _mp_log_softmax(row, kw.get("t", 1.0))
        p = [mpmath.exp(v) for v in lp]
        if name in ("msp", "temp_scale", "odin"):
            v = max(lp)
        elif name == "entropy":
            v = mpmath.fsum(a * b for a, b in zip(p, lp, strict=True))
        elif name == "gen":
            top = sorted(p, reverse=True)[: kw["top_m"]]
            v = -mpmath.fsum((q * (1 - q)) ** mpmath.mpf(kw["gamma"]) for q in top)
        elif name == "klm":
            logq = kw["log_templates"].tolist()
            v = max(mpmath.fsum(a * mpmath.mpf(b) for a, b in zip(p, q, strict=True)) for q in logq) \
                - mpmath.fsum(a * b for a, b in zip(p, lp, strict=True))
        else:
            raise AssertionError(name)
        out.append(float(v))
    return np.array(out)


class _Identity(nn.Module):
    """A stand-in classifier whose logits are its (N, C, 1, 1) input: ODIN scores chosen logits."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def logits_from_features(self, z: torch.Tensor, variant: str) -> torch.Tensor:
        return z * 1.0


def _scores(name: str, f: torch.Tensor, **kw: Any) -> torch.Tensor:
    """New scores of detector ``name`` on logits ``f`` (``kw``: its hyper-parameters, or a fitted klm)."""
    if name == "odin":
        det = DETECTORS["odin"](temperature=TEMPERATURE, epsilon=0.0)
        return det.score_images(_Identity(), f[:, :, None, None], resolve_runtime("cpu", "fp32"))  # type: ignore[arg-type]
    if name == "temp_scale":
        det = make_detector("temp_scale")
        det.temperature, det._normalize = TEMPERATURE, False  # type: ignore[attr-defined]
        return det.score(_ext(f), _head(f.shape[1]))
    return make_detector(name, **kw).score(_ext(f), _head(f.shape[1]))


def _fitted_klm(c: int) -> Any:
    fit = torch.randn(300, c, generator=torch.Generator().manual_seed(1)) * 3
    return make_detector("klm").fit(_ext(fit), _head(c))


CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [  # (detector, hyper-parameters, reference arguments)
    ("msp", {}, {}),
    ("temp_scale", {}, {"t": TEMPERATURE}),
    ("odin", {}, {"t": TEMPERATURE}),
    ("entropy", {}, {}),
    ("gen", {}, {"gamma": 0.1, "top_m": 100}),
    ("gen", {"gamma": 0.5, "top_m": 3}, {"gamma": 0.5, "top_m": 3}),
]


@pytest.mark.parametrize("c", [10, 20])  # the transposed layout below 16 classes, rows above
@pytest.mark.parametrize(("name", "hyper", "ref_kw"), CASES, ids=[f"{n}{h or ''}" for n, h, _ in CASES])
def test_saturated_logits_give_the_exact_scores(name: str, hyper: dict[str, Any], ref_kw: dict[str, Any],
                                                c: int) -> None:
    f = _saturated(c)
    got = _scores(name, f, **hyper)
    ref = _reference(name, f, **ref_kw)
    assert got.dtype == torch.float64 and got.shape == (len(f),)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=0)
    assert len(np.unique(ref)) == len(ref)  # the rows are all different ...
    assert len(np.unique(got.numpy())) == len(ref)  # ... and so are their scores: no ties
    np.testing.assert_array_equal(np.argsort(got.numpy()), np.argsort(ref))  # in the exact order
    # one margin more, one score less (the confident rows: margins ascending)
    assert (np.diff(got.numpy()[: len(MARGINS)]) > 0).all()


def test_klm_as_far_as_one_float64_holds_it() -> None:
    """KLM tends to the constant ``log d_kk`` for a confident input predicted as k, plus a part of size ~s·margin:
    equal to the reference to a few float64 ulps everywhere, distinct while that part exceeds ~1e-16·|log d_kk|
    (margins up to ~42 here); the 0.1 float32 output tied from a margin of ~24."""
    c = 10
    det = _fitted_klm(c)
    margins = list(range(16, 61, 2))
    f = torch.tensor([[4.5] + [4.5 - m - 0.25 * j for j in range(c - 1)] for m in margins])
    got = det.score(_ext(f), _head(c)).numpy()
    ref = _reference("klm", f, log_templates=det.log_templates)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)
    resolved = np.array(margins) <= 40  # KL to the template falls or grows with the margin: the reference decides
    assert len(np.unique(got[resolved])) == resolved.sum()
    np.testing.assert_array_equal(np.argsort(got[resolved]), np.argsort(ref[resolved]))
    old = _old_klm(det, f)
    assert len(np.unique(old[(np.array(margins) >= 24)])) == 1  # the old float32 output: one tied value
    # the saturated rows with ties at the top too
    fs = _saturated(c)
    np.testing.assert_allclose(det.score(_ext(fs), _head(c)).numpy(),
                               _reference("klm", fs, log_templates=det.log_templates), rtol=1e-15, atol=0)


# ------------------------------------------------------------------------------------------------ the old formulas

def _old(name: str, f: torch.Tensor, **kw: Any) -> np.ndarray:
    """The float32 formulas of l2ood 0.1 (probabilities for msp, temp_scale and odin)."""
    f = f.float()
    if name == "msp":
        s = (f - f.amax(dim=1, keepdim=True)).exp().sum(dim=1).reciprocal()
    elif name in ("temp_scale", "odin"):
        s = (f - f.amax(dim=1, keepdim=True)).div(TEMPERATURE).exp().sum(dim=1).reciprocal()
    elif name == "entropy":
        logp = f.log_softmax(dim=1)
        s = (logp.exp() * logp).sum(dim=1)
    elif name == "gen":
        p = f.softmax(dim=1)
        if kw.get("top_m", 100) < p.shape[1]:
            p = p.topk(kw["top_m"], dim=1).values
        s = -(p * (1.0 - p)).pow(kw.get("gamma", 0.1)).sum(dim=1)
    else:
        raise AssertionError(name)
    return s.numpy()


def _old_klm(det: Any, f: torch.Tensor) -> np.ndarray:
    logp = f.double().log_softmax(dim=1)
    p = logp.exp()
    return ((p @ det.log_templates.T).amax(dim=1) - (p * logp).sum(dim=1)).float().numpy()


@pytest.mark.parametrize(("name", "hyper", "ref_kw"), CASES, ids=[f"{n}{h or ''}" for n, h, _ in CASES])
def test_the_old_float32_formulas_fail_on_saturated_logits(name: str, hyper: dict[str, Any],
                                                           ref_kw: dict[str, Any]) -> None:
    f = _saturated(10)
    old = _old(name, f, **hyper)
    confident = old[: len(MARGINS)]
    if name in ("msp", "temp_scale", "odin"):
        assert (confident == 1.0).all()  # every confident row the same probability: a tie
    else:  # entropy and gen: the top class's term is lost (far from the reference), and beyond ~104 all tie at 0
        ref = _reference(name, f, **ref_kw)[: len(MARGINS)]
        assert np.max(np.abs(confident - ref) / np.abs(ref)) > 0.01
        assert (confident[np.array(MARGINS) >= 200] == 0.0).all()


# ------------------------------------------------------------------------------------------------ same ranking

@pytest.mark.parametrize(("name", "hyper", "ref_kw"), CASES, ids=[f"{n}{h or ''}" for n, h, _ in CASES])
def test_auroc_unchanged_where_nothing_saturates(name: str, hyper: dict[str, Any], ref_kw: dict[str, Any]) -> None:
    """Margins below 5: the log-domain float64 scores rank ID against OoD exactly as the 0.1 formulas did."""
    g = torch.Generator().manual_seed(7)
    ident = torch.rand(300, 10, generator=g) * 4.9  # every margin below 4.9
    ood = torch.rand(300, 10, generator=g) * 3.5
    y = np.r_[np.ones(300), np.zeros(300)]
    new = np.r_[_scores(name, ident, **hyper).numpy(), _scores(name, ood, **hyper).numpy()]
    old = np.r_[_old(name, ident, **hyper), _old(name, ood, **hyper)]
    assert abs(roc_auc_score(y, new) - 0.5) > 0.1  # the scores do rank (in either direction)
    assert roc_auc_score(y, new) == roc_auc_score(y, old)


def test_klm_auroc_unchanged_where_nothing_saturates() -> None:
    det = _fitted_klm(10)
    g = torch.Generator().manual_seed(8)
    ident, ood = torch.randn(300, 10, generator=g) * 1.2, torch.randn(300, 10, generator=g) * 0.6
    y = np.r_[np.ones(300), np.zeros(300)]
    new = np.r_[det.score(_ext(ident), _head(10)).numpy(), det.score(_ext(ood), _head(10)).numpy()]
    old = np.r_[_old_klm(det, ident), _old_klm(det, ood)]
    assert roc_auc_score(y, new) == roc_auc_score(y, old)


# ------------------------------------------------------------------------------------------------ the helper

@pytest.mark.parametrize("c", [1, 2, 10, 16, 40])
def test_top_softmax_pieces(c: int) -> None:
    """d, e, s and log1p(s) against torch's float64 log_softmax (where it does not saturate), ties at the top
    counted once each, NaN for non-finite rows, +0.0 (not −0.0) where p_top = 1."""
    g = torch.Generator().manual_seed(c)
    f = torch.randn(50, c, generator=g) * 3
    if c > 2:
        f[1, :3] = f[1].max() + 1.0  # a three-way tie at the top
    sm = top_softmax(f)
    torch.testing.assert_close(sm.log_p, f.double().log_softmax(dim=1), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sm.log_z, f.double().logsumexp(dim=1) - f.double().amax(dim=1), rtol=1e-13,
                               atol=1e-15)
    if c > 2:
        assert sm.s[1].item() >= 2.0  # two of the three tied entries count exp(0) = 1
    one = top_softmax(torch.tensor([[0.0] + [-800.0] * (c - 1)]))  # s underflows: p_top = 1 exactly
    assert one.log_p_top.item() == 0.0 and math.copysign(1.0, one.log_p_top.item()) == 1.0
    bad = top_softmax(torch.tensor([[math.nan] * c, [math.inf] * c, [-math.inf] * c]))
    assert torch.isnan(bad.log_z).all()


def test_log1p_is_accurate_everywhere() -> None:
    x = torch.tensor([0.0, 1e-300, 1e-30, 1e-17, 1e-9, 1e-3, 0.5, 1.0, 7.0, 1e6, -1e-20, -1e-5, -0.25, -0.5],
                     dtype=torch.float64)
    torch.testing.assert_close(log1p(x), torch.log1p(x), rtol=4e-16, atol=0)


# ------------------------------------------------------------------------------------------------ ONNX

class _AllScores(nn.Module):
    """The scores of the softmax family on given logits, as the whole-screen export traces them."""

    def __init__(self, klm: Any, c: int) -> None:
        super().__init__()
        self.dets = [make_detector("msp"), make_detector("entropy"), make_detector("gen"),
                     make_detector("gen", gamma=0.5, top_m=3), make_detector("temp_scale"), klm]
        self.dets[4].temperature, self.dets[4]._normalize = TEMPERATURE, False  # type: ignore[attr-defined]
        self.head = _head(c)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ext = _ext(f)
        return tuple(d.score(ext, self.head) for d in self.dets)


class _Log1p(nn.Module):
    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.log1p(s), log1p(s)


@pytest.mark.parametrize("c", [10, 20])
def test_onnx_export_keeps_the_saturated_scores_apart(c: int) -> None:
    """The exported graph (torch.onnx.export, dynamo) gives the eager scores on saturated logits (onnxruntime's exp
    and log differ from torch's by an ulp or so), so the exported screen keeps them distinct and ordered."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from l2ood.deploy.onnx_screen import torch_to_onnx

    f = _saturated(c)
    module = _AllScores(_fitted_klm(c), c)
    names = ["msp", "entropy", "gen", "gen3", "temp_scale", "klm"]
    proto = torch_to_onnx(module, (f,), ["logits"], names, 18, dynamic_batch=False)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(names, sess.run(None, {"logits": f.numpy()}), strict=True))
    for name, ref in zip(names, module(f), strict=True):
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], ref.numpy(), rtol=1e-13, atol=0, err_msg=name)
        if name != "klm":
            np.testing.assert_array_equal(np.argsort(got[name]), np.argsort(ref.numpy()), err_msg=name)
    # the reason for the helper: measured with torch 2.13 / onnxscript 0.7, torch.log1p exports as Log(1 + x)
    s = torch.tensor([1e-30, 1e-17, 1e-9, 0.5], dtype=torch.float64)
    sess = ort.InferenceSession(torch_to_onnx(_Log1p(), (s,), ["s"], ["torch_log1p", "ours"], 18, False)
                                .SerializeToString(), providers=["CPUExecutionProvider"])
    torch_log1p, ours = sess.run(None, {"s": s.numpy()})
    np.testing.assert_allclose(ours, torch.log1p(s).numpy(), rtol=1e-15, atol=0)
    assert torch_log1p[0] in (0.0, pytest.approx(1e-30, rel=1e-15))  # 0.0: the saturation the helper avoids


# ------------------------------------------------------------------------------------------------ calibrations

def test_calibrations_record_the_score_version() -> None:
    scores = np.linspace(-3.0, 0.0, 50)
    assert calibrate(scores, "msp").score_versions == {"msp": 2}
    assert calibrate(scores, "msp:raw", alpha=0.1).score_versions == {"msp:raw": 2}
    assert calibrate(scores, "feature_norm").score_versions == {}  # version 1: nothing recorded
    combo = calibrate_combined({"feature_norm": scores, "gen": scores, "entropy": scores}, 0.2)
    assert combo.score_versions == {"gen": 2, "entropy": 2}
    for cal in (calibrate(scores, "msp"), calibrate(scores, "knn"), combo):
        check_score_versions(cal, "default")  # made now: accepted
    assert {DETECTORS[n].score_version for n in ("msp", "temp_scale", "odin", "gen", "entropy")} == {2}
    assert {DETECTORS[n].score_version for n in ("klm", "energy", "maxlogit", "gradnorm", "knn")} == {1}


def _as_recorded_by_0_1(cal: Calibration) -> Calibration:
    """The calibration as an l2ood 0.1 record holds it: no score versions."""
    d = asdict(cal)
    del d["score_versions"]
    return Calibration(**d)


@pytest.mark.parametrize("key", ["msp", "msp:raw", "temp_scale", "odin", "gen", "entropy"])
def test_an_old_calibration_is_refused_with_one_message(key: str) -> None:
    old = _as_recorded_by_0_1(calibrate(np.linspace(0.2, 1.0, 50), key))
    name = key.partition(":")[0]
    with pytest.raises(RunError, match=rf"^recalibrate: the {name} score (changed|is computed)") as e:
        check_score_versions(old, "default")
    assert f"l2ood calibrate RUN --detectors {key} --name default" in str(e.value)
    if name == "msp":
        assert "the msp score changed to log-domain (log max softmax) in 0.2" in str(e.value)
    combo = _as_recorded_by_0_1(calibrate_combined({"feature_norm": np.arange(50.0), key: np.arange(50.0)}, 0.2))
    with pytest.raises(RunError, match="recalibrate"):
        check_score_versions(combo, "both")
    check_score_versions(_as_recorded_by_0_1(calibrate(np.arange(50.0), "klm")))  # klm: version 1, still valid
    future = Calibration(**{**asdict(calibrate(np.arange(50.0), key)), "score_versions": {key: 99}})
    with pytest.raises(RunError, match="newer l2ood"):
        check_score_versions(future)


def test_screen_and_export_refuse_a_calibration_of_0_1(tmp_path: Path) -> None:
    """End to end: a run calibrated with msp screens; the same record as l2ood 0.1 wrote it (probabilities, no
    score version) is refused by the screen and the ONNX export, and calibrating again fixes it."""
    from conftest import tiny_run
    from l2ood.deploy.onnx_screen import screen_columns
    from l2ood.run import Run
    from l2ood.screen import Screener, calibrate_run

    run_dir = tiny_run(tmp_path, n_train=200, n_test=40, width=2, holdout=40)
    data = tmp_path / "data"
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data)
    cal = calibrate_run(run, detector="msp", name="old", alpha=0.2)
    assert cal.score_versions == {"msp": 2} and max(cal.scores) <= 0.0  # log-probabilities
    Screener.from_run(run_dir, calibration="old", device="cpu", precision="fp32")  # fine

    meta = run_dir / "model.json"
    record = json.loads(meta.read_text())
    assert record["calibrations"]["old"]["score_versions"] == {"msp": 2}
    old = record["calibrations"]["old"]
    del old["score_versions"]  # what l2ood 0.1 wrote: probabilities, no score version
    old["scores"] = sorted(math.exp(s) for s in old["scores"])
    old["threshold"] = math.exp(old["threshold"])
    meta.write_text(json.dumps(record))
    message = r"^recalibrate: the msp score changed to log-domain \(log max softmax\) in 0\.2; calibration 'old'"
    with pytest.raises(RunError, match=message):
        Screener.from_run(run_dir, calibration="old", device="cpu", precision="fp32")
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data)
    with pytest.raises(RunError, match=message):
        screen_columns(run, run.record.calibrations["old"], "old")
    with pytest.raises(RunError, match="recalibrate"):
        Screener(run, run.record.calibrations["old"])
    # records without versioned detectors keep no score_versions key (readable by l2ood 0.1)
    calibrate_run(run, detector="feature_norm", name="plain")
    assert "score_versions" not in json.loads(meta.read_text())["calibrations"]["plain"]
    calibrate_run(run, detector="msp", name="old", alpha=0.2)  # calibrating again fixes it
    Screener.from_run(run_dir, calibration="old", device="cpu", precision="fp32")

