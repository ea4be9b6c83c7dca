"""ONNX export of the whole calibrated screen: every detector that is a function of z and the logits exports and
agrees with l2ood's screen (score, conformal p-value, verdict); the others are refused with one clear message;
the onnxruntime-only example client reproduces the preprocessing and the verdicts of ``l2ood screen``."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx
import onnxruntime as ort

from conftest import make_pattern_images, tiny_run
from l2ood.cli import main
from l2ood.columns import parse_spec
from l2ood.deploy import export as ex
from l2ood.deploy.onnx_screen import conformal_counts, effective_threshold, exportable_detectors
from l2ood.detectors import DETECTORS, all_detectors
from l2ood.errors import ConfigError
from l2ood.metrics.conformal import Calibration, calibrate
from l2ood.run import Run
from l2ood.screen import Screener, calibrate_run

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "examples" / "onnx_screen_client.py"
FEATURE_DETECTORS = [d for d in all_detectors() if not DETECTORS[d].needs_model]
# every feature detector, conformal (alpha) and threshold calibrations alternating
ALPHA = {d: 0.2 if i % 2 else None for i, d in enumerate(FEATURE_DETECTORS)}
Exported = tuple[Path, dict[str, float], Calibration]


def _name(key: str) -> str:
    return "x_" + re.sub(r"[^A-Za-z0-9_.-]", "_", key)


@pytest.fixture(scope="module", autouse=True)
def _one_onnx_registry() -> Iterator[None]:
    """Build torch.onnx's table of operator translations once for this module's ~35 exports instead of once per
    export (about 1 s each, most of a screen head's export): its content is the same every time (every export
    registers the same custom translation). Without that internal hook the tests only run slower."""
    from torch.onnx._internal.exporter import _registration

    original = _registration.ONNXRegistry.__dict__.get("from_torchlib")
    if not isinstance(original, classmethod):
        yield
        return
    made: dict[Any, Any] = {}

    def cached(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = original.__func__(cls, *args, **kwargs)
        return made[key]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(cached))
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("export_screen")
    path = tiny_run(root, n_train=300, n_test=80, width=2, holdout=60, epochs=1, calibrate=True)
    return Run.load(path, device="cpu", precision="fp32", data_root=root / "data")


@pytest.fixture(scope="module")
def backbone(run: Run) -> onnx.ModelProto:
    return ex.export_backbone(run)


@pytest.fixture(scope="module")
def images(run: Run) -> torch.Tensor:
    """80 ID test images and 23 noise images (103: not a multiple of the screen head's block)."""
    test, _ = run.id_test()
    noise = torch.randint(0, 256, (23, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return torch.cat([*run.image_batches(test), noise])


@pytest.fixture(scope="module")
def exported(run: Run, backbone: onnx.ModelProto, images: torch.Tensor,
             tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """``key → (path, verification, calibration)``: calibrate detector ``key`` (``ALPHA[key]``) and export it with
    verification, once per module (the example client's tests reuse the files)."""
    folder = tmp_path_factory.mktemp("exports")
    made: dict[str, Exported] = {}

    def get(key: str) -> Exported:
        if key not in made:
            name = _name(key)
            cal = calibrate_run(run, detector=key, name=name, alpha=ALPHA[key])
            path, v = ex.export_verified(run, folder / f"{name}.onnx", calibration=name, images=images,
                                         backbone=backbone)
            assert v is not None
            made[key] = (path, v, cal)
        return made[key]

    return get


def _ort(path: Path, x: torch.Tensor) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"images": (x.float() / 255.0).numpy() if x.dtype == torch.uint8 else x.numpy()})
    return dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))


