"""Hyper-parameter selection on a validation OoD set (l2ood.selection): the grid, the choice, the record, the
separation from the test sets, and `l2ood evaluate --val-ood` end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from l2ood.cli import main
from l2ood.detectors import DETECTORS, make_detector
from l2ood.errors import ConfigError
from l2ood.evaluation import evaluate, load_ood_sets
from l2ood.results import read_results
from l2ood.run import Run
from l2ood.selection import grid, select

FP32 = ["--precision", "fp32", "--no-progress"]


def test_grid_is_the_cartesian_product_in_declared_order() -> None:
    assert grid({"a": (1, 2), "b": ("x", "y", "z")}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]
    assert grid({}) == [{}]
    with pytest.raises(ConfigError, match="empty"):
        grid({"a": ()})


def _point(auroc_of: dict[int, float]) -> Any:
    """An evaluate_point whose validation AUROC is exactly ``auroc_of[k]`` (k=-1: refused)."""
    def point(params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
        k = params["k"]
        if k < 0:
            raise ConfigError(f"k={k} refused")
        # ID scores 0..99; OoD score j leaves c_j ID scores above it, sum c_j = auroc * 100 * 100 pairs
        n_pairs = round(auroc_of[k] * 100 * 100)
        s_id = np.arange(100, dtype=float)
        s_ood = np.array([99.5 - min(100, max(0, n_pairs - 100 * j)) for j in range(100)])
        return s_id, s_ood, f"det(k={k})"
    return point


def test_select_picks_the_highest_validation_auroc_and_records_every_point() -> None:
    aurocs = {1: 0.70, 10: 0.93, 50: 0.90, 100: 0.80}
    sel, det = select("knn", "trained", {"k": (1, 10, 50, 100, -1)}, {"k": 50}, _point(aurocs))
    assert det == "det(k=10)" and sel.chosen == {"k": 10}
    assert sel.chosen_auroc == pytest.approx(0.93) and sel.default_auroc == pytest.approx(0.90)
    assert [t["params"]["k"] for t in sel.tried] == [1, 10, 50, 100, -1]
    assert [round(t["auroc"], 4) for t in sel.tried[:4]] == [0.70, 0.93, 0.90, 0.80]
    assert sel.tried[4] == {"params": {"k": -1}, "error": "k=-1 refused"}
    json.dumps(dataclasses.asdict(sel))  # the record is JSON-able


def test_select_prefers_the_default_on_a_tie_and_fails_when_nothing_runs() -> None:
    sel, _ = select("knn", "raw", {"k": (1, 50, 100)}, {"k": 50}, _point({1: 0.9, 50: 0.9, 100: 0.8}))
    assert sel.chosen == {"k": 50}
    sel, _ = select("knn", "raw", {"k": (1, 50)}, {"k": 7}, _point({1: 0.9, 50: 0.9}))
    assert sel.chosen == {"k": 1} and sel.default_auroc is None  # default not in the grid: first of the best
    with pytest.raises(ConfigError, match="no point"):
        select("knn", "raw", {"k": (-1,)}, {"k": 50}, _point({}))


def test_search_spaces_are_valid_constructor_arguments() -> None:
    spaces = {n: c.search_space for n, c in DETECTORS.items() if c.search_space}
    assert {"knn", "react", "ash_s", "ash_p", "ash_b", "scale", "dice", "odin", "gen"} <= set(spaces)
    for name, space in spaces.items():
        for params in grid(space):
            det = make_detector(name, **params)  # every point constructs
            assert {k: det.hyper_parameters()[k] for k in params} == params


# ---------------------------------------------------------------- end to end on a small trained run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    root = tmp_path_factory.mktemp("select")
    assert main(["train", "--data-root", str(data_root), "--epochs", "2", "--width", "4", "--batch-size", "32",
                 "--holdout", "150", "--out", str(root / "run"), *FP32]) == 0
    return root / "run"


def test_evaluate_val_ood_selects_records_and_scores_the_tests_with_the_choice(
        run_dir: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--ood", "mnist", "--detectors", "feature_norm,knn,react",
                 "--val-ood", "noise", "--n-val-ood", "100", "--data-root", str(data_root), "--out", str(out),
                 *FP32]) == 0
    r = next(iter(read_results(out / "results.json").to_json()["runs"].values()))
    sel = r["selection"]
    assert sel["val_ood"].startswith("noise") and sel["n_val_ood"] == 100 and sel["n_val_id"] == 150
    assert set(sel["columns"]) == {"knn", "react:trained", "react:raw"}  # feature_norm has nothing to select
    knn = sel["columns"]["knn"]
    # the training bank has 450 rows: k = 500 and 1000 are refused and recorded, the rest scored
    assert [t["params"]["k"] for t in knn["tried"] if "error" in t] == [500, 1000]
    ok = [t for t in knn["tried"] if "auroc" in t]
    assert knn["chosen_auroc"] == max(t["auroc"] for t in ok) and knn["default"] == {"k": 50}
    k = knn["chosen"]["k"]
    assert r["detector_params"]["knn"]["k"] == k
    # independent recomputation: one recorded validation AUROC and the test AUROC with the chosen k
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data_root)
    train = run.forward(run.train_split())
    hold = run.holdout()
    assert hold is not None
    noise = load_ood_sets(["noise"], root=data_root, n=100, seed=0, channels=1, size=(28, 28))[0]
    e_hold, e_noise = run.forward(run.to_input_format(hold)), run.forward(run.to_input_format(noise))
    det10 = make_detector("knn", k=10).fit(train, run.head)
    y = np.r_[np.ones(150), np.zeros(100)]
    au10 = roc_auc_score(y, np.r_[det10.score(e_hold, run.head).numpy(), det10.score(e_noise, run.head).numpy()])
    assert next(t["auroc"] for t in ok if t["params"]["k"] == 10) == pytest.approx(au10, abs=1e-9)
    det = make_detector("knn", k=k).fit(train, run.head)
    id_test, _ = run.id_test()
    mnist = load_ood_sets(["mnist"], root=data_root, n=None, seed=0, channels=1, size=(28, 28))[0]
    s_id = det.score(run.forward(run.to_input_format(id_test)), run.head).numpy()
    s_ood = det.score(run.forward(run.to_input_format(mnist)), run.head).numpy()
    want = roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])
    assert r["ood"]["mnist"]["detectors"]["knn"]["auroc"] == pytest.approx(want, abs=1e-9)
    md = (out / "report.md").read_text()
    assert "## Hyper-parameters selected on validation data" in md and "| knn | k=50 |" in md
    assert "(+2 refused)" in md


def test_validation_sets_are_kept_apart_from_the_test_sets(run_dir: Path, data_root: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--ood", "mnist,noise", "--detectors", "knn", "--val-ood", "noise",
                 "--data-root", str(data_root), *FP32]) == 2
    assert "also a test OoD set" in capsys.readouterr().err
    # the same images under another name are refused too
    run = Run.load(run_dir, device="cpu", precision="fp32", data_root=data_root)
    hold = run.holdout()
    assert hold is not None
    mnist = load_ood_sets(["mnist"], root=data_root, n=None, seed=0, channels=1, size=(28, 28))[0]
    renamed = dataclasses.replace(mnist.subset(50, seed=3), name="my-validation-set")
    id_test, _ = run.id_test()
    with pytest.raises(ConfigError, match="shares 50 image"):
        evaluate(run, id_test, [mnist], ["knn"], fit_set=run.train_split(), val_id=hold, val_ood=renamed)
    with pytest.raises(ConfigError, match="ID test images"):
        evaluate(run, id_test, [mnist], ["knn"], fit_set=run.train_split(), val_id=id_test,
                 val_ood=load_ood_sets(["noise"], root=data_root, n=20, seed=0, channels=1, size=(28, 28))[0])
    with pytest.raises(ConfigError, match="needs both"):
        evaluate(run, id_test, [mnist], ["knn"], fit_set=run.train_split(), val_id=hold)


def test_selection_and_combination_split_the_holdout(run_dir: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--ood", "mnist", "--detectors", "knn", "--combine", "feature_norm,knn",
                 "--val-ood", "noise", "--n-val-ood", "60", "--data-root", str(data_root), "--out", str(out),
                 *FP32]) == 0
    r = next(iter(read_results(out / "results.json").to_json()["runs"].values()))
    col = "bonferroni(feature_norm,knn)"
    assert r["combined"][col]["n_calibration"] == 75 and r["selection"]["n_val_id"] == 75
    # the combination's knn member uses the selected k
    assert r["detector_params"]["knn"]["k"] == r["selection"]["columns"]["knn"]["chosen"]["k"]
