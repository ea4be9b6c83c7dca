"""The run record (model.json): schema, strict validation, 0.1.0 upgrade, one writer, the Run object."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l2ood import record as rec_mod
from l2ood.cli import main
from l2ood.data import DataError, load_dataset, save_npz
from l2ood.data.imageset import pixel_fingerprint
from l2ood.errors import RunError
from l2ood.models import ModelConfig
from l2ood.pipeline import training_data
from l2ood.results import read_results
from l2ood.run import Run
from l2ood.screen import Screener, calibrate_run
from l2ood.train import TrainConfig, train

CFG = {"epochs": 1, "batch_size": 16, "device": "cpu", "precision": "fp32"}


def _pack(path: Path, n: int = 60, size: int = 16) -> str:
    rng = np.random.default_rng(1)
    labels = np.arange(n) % 3
    imgs = np.clip(rng.normal(80 + 60 * labels[:, None, None, None], 20, (n, size, size, 3)), 0, 255).astype(np.uint8)
    save_npz(path, imgs, labels=labels)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained through the Python API on an npz pack with a holdout and a subset."""
    root = tmp_path_factory.mktemp("rec")
    spec = _pack(root / "id.npz")
    train_set, _ = training_data(spec, holdout=12, subset=30, subset_seed=4)
    out = root / "run"
    train(train_set, ModelConfig(width=2), TrainConfig(**CFG), out, progress=False, log=None)  # type: ignore[arg-type]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _edit(run: Path, change: dict[str, object]) -> None:
    meta = json.loads((run / "model.json").read_text())
    for dotted, v in change.items():
        node = meta
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        if v is _DELETE:
            del node[last]
        else:
            node[last] = v
    (run / "model.json").write_text(json.dumps(meta))


_DELETE = object()


# ------------------------------------------------------------------------------------------- the record

def test_record_holds_the_whole_story(api_run: Path) -> None:
    meta = json.loads((api_run / "model.json").read_text())
    assert meta["schema"] == "l2ood.run/2"
    assert set(meta) >= {"model", "train", "data", "preprocessing", "provenance", "history", "weights_sha256",
                         "calibrations"}
    d = meta["data"]
    assert d["train"]["spec"].startswith("npz:/") and d["train"]["spec"].endswith("id.npz")  # absolute path
    assert d["train"]["ops"] == [{"op": "holdout", "n": 12, "seed": 0, "part": "rest"},
                                 {"op": "subset", "n": 30, "seed": 4}]
    assert d["holdout"]["ops"] == [{"op": "holdout", "n": 12, "seed": 0, "part": "holdout"}]
    assert d["test_origin"] == "holdout" and d["n_train"] == 30 and len(d["fingerprint"]) == 40
    p = meta["preprocessing"]
    assert p["channels"] == 3 and p["size"] == [16, 16] and p["fit"] == "resize" and p["mean"] == meta["model"]["mean"]
    v = meta["provenance"]
    assert v["l2ood"] and v["torch"] == torch.__version__ and v["runtime"] == "cpu / fp32" and v["world_size"] == 1
    assert rec_mod.file_sha256(api_run / "model.safetensors") == meta["weights_sha256"]


def test_train_split_is_exactly_the_trained_images(api_run: Path) -> None:
    run = Run.load(api_run, device="cpu", precision="fp32")
    train = run.train_split()
    assert len(train) == 30  # the subset, not the 48 images left after the holdout (0.1.0 ignored --train-subset)
    assert pixel_fingerprint(train.images) == run.data.fingerprint
    hold = run.holdout()
    assert hold is not None and len(hold) == 12
    test, where = run.id_test()
    assert test is hold and "holdout" in where


