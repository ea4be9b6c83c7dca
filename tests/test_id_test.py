"""Which images a run is judged on as "ID test": never its training images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2ood.cli import main
from l2ood.data import DataError, has_split, save_npz
from l2ood.pipeline import id_test_for, training_data

RNG = np.random.default_rng(5)


def _tree(root: Path, n_per_class: int = 4) -> None:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def _pack(path: Path, n: int = 60) -> str:
    imgs = np.stack([np.full((32, 32, 3), i, np.uint8) for i in range(n)])  # image i is constant i: traceable
    save_npz(path, imgs, labels=np.arange(n) % 2)
    return f"npz:{path}"


def test_has_split(tmp_path: Path) -> None:
    assert has_split("fashion-mnist", "test") and has_split("fashion-mnist", "train")
    assert not has_split("dtd", "train")  # DTD is registered with a test split only
    _tree(tmp_path / "split" / "train")
    _tree(tmp_path / "split" / "test")
    _tree(tmp_path / "flat")
    _tree(tmp_path / "trainonly" / "train")
    assert has_split(f"imagefolder:{tmp_path / 'split'}", "test")
    assert not has_split(f"imagefolder:{tmp_path / 'split' / 'train'}", "test")  # class folders only
    assert not has_split(f"imagefolder:{tmp_path / 'flat'}", "test")
    assert not has_split(f"imagefolder:{tmp_path / 'trainonly'}", "test")
    assert not has_split(f"npz:{tmp_path / 'x.npz'}", "test")


def test_single_set_data_are_tested_on_the_holdout(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz")
    train, hold = training_data(spec, holdout=12)
    test, where = id_test_for(train, None, hold)
    assert test is hold and len(test) == 12 and len(train) == 48 and "holdout" in where
    seen = {int(v) for v in train.images[:, 0, 0, 0]}
    held = {int(v) for v in test.images[:, 0, 0, 0]}
    assert seen and not (seen & held) and len(seen | held) == 60
    test2, _ = id_test_for(train)  # rebuilt from the recorded source: the same images
    assert {int(v) for v in test2.images[:, 0, 0, 0]} == held


def test_explicit_test_data_win_and_no_holdout_is_an_error(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz")
    other = _pack(tmp_path / "other.npz", n=7)
    train, hold = training_data(spec, holdout=12)
    test, where = id_test_for(train, other, hold)
    assert len(test) == 7 and "other.npz" in where and "test-data" in where
    train0, _ = training_data(spec, holdout=0)
    with pytest.raises(DataError, match="no separate test split"):
        id_test_for(train0)


def test_split_folder_tree_uses_its_test_folder(tmp_path: Path) -> None:
    _tree(tmp_path / "d" / "train", 5)
    _tree(tmp_path / "d" / "test", 3)
    train, hold = training_data(f"imagefolder:{tmp_path / 'd'}", holdout=2)
    test, where = id_test_for(train, None, hold)
    assert len(test) == 6 and "test-split" in where


def test_train_records_test_data_and_tracks_on_it(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz", n=80)
    other = _pack(tmp_path / "other.npz", n=9)
    run = tmp_path / "run"
    rc = main(["train", "--dataset", spec, "--test-data", other, "--holdout", "10", "--epochs", "1", "--width", "4",
               "--batch-size", "16", "--out", str(run), "--track", "every=1,n_train=40,n_test=100,n_ood=20",
               "--track-ood", "noise", "--no-progress"])
    assert rc == 0
    meta = json.loads((run / "model.json").read_text())
    assert "npz:" + meta["data"]["test"]["spec"][4:] == other and meta["data"]["test_origin"] == "test-data"
    assert meta["data"]["holdout"]["ops"][0]["n"] == 10
    with np.load(run / "track" / "epoch-0001.npz") as z:
        assert z["id"].shape == (9,)  # the 9 images of --test-data, not the 10 held out or the 70 trained on


def test_tracking_single_set_data_uses_the_holdout(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz", n=80)
    run = tmp_path / "run"
    assert main(["train", "--dataset", spec, "--holdout", "10", "--epochs", "1", "--width", "4", "--batch-size",
                 "16", "--out", str(run), "--track", "every=1,n_train=40,n_test=100,n_ood=20", "--track-ood",
                 "noise", "--no-progress"]) == 0
    with np.load(run / "track" / "epoch-0001.npz") as z:
        assert z["id"].shape == (10,)  # the 10 held-out images, not the 70 trained on
