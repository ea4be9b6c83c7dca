"""Any detector drives a screen: fitted statistics saved with the run (safetensors + the run record), loaded once
by a screen, detectors that need the model, and combined calibrations through calibrate / screen / evaluate."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from l2ood.cli import main
from l2ood.data import load_dataset
from l2ood.detectors import DETECTORS, Extraction, Head, make_detector
from l2ood.detectors.store import load_fitted, read_fitted, save_fitted
from l2ood.errors import ConfigError, RunError
from l2ood.metrics.conformal import combine_p_values, conformal_p_values
from l2ood.record import file_sha256, read_record
from l2ood.results import read_results
from l2ood.run import Run
from l2ood.screen import Screener, parse_spec

FP32 = ["--precision", "fp32", "--no-progress"]

# ---------------------------------------------------------------- state_dict / load_state_dict of every detector


def _extractions(mode: str) -> tuple[Head, Extraction, Extraction]:
    g = torch.Generator().manual_seed(0)
    n, d, c = 300, 16, 5
    head = Head(torch.randn(c, d, generator=g), torch.randn(c, generator=g), mode=mode)
    z = torch.randn(n, d, generator=g).abs() * 2
    train = Extraction(z, head.logits(z), torch.randint(0, c, (n,), generator=g))
    zt = torch.cat([torch.randn(40, d, generator=g).abs(), torch.zeros(1, d)])  # incl. a zero feature vector
    return head, train, Extraction(zt, head.logits(zt))


@pytest.mark.parametrize("mode", ["ce", "l2"])
@pytest.mark.parametrize("name", sorted(n for n, c in DETECTORS.items() if c.needs_fit))
def test_fitted_state_round_trips_through_safetensors(name: str, mode: str, tmp_path: Path) -> None:
    head, train, test = _extractions(mode)
    for variant in ("trained", "raw"):
        h = head if variant == "trained" else head.raw()
        tr, te = (train, test) if variant == "trained" else (train.with_head(h), test.with_head(h))
        kw = {"k": 7} if name in ("knn", "nnguide") else {}
        det = make_detector(name, **kw)
        assert not det.is_fitted
        with pytest.raises(RuntimeError, match="not fitted"):
            det.state_dict()
        det.fit(tr, h)
        assert det.is_fitted
        path = tmp_path / f"{name}-{variant}.safetensors"
        digest = save_fitted(det, path, variant=variant, weights_sha256="a" * 64, n_fit=len(tr), fit_data="synthetic")
        assert digest == file_sha256(path)
        loaded, info = load_fitted(path, sha256=digest, weights_sha256="a" * 64)
        assert type(loaded) is type(det) and loaded.hyper_parameters() == det.hyper_parameters()
        assert (info.detector, info.variant, info.n_fit, info.fit_data) == (name, variant, 300, "synthetic")
        assert torch.equal(loaded.score(te, h), det.score(te, h))  # bit-identical scores
        # the state's tensors are exactly the saved ones; a missing tensor is refused
        state = det.state_dict()
        tensors, _ = read_fitted(path)
        assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k].cpu()) for k in state)
        with pytest.raises(ConfigError, match="missing"):
            make_detector(name, **kw).load_state_dict(dict(list(state.items())[1:]))


def test_every_detector_rebuilds_from_its_hyper_parameters() -> None:
    for name in DETECTORS:
        det = make_detector(name)
        again = make_detector(name, **det.hyper_parameters())
        assert again.hyper_parameters() == det.hyper_parameters()
        assert det.is_fitted == (not det.needs_fit)


def test_fitted_file_checks(tmp_path: Path) -> None:
    head, train, _ = _extractions("ce")
    det = make_detector("knn", k=5).fit(train, head)
    path = tmp_path / "knn.safetensors"
    digest = save_fitted(det, path, variant="trained", weights_sha256="a" * 64, n_fit=300)
    with pytest.raises(RunError, match="other weights"):
        load_fitted(path, weights_sha256="b" * 64)
    with pytest.raises(RunError, match="differs from the one recorded"):
        load_fitted(path, sha256="0" * 64)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the bank
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match="differs"):
        load_fitted(path, sha256=digest)
    path.write_bytes(b"\x80\x04pickle?")
    with pytest.raises(RunError, match="not a readable safetensors"):
        load_fitted(path)
    with pytest.raises(RunError, match="missing"):
        load_fitted(tmp_path / "none.safetensors")


def test_specs_are_canonical() -> None:
    assert [m.key for m in parse_spec("feature_norm, knn,energy:raw", "l2")] == ["feature_norm", "knn", "energy:raw"]
    assert [m.key for m in parse_spec("energy:raw,knn:raw", "ce")] == ["energy", "knn"]  # raw = trained there
    assert parse_spec("vim:raw", "l2")[0].variant == "raw"
    with pytest.raises(ConfigError, match="twice"):
        parse_spec("knn,knn", "ce")
    with pytest.raises(ConfigError, match="unknown detector"):
        parse_spec("knn,nope", "ce")
    with pytest.raises(ConfigError, match="variant"):
        parse_spec("energy:cooked", "l2")


# ---------------------------------------------------------------- a trained run: calibrate, screen, evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    root = tmp_path_factory.mktemp("fitted")
    assert main(["train", "--data-root", str(data_root), "--epochs", "2", "--width", "4", "--batch-size", "32",
                 "--holdout", "150", "--out", str(root / "run"), *FP32]) == 0
    mnist = load_dataset("mnist", "test", root=data_root)
    fm = load_dataset("fashion-mnist", "test", root=data_root)
    folder = root / "imgs"
    folder.mkdir()
    for i in range(20):  # ID-like and OoD-like images as files
        Image.fromarray(fm.images[i, 0].numpy()).save(folder / f"id_{i:02d}.png")
        Image.fromarray(mnist.images[i, 0].numpy()).save(folder / f"ood_{i:02d}.png")
    return root


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained / "run", dst, ignore=shutil.ignore_patterns(".l2ood.lock"))
    return dst


def _screen_csv(run: Path, folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, str]]:
    capsys.readouterr()
    assert main(["screen", str(run), str(folder), *FP32, *extra]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_knn_is_fit_once_saved_recorded_and_loaded_by_screen(run_dir: Path, trained: Path, data_root: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["calibrate", str(run_dir), "--detector", "knn", "--alpha", "0.1", "--data-root", str(data_root),
                 *FP32]) == 0
    assert "detectors/knn.safetensors" in capsys.readouterr().out
    rec = read_record(run_dir)
    entry = rec.detectors["knn"]
    path = run_dir / "detectors" / "knn.safetensors"
    assert entry.file == "detectors/knn.safetensors" and path.is_file() and entry.sha256 == file_sha256(path)
    assert entry.weights_sha256 == rec.weights_sha256 and entry.n_fit == 450 and entry.hyper_parameters["k"] == 50
    cal = rec.calibrations["default"]
    assert cal.detector == "knn" and cal.fitted == {"knn": entry.sha256} and cal.n == 150
    # the bank is the run's normalized training features (independent recomputation through the evaluation path)
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data_root)
    ref = make_detector("knn").fit(run.forward(run.train_split()), run.head)
    assert torch.equal(load_fitted(path)[0].bank, ref.bank)  # type: ignore[attr-defined]
    # a screen loads the file and never fits (no training data needed)
    monkeypatch.setattr(Run, "train_split", lambda self: pytest.fail("a screen must not fit"))
    rows = _screen_csv(run_dir, trained / "imgs", capsys)
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(trained / "imgs" / Path(r["path"]).name)))[None]
                        for r in rows])
    expected = ref.score(run.forward_batch(imgs), run.head).double().numpy()
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5, atol=1e-6)
    p = conformal_p_values(cal.scores, [float(r["score"]) for r in rows])
    np.testing.assert_allclose([float(r["p_value"]) for r in rows], p)
    assert [r["verdict"] for r in rows] == ["out" if v <= 0.1 else "in" for v in p]
    monkeypatch.undo()
    # calibrating again reuses the recorded fit; --refit fits again
    mtime = path.stat().st_mtime_ns
    assert main(["calibrate", str(run_dir), "--detector", "knn", "--name", "again", "--data-root",
                 str(data_root), *FP32]) == 0
    assert path.stat().st_mtime_ns == mtime
    assert main(["calibrate", str(run_dir), "--detector", "knn", "--name", "again", "--refit", "--data-root",
                 str(data_root), *FP32]) == 0
    assert path.stat().st_mtime_ns != mtime and read_record(run_dir).detectors["knn"].sha256 == entry.sha256
    # a replaced file is refused by the screen (exit 2, one message), not silently used
    head, train, _ = _extractions("ce")
    save_fitted(make_detector("knn", k=5).fit(train, head), path, variant="trained", weights_sha256=rec.weights_sha256,
                n_fit=300)
    capsys.readouterr()
    assert main(["screen", str(run_dir), str(trained / "imgs"), *FP32]) == 2
    assert "differs from the one recorded" in capsys.readouterr().err


def test_vim_raw_variant_and_mahalanobis_pp_on_an_l2_run(run_dir: Path, data_root: Path) -> None:
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data_root)
    assert run.config.head == "l2"
    for key in ("vim:raw", "mahalanobis++"):
        from l2ood.screen import calibrate_run

        cal = calibrate_run(run, detector=key, name=key.replace(":", "-").replace("+", "p"), data_root=data_root)
        entry = run.record.detectors[key]
        assert (run_dir / entry.file).is_file() and cal.fitted == {key: entry.sha256}
        scr = Screener.from_run(run_dir, calibration=key.replace(":", "-").replace("+", "p"), device="cpu",
                                precision="fp32")
        held = run.holdout()
        assert held is not None
        out = scr.score(held.images[:30])
        # the screen scores the calibration images as the calibration did: same files, same statistics
        gap = np.abs(out.scores[:, None] - np.asarray(cal.scores)[None, :]).min(axis=1)
        assert (gap <= 1e-4 * (1 + np.abs(out.scores))).all(), gap.max()
    assert read_record(run_dir).detectors["vim:raw"].file == "detectors/vim.raw.safetensors"


def test_odin_and_rankfeat_screen_with_the_model(run_dir: Path, trained: Path, data_root: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data_root)
    from l2ood.screen import calibrate_run

    for name in ("odin", "rankfeat"):
        cal = calibrate_run(run, detector=name, name=name, data_root=data_root)
        assert cal.fitted == {} and not (run_dir / "detectors").exists()
        rows = _screen_csv(run_dir, trained / "imgs", capsys, "--calibration", name)
        imgs = torch.stack([torch.from_numpy(np.array(Image.open(trained / "imgs" / Path(r["path"]).name)))[None]
                            for r in rows])
        expected = make_detector(name).score_images(run.model, imgs, run.runtime).double().numpy()  # type: ignore[attr-defined]
        np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5, atol=1e-6)


def test_combined_calibration_screen_and_evaluate(run_dir: Path, trained: Path, data_root: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    alpha = 0.2
    assert main(["calibrate", str(run_dir), "--combine", "knn", *FP32]) == 2  # a combination needs two
    assert main(["calibrate", str(run_dir), "--detector", "knn", "--combine", "knn,msp", *FP32]) == 2
    assert "either with --detectors or with --combine" in capsys.readouterr().err
    assert main(["calibrate", str(run_dir), "--combine", "feature_norm,mahalanobis", "--alpha", str(alpha),
                 "--data-root", str(data_root), *FP32]) == 0
    rec = read_record(run_dir)
    cal = rec.calibrations["default"]
    assert cal.members == ["feature_norm", "mahalanobis"] and cal.combine == "bonferroni" and cal.n == 150
    assert set(cal.fitted) == {"mahalanobis"} and set(rec.detectors) == {"mahalanobis"}
    rows = _screen_csv(run_dir, trained / "imgs", capsys)
    # independent recomputation: each member's conformal p-value against its calibration scores, Bonferroni-min
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data_root)
    maha = make_detector("mahalanobis").fit(run.forward(run.train_split()), run.head)
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(trained / "imgs" / Path(r["path"]).name)))[None]
                        for r in rows])
    ext = run.forward_batch(imgs)
    s1 = make_detector("feature_norm").score(ext, run.head).double().numpy()
    s2 = maha.score(ext, run.head).double().numpy()
    assert cal.member_scores is not None
    p = combine_p_values(np.stack([conformal_p_values(cal.member_scores[0], s1),
                                   conformal_p_values(cal.member_scores[1], s2)], axis=1))
    np.testing.assert_allclose([float(r["p_value"]) for r in rows], p, rtol=1e-12)
    assert [r["verdict"] for r in rows] == ["out" if v <= alpha else "in" for v in p]
    # ID rejection on ID images never used for calibration or training (the test split): <= alpha + 4 sigma
    fm = load_dataset("fashion-mnist", "test", root=data_root)
    scr = Screener.from_run(run_dir, device="cpu", precision="fp32")
    out = scr.score(fm.images)
    assert out.is_ood is not None
    assert out.is_ood.mean() <= alpha + 4 * np.sqrt(alpha * (1 - alpha) / len(fm))
    # evaluate: the combined column, scored by ln of the unclipped combined p-value
    out_dir = run_dir.parent / "eval"
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--ood", "mnist", "--detectors", "feature_norm",
                 "--combine", "feature_norm,mahalanobis", "--combine-rule", "cauchy", "--data-root", str(data_root),
                 "--out", str(out_dir), *FP32]) == 0
    res = read_results(out_dir / "results.json").to_json()["runs"]
    r = next(iter(res.values()))
    col = "cauchy(feature_norm,mahalanobis)"
    assert r["detectors"] == ["feature_norm", col] and r["combined"][col]["n_calibration"] == 150
    m = r["ood"]["mnist"]["detectors"][col]
    npz = np.load(run_dir / "eval" / "scores.npz")  # the per-run copy of the results holds the raw scores
    id_s, ood_s = npz[f"{r['id_dataset']}/{col}"], npz[f"mnist/{col}"]
    y = np.r_[np.ones_like(id_s), np.zeros_like(ood_s)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[id_s, ood_s]))
    assert 0 <= m["fpr95_ood_pos"] <= 1 and "FPR95 (OoD+)" in (out_dir / "report.md").read_text()


def test_evaluate_refuses_a_combination_without_a_disjoint_calibration_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from l2ood.data import save_npz

    rng = np.random.default_rng(0)
    labels = np.arange(80) % 2
    imgs = np.clip(rng.normal(80 + 90 * labels[:, None, None], 20, (80, 12, 12)), 0, 255).astype(np.uint8)
    save_npz(tmp_path / "id.npz", imgs, labels=labels)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"npz:{tmp_path / 'id.npz'}", "--holdout", "20", "--epochs", "1", "--width",
                 "2", "--out", str(run), *FP32]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ood", "noise", "--n-ood", "20", "--combine", "feature_norm,msp",
                 *FP32]) == 2
    assert "holdout" in capsys.readouterr().err


def test_in_memory_runs_cannot_store_fits() -> None:
    from l2ood.models import ModelConfig, build_model

    cfg = ModelConfig(width=2)
    run = Run.from_model(build_model(cfg), cfg, device="cpu", precision="fp32")
    with pytest.raises(ConfigError, match="in-memory"):
        parse_spec("knn", "l2")[0].load(run, "0" * 64)


def test_resuming_a_finished_run_keeps_its_fitted_detectors(run_dir: Path, data_root: Path) -> None:
    assert main(["calibrate", str(run_dir), "--detector", "knn", "--data-root", str(data_root), *FP32]) == 0
    before = read_record(run_dir)
    assert "knn" in before.detectors
    # the detectors/ folder is l2ood's own: resuming (here: re-finishing) the run is not refused because of it
    assert main(["train", "--data-root", str(data_root), "--epochs", "2", "--width", "4", "--batch-size", "32",
                 "--holdout", "150", "--out", str(run_dir), "--resume", *FP32]) == 0
    after = read_record(run_dir)
    assert after.weights_sha256 == before.weights_sha256
    assert after.detectors == before.detectors and after.calibrations == before.calibrations


# ---------------------------------------------------------------- fitted statistics are validated, fits are locked

def _tamper(run: Path, key: str, change: object) -> None:
    """Rewrite RUN/detectors/<key> with ``change(name, tensor) -> tensor`` applied, and record the new digest in the
    run record and every calibration that names it — what a user editing the file by hand would produce."""
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import save as st_save

    from l2ood.record import fitted_file, update_record

    path = run / fitted_file(key)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: change(k, f.get_tensor(k)) for k in f.keys()}  # type: ignore[operator]
    path.write_bytes(st_save(tensors, metadata=meta))
    digest = file_sha256(path)
    assert _json.loads(meta["l2ood.detector"])["detector"] == key

    def fix(rec):  # type: ignore[no-untyped-def]
        cals = {n: type(c)(**{**c.to_dict(), "fitted": {**c.fitted, key: digest}}) if key in c.fitted else c
                for n, c in rec.calibrations.items()}
        dets = {**rec.detectors, key: rec.detectors[key].model_copy(update={"sha256": digest})}
        return rec.model_copy(update={"detectors": dets, "calibrations": cals})

    update_record(run, fix)


@pytest.mark.parametrize(("case", "change", "message"), [
    ("NaN", lambda k, t: torch.full_like(t, float("nan")) if t.is_floating_point() else t, "NaN or infinite"),
    ("inf", lambda k, t: t.clone().fill_(float("inf")) if t.is_floating_point() and t.ndim else t,
     "NaN or infinite"),
    ("float16", lambda k, t: t.half() if t.is_floating_point() else t, "dtype torch.float16"),
    ("int8", lambda k, t: t.to(torch.int8) if t.is_floating_point() else t, "dtype torch.int8"),
    ("zeros", lambda k, t: torch.zeros_like(t), "every row of the bank is zero"),
    ("unnormalized", lambda k, t: t * 3, "not L2-normalized"),
])
def test_edited_statistics_with_a_matching_digest_are_refused(run_dir: Path, trained: Path, data_root: Path,
                                                              capsys: pytest.CaptureFixture[str], case: str,
                                                              change: object, message: str) -> None:
    assert main(["calibrate", str(run_dir), "--detector", "knn", "--data-root", str(data_root), *FP32]) == 0
    _tamper(run_dir, "knn", change)
    with pytest.raises(RunError, match=message):
        Screener.from_run(run_dir, device="cpu", precision="fp32")
    capsys.readouterr()
    assert main(["screen", str(run_dir), str(trained / "imgs"), *FP32]) == 2  # never a verdict, never a traceback
    err = capsys.readouterr().err
    assert message.split()[0] in err and "Traceback" not in err


def test_statistics_of_another_shape_are_refused_by_the_probe(run_dir: Path, data_root: Path) -> None:
    """Statistics of the right dtypes but for other features (a bank of another width) cannot score this model's
    features: the screen refuses them at start instead of failing on the first request."""
    assert main(["calibrate", str(run_dir), "--detector", "knn", "--data-root", str(data_root), *FP32]) == 0
    _tamper(run_dir, "knn", lambda k, t: torch.nn.functional.normalize(torch.cat([t, t], dim=1)) if t.ndim == 2 else t)
    with pytest.raises(RunError, match="cannot score this model's features"):
        Screener.from_run(run_dir, device="cpu", precision="fp32")


def test_openmax_rows_of_unfitted_classes_stay_allowed() -> None:
    det = make_detector("openmax")
    ok = {"means": torch.tensor([[1.0, 2.0], [float("nan")] * 2], dtype=torch.float64),
          "weibull": torch.tensor([[1.0, 2.0, 0.5], [float("nan")] * 3], dtype=torch.float64),
          "normalize": torch.tensor(False)}
    det.check_state(ok)  # a class without a correctly classified image: a whole NaN row
    with pytest.raises(ConfigError, match="outside whole rows"):
        det.check_state({**ok, "means": torch.tensor([[1.0, float("nan")], [3.0, 4.0]], dtype=torch.float64)})
    with pytest.raises(ConfigError, match="outside whole rows"):
        det.check_state({**ok, "weibull": torch.tensor([[1.0, 2.0, float("inf")]] * 2, dtype=torch.float64)})


def test_two_first_fits_at_once_leave_every_calibration_usable(run_dir: Path, trained: Path,
                                                               data_root: Path) -> None:
    """Two calibrations of the same run, started together, both needing the first fit of KNN: the fit is saved
    under the run lock after reading the record again, so both succeed and both name the one recorded file."""
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "l2ood", "calibrate", str(run_dir), "--detector", "knn",
                               "--name", name, "--data-root", str(data_root), *FP32],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    rec = read_record(run_dir)
    digest = rec.detectors["knn"].sha256
    assert file_sha256(run_dir / rec.detectors["knn"].file) == digest
    for name in ("a", "b"):
        cal = rec.calibrations[name]
        assert cal.fitted == {"knn": digest}
        out = Screener.from_run(run_dir, calibration=name, device="cpu", precision="fp32").screen(
            [str(p) for p in sorted((trained / "imgs").glob("*.png"))[:4]])
        assert all(r["status"] == "ok" for r in out)