def test_changed_data_are_detected(api_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(api_run, tmp_path)
    meta = json.loads((run_dir / "model.json").read_text())
    spec = meta["data"]["train"]["spec"]
    moved = tmp_path / "id.npz"
    shutil.copy(spec[4:], moved)
    with np.load(moved) as z:
        imgs, labels = z["images"].copy(), z["labels"]
    imgs[:, 0, 0, 0] ^= 1  # the same count, other pixels
    save_npz(moved, imgs, labels=labels)
    for key in ("train", "holdout", "test"):
        meta["data"][key]["spec"] = f"npz:{moved}"
    (run_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="fingerprint"):
        Run.load(run_dir, device="cpu").train_split()


@pytest.mark.parametrize(("change", "key"), [
    ({"model.width": "2"}, "model.width"),
    ({"model.width": 0}, "model.width"),
    ({"model.image_size": [16, 16, 3]}, "model.image_size"),
    ({"model.std": [0.2, 0.0, 0.2]}, "model.std.1"),
    ({"model.arch": "resnet1000"}, "model.arch"),
    ({"model.num_classes": 10**9}, "model.num_classes"),
    ({"train.epochs": -1}, "train.epochs"),
    ({"train.surprise": 1}, "train.surprise"),
    ({"data.n_train": "many"}, "data.n_train"),
    ({"data.train.ops": [{"op": "shuffle", "n": 1, "seed": 0}]}, "data.train.ops.0.op"),
    ({"preprocessing.fit": "stretch"}, "preprocessing.fit"),
    ({"weights_sha256": "abc"}, "weights_sha256"),
    ({"calibrations": {"default": {"detector": "feature_norm", "tpr": 0.9, "threshold": 1.0, "alpha": None,
                                   "scores": [2.0, 1.0], "split": {}}}}, "calibrations.default.scores"),
    ({"calibrations": {"default": {"detector": "feature_norm", "tpr": 1.5, "threshold": 1.0, "alpha": None,
                                   "scores": [1.0], "split": {}}}}, "calibrations.default.tpr"),
    ({"provenance": _DELETE}, "provenance"),
])
def test_each_bad_value_is_one_clear_message(api_run: Path, tmp_path: Path, change: dict[str, object],
                                             key: str) -> None:
    run = _copy(api_run, tmp_path)
    _edit(run, change)
    with pytest.raises(RunError) as e:
        Run.load(run)
    msg = str(e.value)
    assert str(run / "model.json") in msg and key in msg, msg


def _fitted_entry(digest: str, **change: object) -> dict[str, object]:
    return {"file": "detectors/knn.safetensors", "sha256": "0" * 64, "detector": "knn", "variant": "trained",
            "hyper_parameters": {"k": 50}, "weights_sha256": digest, "n_fit": 30, "fit_data": "x", **change}


@pytest.mark.parametrize(("key", "change", "why"), [
    ("knn", {"file": "../../etc/passwd"}, "file must be 'detectors/knn.safetensors'"),
    ("knn", {"weights_sha256": "1" * 64}, "fitted with other weights"),
    ("knn", {"detector": "nope"}, "unknown detector"),
    ("energy", {"detector": "energy", "file": "detectors/energy.safetensors"}, "has no fitted statistics"),
    ("knn", {"detector": "vim", "file": "detectors/knn.safetensors"}, "does not name detector"),
    ("knn:raw", {"file": "detectors/knn.raw.safetensors"}, "does not name detector"),
    ("knn/../x", {}, "detectors.knn/../x"),
    ("knn", {"n_fit": 0}, "n_fit"),
    ("knn", {"hyper_parameters": {"k": [1, 2]}}, "hyper_parameters"),
    ("knn", {"surprise": 1}, "surprise"),
])
def test_bad_fitted_detector_entries_are_refused(api_run: Path, tmp_path: Path, key: str, change: dict[str, object],
                                                 why: str) -> None:
    run = _copy(api_run, tmp_path)
    digest = rec_mod.read_record(run).weights_sha256
    _edit(run, {"detectors": {key: _fitted_entry(digest, **change)}})
    with pytest.raises(RunError) as e:
        Run.load(run)
    assert why in str(e.value) and str(run / "model.json") in str(e.value), str(e.value)


def test_records_without_fitted_or_combined_screens_keep_the_earlier_keys(api_run: Path, tmp_path: Path) -> None:
    run = _copy(api_run, tmp_path)
    calibrate_run(run, tpr=0.9)
    meta = json.loads((run / "model.json").read_text())
    assert "detectors" not in meta  # written only when a fitted detector is saved
    # a calibration names the weights it was made with (issue 24): the one key a new calibration adds
    assert set(meta["calibrations"]["default"]) == {"detector", "tpr", "threshold", "alpha", "scores", "split",
                                                    "weights_sha256"}
    assert meta["calibrations"]["default"]["weights_sha256"] == meta["weights_sha256"]


def test_fitted_detector_entries_and_combined_calibrations_are_read_back(api_run: Path, tmp_path: Path) -> None:
    run = _copy(api_run, tmp_path)
    digest = rec_mod.read_record(run).weights_sha256
    combined = {"detector": "feature_norm,knn", "tpr": 0.9, "threshold": -2.302585092994046, "alpha": 0.1,
                "scores": [-1.0, 0.0], "split": {}, "members": ["feature_norm", "knn"],
                "member_scores": [[1.0, 2.0], [-3.0, -1.0]], "combine": "cauchy", "fitted": {"knn": "2" * 64}}
    _edit(run, {"detectors": {"knn": _fitted_entry(digest)}, "calibrations": {"both": combined}})
    rec = Run.load(run).record
    assert rec.detectors["knn"].hyper_parameters == {"k": 50} and rec.calibrations["both"].combine == "cauchy"
    rec_mod.write_record(run, rec)  # the writer round-trips both
    assert rec_mod.read_record(run) == rec
    _edit(run, {"calibrations": {"both": {**combined, "combine": "fisher"}}})
    with pytest.raises(RunError, match=r"calibrations\.both"):
        Run.load(run)


@pytest.mark.parametrize(("text", "why"), [
    ("{not json", "not valid JSON"),
    ('{"schema": "l2ood.run/2", "train_seconds": NaN}', "non-standard JSON token NaN"),
    ("[1, 2]", "JSON object"),
    ('{"schema": "l2ood.run/9"}', "not supported"),
    ("{" * 100_000, "not valid JSON"),
])
def test_malformed_records(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "model.json").write_text(text)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RunError, match=why):
        Run.load(tmp_path)


