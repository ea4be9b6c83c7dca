"""Checks that must refuse what they are given (issue 24, "checks that pass what they should refuse"): a vanishing
TPR, a detector that scores everything alike, calibrations of other weights, validation OoD images that are the
run's own ID images, and a fine-tune from weights that are not the ones recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from l2ood.cli import main
from l2ood.data import load_dataset
from l2ood.errors import ConfigError, RunError
from l2ood.metrics.conformal import calibrate, calibrate_combined, threshold_for_tpr
from l2ood.record import read_record, update_record
from l2ood.run import Run
from l2ood.screen import Screener, calibrate_run
from l2ood.selection import check_apart

FP32 = ["--precision", "fp32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import tiny_run

    root = tmp_path_factory.mktemp("failclosed")
    return tiny_run(root), root / "data"


def _copy(trained: tuple[Path, Path], dest: Path) -> Path:
    shutil.copytree(trained[0], dest, ignore=shutil.ignore_patterns(".l2ood.lock"))
    return dest


def test_a_vanishing_tpr_is_refused_not_turned_into_the_loosest_threshold() -> None:
    scores = np.arange(1.0, 151.0)
    assert threshold_for_tpr(scores, 1 / 150) == 150.0  # the strictest threshold that keeps one image
    for tpr in (1e-12, 1e-3, 0.5 / 150):
        with pytest.raises(ConfigError, match="keeps none of the 150 calibration images"):
            threshold_for_tpr(scores, tpr)


def test_a_vanishing_tpr_through_the_cli(trained: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained, tmp_path / "run")
    capsys.readouterr()
    assert main(["calibrate", str(run), "--tpr", "1e-9", "--data-root", str(trained[1]), *FP32]) == 2
    assert "keeps none of the 60 calibration images" in capsys.readouterr().err
    assert "default" not in read_record(run).calibrations


def test_a_detector_that_scores_everything_alike_cannot_drive_a_screen() -> None:
    with pytest.raises(ConfigError, match="all 40 calibration images score 3"):
        calibrate(np.full(40, 3.0), "feature_norm", alpha=0.1)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="calibration scores of knn: all 40 calibration images score -1"):
        calibrate_combined({"feature_norm": rng.normal(size=40), "knn": np.full(40, -1.0)}, alpha=0.2)
    cal = calibrate_combined({"feature_norm": rng.normal(size=40), "knn": rng.normal(size=40)}, alpha=0.2)
    assert cal.members == ["feature_norm", "knn"]  # varied members are fine


def test_calibrations_are_tied_to_their_weights(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir = _copy(trained, tmp_path / "run")
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=trained[1])
    cal = calibrate_run(run, tpr=0.9)
    stored = read_record(run_dir).calibrations["default"]
    assert cal.weights_sha256 == run.record.weights_sha256 == stored.weights_sha256
    other = type(cal)(**{**cal.to_dict(), "weights_sha256": "f" * 64})
    with pytest.raises(RunError, match="made with other weights"):
        Screener(run, other)
    with pytest.raises(RunError, match=r"calibrations\.stolen: made with other weights"):
        update_record(run_dir, lambda r: r.model_copy(update={"calibrations": {**r.calibrations, "stolen": other}}))
    assert "stolen" not in read_record(run_dir).calibrations
    legacy = type(cal)(**{**cal.to_dict(), "weights_sha256": None})  # calibrations made before it was recorded
    assert Screener(run, legacy).calibrated


def test_validation_ood_images_are_never_the_runs_own_id_images(trained: tuple[Path, Path]) -> None:
    root = trained[1]
    test = load_dataset("fashion-mnist", "test", root=root)
    train = load_dataset("fashion-mnist", "train", root=root).subset(40, seed=1)
    val_id = type(train)("fashion-mnist-holdout", train.images, train.labels)
    noise = load_dataset("noise", n=20, size=(28, 28), channels=1)
    check_apart(noise, [load_dataset("textures", n=10, size=(28, 28), channels=1)], val_id, test)  # fine
    with pytest.raises(ConfigError, match="is the run's ID test images"):
        check_apart(test, [noise], val_id, test.subset(50, seed=2))
    renamed = type(test)("my-ood", test.images[:30].clone(), None)
    with pytest.raises(ConfigError, match=r"shares 30 image\(s\) with the ID test images"):
        check_apart(renamed, [noise], val_id, test)
    copy_of_val = type(test)("other-ood", val_id.images[:5].clone(), None)
    with pytest.raises(ConfigError, match=r"shares 5 image\(s\) with the ID validation images"):
        check_apart(copy_of_val, [noise], val_id, test)


def test_init_from_refuses_weights_that_are_not_the_runs_own(trained: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = _copy(trained, tmp_path / "src")
    tensors = load_file(str(src / "model.safetensors"))
    key = next(k for k in tensors if k.startswith("backbone.") and tensors[k].is_floating_point())
    tensors[key] = tensors[key] + 1.0  # replaced after training: the digest no longer matches the record
    save_file(tensors, str(src / "model.safetensors"))

    def finetune(source: Path, out: str) -> int:
        return main(["train", "--data-root", str(trained[1]), "--epochs", "1", "--width", "2", "--holdout", "60",
                     "--init-from", str(source), "--out", str(tmp_path / out), *FP32])

    capsys.readouterr()
    assert finetune(src, "ft1") == 2
    assert "weights differ from those recorded" in capsys.readouterr().err
    assert not (tmp_path / "ft1" / "model.safetensors").exists()
    # a bare weights file holding NaN cannot start a fine-tune either
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(tmp_path / "nan.safetensors"))
    assert finetune(tmp_path / "nan.safetensors", "ft2") == 2
    assert "NaN or infinite weights" in capsys.readouterr().err
    # the run's own weights still work
    assert finetune(trained[0], "ft3") == 0