def _between(cal_sorted: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.searchsorted(cal_sorted, hi, side="right") - np.searchsorted(cal_sorted, lo, side="left") > 0


def _assert_agrees(score: np.ndarray, p: np.ndarray | None, verdict: np.ndarray | None,
                   ref_score: np.ndarray, cal: Calibration) -> None:
    """The documented rule, checked independently: scores within SCORE_RTOL·max(|s|, σ); p-values equal unless a
    calibration score lies between the two scores; verdicts equal unless the effective threshold does."""
    cal_sorted = np.asarray(cal.scores)
    spread = float(cal_sorted.max() - cal_sorted.min())
    assert np.all(np.abs(score - ref_score) <= ex.SCORE_RTOL * np.maximum(np.abs(ref_score), spread))
    assert p is not None and verdict is not None
    ambiguous = _between(cal_sorted, score, ref_score)
    np.testing.assert_array_equal(p[~ambiguous], cal.p_values(ref_score)[~ambiguous])
    t = effective_threshold(cal)
    assert t is not None
    near = (np.minimum(score, ref_score) <= t) & (t <= np.maximum(score, ref_score))
    np.testing.assert_array_equal(verdict.astype(bool)[~near], cal.is_ood(ref_score)[~near])


# ------------------------------------------------------------------------------------------------ every detector

def test_which_detectors_export() -> None:
    assert set(exportable_detectors()) == set(FEATURE_DETECTORS)
    assert len(DETECTORS) == 29 and len(FEATURE_DETECTORS) == 27
    assert {d for d in DETECTORS if DETECTORS[d].needs_model} == {"odin", "rankfeat"}


@pytest.mark.parametrize("key", FEATURE_DETECTORS)
def test_detector_exports_and_agrees_with_the_screen(run: Run, images: torch.Tensor,
                                                     exported: Callable[[str], Exported], key: str) -> None:
    path, v, cal = exported(key)
    name, alpha = _name(key), ALPHA[key]
    assert v["n"] == len(images)
    assert v["verdict_mismatch"] == v["p_value_mismatch"] == v["inconsistent"] == 0
    assert v["max_rel_score_diff"] <= 1e-4 and v["same_class"] == 1.0
    got = _ort(path, images)
    assert list(got) == ["logits", "z", "feature_norm", "score", "p_value", "verdict"]
    assert got["score"].dtype == np.float64 and got["p_value"].dtype == np.float64 and got["verdict"].dtype == bool
    ref = Screener(run, cal).score(images)  # l2ood's own screen on the same images
    _assert_agrees(got["score"], got["p_value"], got["verdict"], ref.scores, cal)
    meta = ex.onnx_metadata(path)
    assert meta["l2ood.calibration"]["name"] == name and meta["l2ood.calibration"]["scores"] == cal.scores
    assert meta["l2ood.detector"]["key"] == cal.detector
    screen = meta["l2ood.screen"]
    assert screen["alpha"] == alpha and screen["n"] == cal.n and screen["threshold"] == cal.threshold
    assert set(meta["l2ood.outputs"]) == set(got)


def test_bonferroni_combination_exports(run: Run, backbone: onnx.ModelProto, images: torch.Tensor,
                                        tmp_path: Path) -> None:
    cal = calibrate_run(run, detector="feature_norm,fdbd:raw,energy:raw", name="combo", alpha=0.3)
    path, v = ex.export_verified(run, tmp_path / "combo.onnx", calibration="combo", images=images, backbone=backbone)
    assert v is not None and v["verdict_mismatch"] == v["p_value_mismatch"] == v["score_mismatch"] == 0
    got = _ort(path, images)
    assert got["member_scores"].shape == (len(images), 3)
    ref = Screener(run, cal).score(images)
    cols = parse_spec(cal.detectors, run.config.head)
    ext = run.forward_batch(images)
    member_ref = np.stack([c.load(run, cal.fitted.get(c.key)).score(ext, run.head) for c in cols], axis=1)
    ambiguous = np.zeros(len(images), dtype=bool)
    for k, c in enumerate(cal.member_scores or []):
        ambiguous |= _between(np.asarray(c), got["member_scores"][:, k], member_ref[:, k])
    np.testing.assert_allclose(got["member_scores"], member_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["score"][~ambiguous], ref.scores[~ambiguous], rtol=1e-12)
    np.testing.assert_allclose(got["p_value"][~ambiguous], ref.p_values[~ambiguous], rtol=1e-12)  # type: ignore[index]
    np.testing.assert_array_equal(got["verdict"][~ambiguous], ref.is_ood[~ambiguous])  # type: ignore[index]
    assert ex.onnx_metadata(path)["l2ood.detector"]["combine"] == "bonferroni"


def test_any_batch_size_and_fail_closed(images: torch.Tensor, exported: Callable[[str], Exported]) -> None:
    path = exported("knn")[0]
    full = _ort(path, images)
    for n in (1, 31, 32, 33):  # the last row is repeated up to the block size and cut off again
        part = _ort(path, images[:n])
        for k, a in part.items():
            np.testing.assert_allclose(a, full[k][:n], rtol=1e-5, atol=1e-6, err_msg=f"{k} at N={n}")
    nan = _ort(path, torch.full((3, 1, 28, 28), float("nan")))
    assert nan["verdict"].all() and np.isnan(nan["p_value"]).all()  # a non-finite score is never "in"


def test_uncalibrated_export_has_no_verdict(run: Run, backbone: onnx.ModelProto, images: torch.Tensor,
                                            tmp_path: Path) -> None:
    path, v = ex.export_verified(run, tmp_path / "plain.onnx", calibration="absent", images=images,
                                 backbone=backbone)
    assert v is not None and "same_verdict" not in v and v["max_rel_score_diff"] < 1e-4
    got = _ort(path, images)
    assert list(got) == ["logits", "z", "feature_norm", "score"]
    np.testing.assert_array_equal(got["score"], got["feature_norm"].astype(np.float64))
    meta = ex.onnx_metadata(path)
    assert meta["l2ood.calibration"] is None and meta["l2ood.screen"]["calibrated"] is False
    assert meta["l2ood.detector"]["key"] == "feature_norm"


def test_model_in_the_loop_and_cauchy_are_refused(run: Run, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("odin", "rankfeat"):
        calibrate_run(run, detector=key, name=_name(key))
        out = tmp_path / f"{key}.onnx"
        assert main(["export", str(run.path), "-o", str(out), "--calibration", _name(key), "--verify-n", "0"]) == 2
        err = capsys.readouterr().err
        assert f"detector '{key}'" in err and "cannot be exported" in err and "knn" in err
        assert "Traceback" not in err and not out.exists()
    calibrate_run(run, detector="feature_norm,energy", name="cauchy", alpha=0.2, combine="cauchy")
    with pytest.raises(ConfigError, match="only Bonferroni"):
        ex.export_onnx(run, tmp_path / "c.onnx", calibration="cauchy")


def test_conformal_counts_and_effective_threshold() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 60, 1000):
        cal = np.sort(rng.integers(0, 20, n).astype(np.float64))  # many ties
        s = np.concatenate([rng.integers(-2, 23, 200).astype(np.float64), cal, [np.inf, -np.inf]])
        got = conformal_counts(torch.from_numpy(cal), torch.from_numpy(s)).numpy()
        np.testing.assert_array_equal(got, np.searchsorted(cal, s, side="right"))
    scores = rng.normal(size=99)
    for c in (calibrate(scores, alpha=0.1), calibrate(scores, alpha=0.5), calibrate(scores, tpr=0.9),
              calibrate(np.round(scores, 1), alpha=0.05)):
        t = effective_threshold(c)
        assert t is not None
        s = np.concatenate([np.asarray(c.scores), rng.normal(size=500), np.nextafter(c.scores, np.inf)])
        np.testing.assert_array_equal(c.is_ood(s), s < t)


def test_check_agreement_refuses_unexcused_disagreement() -> None:
    ok = {"n": 10.0, "max_rel_score_diff": 1e-6, "max_abs_logit_diff": 1e-6, "max_rel_logit_diff": 1e-7,
          "max_rel_z_diff": 1e-7, "max_rel_feature_norm_diff": 1e-7, "p_value_mismatch": 0.0, "score_mismatch": 0.0,
          "verdict_mismatch": 0.0, "inconsistent": 0.0}
    ex.check_agreement(ok)
    for key, bad in (("verdict_mismatch", 1.0), ("p_value_mismatch", 2.0), ("inconsistent", 1.0),
                     ("max_rel_z_diff", 0.1), ("max_rel_feature_norm_diff", float("nan"))):
        with pytest.raises(ex.ExportError, match="verification failed"):
            ex.check_agreement({**ok, key: bad})


# ------------------------------------------------------------------------------------------------ example client

def _client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("onnx_screen_client", CLIENT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_client(*args: str, block: tuple[str, ...] = ("torch", "l2ood")) -> subprocess.CompletedProcess[str]:
    """The client in a fresh interpreter in which importing torch or l2ood (or ``block``) fails."""
    code = (f"import runpy, sys\nfor m in {block!r}: sys.modules[m] = None\n"
            f"runpy.run_path({str(CLIENT)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_client_preprocessing_is_l2oods(tmp_path: Path) -> None:
    from l2ood.data.preprocess import Preprocessing, decode_image

    cl = _client()
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((28, 28), (40, 36, 3), (13, 7), (90, 61, 3))]
    for fit in ("resize", "crop", "imagenet"):
        for ch, size in ((1, (28, 28)), (3, (32, 24))):
            mine = cl.Preprocess({"decode": "pillow-8bit", "resize": "bilinear-antialias", "fit": fit,
                                  "channels": ch, "size": list(size)})
            for a in arrays:
                np.testing.assert_array_equal(mine(a), Preprocessing(ch, size, fit)(a)[0].numpy())
    modes = {"L": (20, 30), "RGB": (20, 30, 3), "RGBA": (20, 30, 4), "LA": (20, 30, 2)}
    for mode, shape in modes.items():
        f = tmp_path / f"{mode}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(f)
        np.testing.assert_array_equal(cl.decode(str(f)), decode_image(str(f)))
    f = tmp_path / "P.png"
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P").save(f)
    np.testing.assert_array_equal(cl.decode(str(f)), decode_image(str(f)))
    with pytest.raises(cl.Refused, match="reproduces only"):
        cl.Preprocess({"decode": "opencv", "resize": "bilinear-antialias", "fit": "resize", "channels": 1,
                       "size": [28, 28]})


def _write_images(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(5)
    x, _ = make_pattern_images(6, seed=77)
    for i, a in enumerate(x):
        Image.fromarray(a).save(folder / f"id_{i}.png")
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / f"noise_{i}.png")
    Image.fromarray(rng.integers(0, 256, (33, 20, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
    return sorted(str(p) for p in folder.iterdir())


def test_client_verdicts_equal_l2ood_screen(run: Run, exported: Callable[[str], Exported], tmp_path: Path) -> None:
    files = _write_images(tmp_path / "imgs")
    assert ALPHA["feature_norm"] is None and ALPHA["mahalanobis"] is not None  # a threshold and a conformal screen
    for key in ("feature_norm", "mahalanobis"):
        model, _, cal = exported(key)
        r = _run_client(str(model), *files, "--jsonl")
        assert r.returncode == 0, r.stderr
        got = [json.loads(line) for line in r.stdout.splitlines()]
        ref = list(Screener(run, cal).screen(files))
        assert [g["path"] for g in got] == [x["path"] for x in ref] == files
        assert [g["status"] for g in got] == [x["status"] for x in ref] == ["ok"] * 11 + ["error"]
        ok = [(g, x) for g, x in zip(got, ref, strict=True) if x["status"] == "ok"]
        score, ref_score = np.array([g["score"] for g, _ in ok]), np.array([x["score"] for _, x in ok])
        _assert_agrees(score, np.array([g["p_value"] for g, _ in ok]),
                       np.array([g["verdict"] == "out" for g, _ in ok]), ref_score, cal)
        assert [g["class"] for g, _ in ok] == [x["pred_class"] for _, x in ok]
    table = _run_client(str(model), str(tmp_path / "imgs"))
    assert table.returncode == 0 and "OoD when conformal p-value" in table.stdout
    assert len(re.findall(r"score \S+  p \S+  (in|out)$", table.stdout, re.M)) == 11


def test_client_refuses_clearly(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    model = exported("feature_norm")[0]
    proto = onnx.load(str(model))
    for p in proto.metadata_props:
        if p.key == "l2ood.preprocessing":
            meta: dict[str, Any] = json.loads(p.value)
            p.value = json.dumps({**meta, "fit": "letterbox"})
    onnx.save(proto, str(tmp_path / "odd.onnx"))
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    for r, words in ((_run_client(str(tmp_path / "odd.onnx"), str(img)), "unknown fit 'letterbox'"),
                     (_run_client(str(model), str(img), block=("onnxruntime",)), "pip install")):
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