def test_oversized_record_is_refused_before_reading(tmp_path: Path) -> None:
    with open(tmp_path / "model.json", "wb") as f:
        f.truncate(rec_mod.MAX_RECORD_BYTES + 1)  # sparse: nothing is written or read
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RunError, match="larger than any run record"):
        Run.load(tmp_path)


def test_weights_must_match_record(api_run: Path, tmp_path: Path) -> None:
    run = _copy(api_run, tmp_path)
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RunError, match="differ from those recorded"):
        Run.load(run)
    run2 = _copy(api_run, tmp_path / "b")
    _edit(run2, {"model.width": 512, "weights_sha256": rec_mod.file_sha256(run2 / "model.safetensors")})
    with pytest.raises(RunError, match="do not fit the model"):
        _ = Run.load(run2).model  # caught from the safetensors header, before a 512-wide net is allocated


def test_writer_refuses_what_it_could_not_read_back(api_run: Path, tmp_path: Path) -> None:
    run = _copy(api_run, tmp_path)
    rec = rec_mod.read_record(run)
    bad = rec.model_copy(update={"train_seconds": float("nan")})
    with pytest.raises(RunError, match="train_seconds"):
        rec_mod.write_record(run, bad)
    assert rec_mod.read_record(run) == rec  # the file is untouched
    assert not list(run.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------- 0.1.0 records

def _as_v1(run: Path, extra: dict[str, object]) -> None:
    """Rewrite a record in the shape l2ood 0.1.0 wrote."""
    new = json.loads((run / "model.json").read_text())
    old = {"model": new["model"], "train": new["train"], "history": new["history"], "n_train": new["data"]["n_train"],
           "runtime": "cpu / fp32", "world_size": 1, "train_seconds": 1.5, **extra}
    (run / "model.json").write_text(json.dumps(old))


def test_reads_and_upgrades_0_1_0_records(tmp_path: Path, data_root: Path) -> None:
    ds, _ = training_data("fashion-mnist", holdout=100, subset=200, subset_seed=7, root=data_root)
    run = tmp_path / "old"
    train(ds, ModelConfig(width=2), TrainConfig(**{**CFG, "seed": 7}), run, progress=False, log=None)  # type: ignore[arg-type]
    cal = {"detector": "feature_norm", "tpr": 0.95, "threshold": 1.25, "alpha": None, "scores": [1.0, 1.25, 2.0],
           "split": {"source": "fashion-mnist train holdout", "n": 3}}
    _as_v1(run, {"dataset": "fashion-mnist", "data": {"holdout": {"n": 100, "seed": 0}, "train_subset": 200},
                 "calibration": cal})
    r = Run.load(run, device="cpu", precision="fp32", data_root=data_root)
    assert r.record.upgraded_from == "0.1.0" and r.record.provenance.l2ood == "0.1.0"
    assert r.calibration() is not None and r.calibration().threshold == 1.25  # type: ignore[union-attr]
    train_split = r.train_split()  # 0.1.0 drew the subset with the training seed: the same 200 images
    assert len(train_split) == 200 and torch.equal(train_split.images, ds.images)
    assert r.id_test()[1].startswith("fashion-mnist (test)")
    # a writer stores it back upgraded, keeping the old calibration beside the new one
    calibrate_run(r, tpr=0.9, name="strict", data_root=data_root)
    meta = json.loads((run / "model.json").read_text())
    assert meta["schema"] == "l2ood.run/2" and set(meta["calibrations"]) == {"default", "strict"}


def test_0_1_0_bench_record_without_a_loadable_dataset(api_run: Path, tmp_path: Path) -> None:
    run = _copy(api_run, tmp_path)
    _as_v1(run, {"dataset": "train", "data": {"holdout": {"n": 0, "seed": 0}}, "recipe": "cpu-small"})
    r = Run.load(run)
    assert r.data.train is None and r.record.recipe == "cpu-small"
    with pytest.raises(DataError, match="no train data recorded"):
        r.train_split()


# ------------------------------------------------------------------------------------------- every path evaluable

def test_api_run_on_npz_is_evaluable_and_calibratable(api_run: Path, tmp_path: Path) -> None:
    run = _copy(api_run, tmp_path)
    assert main(["evaluate", str(run), "--ood", "noise", "--n-ood", "16", "--detectors", "feature_norm,mahalanobis",
                 "--no-progress", "--precision", "fp32"]) == 0
    (res,) = read_results(run / "eval" / "results.json").to_json()["runs"].values()
    assert res["n_id_test"] == 12 and "holdout" in res["id_source"] and res["code_version"]["l2ood"]
    assert main(["calibrate", str(run), "--no-progress", "--precision", "fp32"]) == 0
    assert Run.load(run).calibration().n == 12  # type: ignore[union-attr]


def test_api_run_on_image_folder_and_screen_equivalence(tmp_path: Path) -> None:
    """An image screened from its file and the same image loaded through the data path reach the model as
    the same tensor and get the same score."""
    rng = np.random.default_rng(3)
    root = tmp_path / "tree"
    for k, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        for i in range(12):
            im = np.clip(rng.normal(70 + 100 * k, 25, (37, 45, 3)), 0, 255).astype(np.uint8)  # not the model size
            Image.fromarray(im).save(root / c / f"{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (23, 19), dtype=np.uint8)).convert("LA").save(root / "a" / "zz_gray.png")
    train_set, hold = training_data(f"imagefolder:{root}", holdout=5)
    assert hold is not None
    out = tmp_path / "run"
    train(train_set, ModelConfig(width=2), TrainConfig(**CFG), out, progress=False, log=None)  # type: ignore[arg-type]
    run = Run.load(out, device="cpu", precision="fp32")
    assert run.record.preprocessing.size == (32, 32)
    train_imgs = run.train_split()
    files = sorted(p for p in root.rglob("*.png"))
    scr = Screener(run, threshold=0.0)
    for f in [*files[:3], root / "a" / "zz_gray.png"]:
        from_data = load_dataset(f"imagefolder:{root}", "train", size=(32, 32))
        idx = files.index(f)
        via_screen = scr.to_model_format(np.asarray(Image.open(f).convert("RGB") if f.name.startswith("zz")
                                                    else Image.open(f)))
        from l2ood.data.preprocess import load_image

        via_file = load_image(f, 3, (32, 32))
        assert torch.equal(via_file, from_data.images[idx]) and torch.equal(via_screen[0], via_file)
    # the screen's score of a file equals the forward pass over the data path's tensor
    # (a batch of one, as the screen runs it: fp32 convolutions of other batch shapes may round differently)
    rec = next(iter(scr.screen([files[0]])))
    ext = run.forward_batch(load_dataset(f"imagefolder:{root}", "train", size=(32, 32)).images[:1])
    assert rec["score"] == pytest.approx(float(ext.features[0].norm()), rel=1e-6)
    assert len(train_imgs) == len(files) - 5
    calibrate_run(run, tpr=0.8)
    assert Run.load(out).calibration().n == 5  # type: ignore[union-attr]


def test_cli_train_subset_is_recorded_and_used(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data-root", str(data_root), "--epochs", "1", "--width", "2", "--holdout", "50",
                 "--train-subset", "120", "--seed", "5", "--out", str(run), "--no-progress",
                 "--precision", "fp32"]) == 0
    r = Run.load(run, data_root=data_root)
    train_split = r.train_split()
    expect, _ = training_data("fashion-mnist", holdout=50, subset=120, subset_seed=5, root=data_root)
    assert len(train_split) == 120 and torch.equal(train_split.images, expect.images)


def test_bench_runs_are_evaluable_and_calibratable(tmp_path: Path, data_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from l2ood.bench import BENCHMARKS

    folder = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for c in ("x", "y"):
            (folder / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / split / c / f"{i}.png")
    monkeypatch.setitem(BENCHMARKS, "local-tiny", {
        "id": "imagefolder:{root}/tree/test", "train": "imagefolder:{root}/tree/train", "channels": 3,
        "size": [32, 32], "ood": {"far": ["noise"]}})
    out = tmp_path / "bench"
    assert main(["bench", "--benchmark", "local-tiny", "--recipe", "cpu-small", "--width", "2", "--epochs", "1",
                 "--variants", "l2", "--seeds", "0", "--detectors", "feature_norm", "--data-root", str(tmp_path),
                 "--out", str(out), "--no-progress", "--precision", "fp32", "--n-ood", "8"]) == 0
    run_dir = out / "resnet18" / "l2" / "seed0"
    r = Run.load(run_dir)
    assert r.record.recipe == "cpu-small" and r.data.test_origin == "test-data"
    assert len(r.train_split()) == 32 and len(r.id_test()[0]) == 12
    assert main(["evaluate", str(run_dir), "--ood", "noise", "--n-ood", "8", "--no-progress"]) == 0
    assert main(["calibrate", str(run_dir), "--calibration-data", f"imagefolder:{folder / 'test'}",
                 "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows and all(r["l2ood"] for r in rows)
    assert "Code: cells by l2ood" in (out / "results.md").read_text()


def test_rerunning_a_finished_run_keeps_its_calibrations(tmp_path: Path, data_root: Path) -> None:
    argv = ["train", "--data-root", str(data_root), "--epochs", "1", "--width", "2", "--holdout", "50",
            "--out", str(tmp_path / "run"), "--no-progress", "--precision", "fp32"]
    assert main(argv) == 0
    assert main(["calibrate", str(tmp_path / "run"), "--data-root", str(data_root), "--no-progress"]) == 0
    before = Run.load(tmp_path / "run").calibration()
    assert main([*argv, "--resume"]) == 0  # finished: nothing to train, the record is rewritten
    assert Run.load(tmp_path / "run").calibration() == before


# ------------------------------------------------------------------------------------------- CLI errors

def test_internal_errors_are_not_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    cli = sys.modules["l2ood.cli.main"]

    def boom(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_analyze", boom)
    monkeypatch.setenv("L2OOD_LOG_DIR", str(tmp_path / "logs"))
    assert main(["analyze", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "ZeroDivisionError" in err
    (log,) = (tmp_path / "logs").glob("crash-*.log")
    text = log.read_text()
    assert "Traceback" in text and "a bug" in text and '"l2ood"' in text
    assert main(["calibrate", str(tmp_path / "nope")]) == 2  # a user error stays exit 2, no log
    assert len(list((tmp_path / "logs").glob("crash-*.log"))) == 1


def test_analysis_json_carries_the_code_version(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data-root", str(data_root), "--epochs", "1", "--width", "2", "--holdout", "50",
                 "--out", str(run), "--track", "every=1,n_train=64,n_test=64,n_ood=16", "--track-ood", "noise",
                 "--no-progress", "--precision", "fp32"]) == 0
    assert main(["analyze", str(run), "--out", str(tmp_path / "an")]) == 0
    summary = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert summary["code_version"]["torch"] == torch.__version__
