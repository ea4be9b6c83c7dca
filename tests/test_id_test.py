"""Which images a run is judged on as "ID test": never its training images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2ood.cli import main
from l2ood.data import DataError, has_split, save_npz
from l2ood.evaluation import id_test_set, training_split

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
    meta = {"dataset": spec, "data": {"holdout": {"n": 12, "seed": 0}}}
    test, where = id_test_set(meta)
    train = training_split(meta)
    assert len(test) == 12 and len(train) == 48 and "holdout of 12" in where
    seen = {int(v) for v in train.images[:, 0, 0, 0]}
    held = {int(v) for v in test.images[:, 0, 0, 0]}
    assert seen and not (seen & held) and len(seen | held) == 60


def test_explicit_test_data_win_and_no_holdout_is_an_error(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz")
    other = _pack(tmp_path / "other.npz", n=7)
    test, where = id_test_set({"dataset": spec, "data": {"holdout": {"n": 12, "seed": 0}, "test": other}})
    assert len(test) == 7 and where == other
    with pytest.raises(DataError, match="no separate test split"):
        id_test_set({"dataset": spec, "data": {"holdout": {"n": 0, "seed": 0}}})


def test_split_folder_tree_uses_its_test_folder(tmp_path: Path) -> None:
    _tree(tmp_path / "d" / "train", 5)
    _tree(tmp_path / "d" / "test", 3)
    test, where = id_test_set({"dataset": f"imagefolder:{tmp_path / 'd'}", "data": {"holdout": {"n": 2}}})
    assert len(test) == 6 and "test split" in where


def test_train_records_test_data_and_tracks_on_it(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz", n=80)
    other = _pack(tmp_path / "other.npz", n=9)
    run = tmp_path / "run"
    rc = main(["train", "--dataset", spec, "--test-data", other, "--holdout", "10", "--epochs", "1", "--width", "4",
               "--batch-size", "16", "--out", str(run), "--track", "every=1,n_train=40,n_test=100,n_ood=20",
               "--track-ood", "noise", "--no-progress"])
    assert rc == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["data"]["test"] == other and meta["data"]["holdout"]["n"] == 10
    with np.load(run / "track" / "epoch-0001.npz") as z:
        assert z["id"].shape == (9,)  # the 9 images of --test-data, not the 10 held out or the 70 trained on


def test_a_split_already_made_is_used_not_reloaded(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz")
    meta = {"dataset": spec, "data": {"holdout": {"n": 12, "seed": 0}}}
    train, hold = training_split(meta), id_test_set(meta)[0]
    (tmp_path / "id.npz").unlink()  # a reload would now fail
    test, where = id_test_set(meta, split=(train, hold))
    assert test is hold and "holdout of 12" in where


def test_tracking_single_set_data_uses_the_holdout(tmp_path: Path) -> None:
    spec = _pack(tmp_path / "id.npz", n=80)
    run = tmp_path / "run"
    assert main(["train", "--dataset", spec, "--holdout", "10", "--epochs", "1", "--width", "4", "--batch-size",
                 "16", "--out", str(run), "--track", "every=1,n_train=40,n_test=100,n_ood=20", "--track-ood",
                 "noise", "--no-progress"]) == 0
    with np.load(run / "track" / "epoch-0001.npz") as z:
        assert z["id"].shape == (10,)  # the 10 held-out images, not the 70 trained on
