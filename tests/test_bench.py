"""`l2ood bench` end to end on a tiny generated benchmark: matrix, CSV/markdown, resumability."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from l2ood.bench import BENCHMARKS, RECIPES, aggregate, resolve
from l2ood.cli import main
from l2ood.results import BenchCell, ResultsFile, read_results, record_of


@pytest.fixture
def tiny_bench(monkeypatch: pytest.MonkeyPatch, data_root: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(data_root / "blobs.npz", images=rng.integers(0, 256, (40, 20, 20, 3), dtype=np.uint8))
    monkeypatch.setitem(BENCHMARKS, "tiny", {
        "id": "fashion-mnist", "channels": 1, "size": [28, 28],
        "ood": {"near": ["mnist"], "far": ["noise", "npz:{root}/blobs.npz"]},
    })
    return data_root


def test_resolve_root() -> None:
    assert resolve("npz:{root}/a.npz", "/data/") == "npz:/data/a.npz"
    assert resolve("cifar10", None) == "cifar10"
    with pytest.raises(ValueError, match="data-root"):
        resolve("npz:{root}/a.npz", None)


def test_definitions_are_complete() -> None:
    c10 = BENCHMARKS["cifar10"]
    assert c10["ood"] == {"near": ["cifar100", "tin"], "far": ["mnist", "svhn", "dtd", "places365"]}
    assert BENCHMARKS["cifar100"]["ood"]["near"] == ["cifar10", "tin"]
    assert RECIPES["paper-resnet18"]["epochs"] == 60 and RECIPES["paper-resnet50"]["epochs"] == 100
    assert RECIPES["openood"]["epochs"] == 100


def test_bench_matrix_and_resume(tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    def argv(detectors: str) -> list[str]:
        return ["bench", "--benchmark", "tiny", "--recipe", "cpu-small", "--width", "4", "--epochs", "1",
                "--batch-size", "64", "--variants", "l2,ce", "--seeds", "0,1", "--detectors", detectors,
                "--data-root", str(tiny_bench), "--out", str(out), "--no-progress", "--precision", "fp32",
                "--n-ood", "30"]

    assert main(argv("feature_norm,msp,knn")) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    # L2: feature_norm, msp:trained, msp:raw, knn; CE: feature_norm, msp, knn — × 2 seeds × 3 OoD sets
    assert len(rows) == (4 + 3) * 2 * 3
    assert {r["group"] for r in rows} == {"near", "far"}
    assert {r["detector"] for r in rows if r["variant"] == "l2"} == {"feature_norm", "msp:trained", "msp:raw", "knn"}
    md = (out / "results.md").read_text()
    assert "near AUROC" in md and "far FPR95 (OoD+, OpenOOD)" in md and "far FPR95 (ID+)" in md and " ± " in md
    assert {"fpr95", "fpr95_ood_pos"} <= set(rows[0]) and all(0 <= float(r["fpr95_ood_pos"]) <= 1 for r in rows)
    # the near group mean is the mean over its data sets, averaged over seeds
    l2fn = [r for r in rows if r["variant"] == "l2" and r["detector"] == "feature_norm" and r["group"] == "far"]
    far_mean = np.mean([np.mean([float(r["auroc"]) for r in l2fn if r["seed"] == s]) for s in ("0", "1")])
    assert f"{100 * far_mean:.2f}" in md
    # resume: nothing is retrained or re-evaluated
    w = out / "resnet18" / "l2" / "seed0" / "model.safetensors"
    cell = out / "cells" / "resnet18-l2-seed0.json"
    mtimes = (w.stat().st_mtime_ns, cell.stat().st_mtime_ns)
    capsys.readouterr()
    assert main(argv("feature_norm,msp,knn")) == 0
    assert (w.stat().st_mtime_ns, cell.stat().st_mtime_ns) == mtimes
    assert "done" in capsys.readouterr().err
    # adding a detector re-evaluates (from cached extractions) without retraining
    assert main(argv("feature_norm,energy")) == 0
    assert w.stat().st_mtime_ns == mtimes[0]
    assert "energy:raw" in read_results(cell).only.detectors


def test_bench_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--archs", "resnet1000"]) == 2
    assert "unknown architecture" in capsys.readouterr().err
    assert main(["bench", "--variants", "softmax"]) == 2
    assert "unknown variant" in capsys.readouterr().err


def _cell(seed: int, metrics: dict[str, dict[str, float]], legacy: bool = False) -> dict[str, object]:
    """A bench cell file: the results schema, or (``legacy``) the shape l2ood 0.2 wrote before it."""
    rec = {"model": {"arch": "resnet18"}, "head": "l2", "id_dataset": "id", "n_id_test": 10, "id_accuracy": 0.9,
           "detectors": ["feature_norm"], "code_version": {"l2ood": "0.2.0", "git_commit": None},
           "ood": {s: {"n": 10, "detectors": {"feature_norm": m}} for s, m in metrics.items()}}
    cell = {"arch": "resnet18", "variant": "l2", "seed": seed, "requested": ["feature_norm"],
            "groups": {"a": "near", "b": "far"}}
    if legacy:
        return {**cell, "code_version": rec["code_version"], "results": rec}
    return ResultsFile.new({f"c{seed}": record_of(rec)}, bench=BenchCell.model_validate(cell)).to_json()


def test_aggregate_shows_both_fpr_conventions_labelled(tmp_path: Path) -> None:
    (tmp_path / "cells").mkdir()
    m = {"auroc": 0.9, "aupr_in": 0.5, "aupr_out": 0.5}
    (tmp_path / "cells" / "c0.json").write_text(json.dumps(_cell(0, {
        "a": {**m, "fpr95": 0.40, "fpr95_ood_pos": 0.10}, "b": {**m, "fpr95": 0.20, "fpr95_ood_pos": 0.30}})))
    # a cell written before fpr95_ood_pos existed (and before the results schema): its column is empty, the table
    # averages what exists
    (tmp_path / "cells" / "c1.json").write_text(json.dumps(_cell(1, {
        "a": {**m, "fpr95": 0.60}, "b": {**m, "fpr95": 0.40}}, legacy=True)))
    csv_path, md_path = aggregate(tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0])[:12] == ["arch", "variant", "seed", "detector", "ood", "group", "id_acc", "auroc", "fpr95",
                                  "fpr95_ood_pos", "aupr_in", "aupr_out"]
    assert [r["fpr95_ood_pos"] for r in rows] == ["0.1", "0.3", "", ""]
    md = md_path.read_text()
    header = next(line for line in md.splitlines() if line.startswith("| arch | variant | detector | near AUROC"))
    assert header == ("| arch | variant | detector | near AUROC | far AUROC | near FPR95 (OoD+, OpenOOD) | "
                      "far FPR95 (OoD+, OpenOOD) | near FPR95 (ID+) | far FPR95 (ID+) | ID acc | seeds |")
    row = next(line for line in md.splitlines() if line.startswith("| resnet18 | l2 | feature_norm | 90.00"))
    # OoD+: one seed only (10.00, 30.00); ID+: mean ± sample std of (40, 60) and (20, 40) over the two seeds
    assert row == ("| resnet18 | l2 | feature_norm | 90.00 ± 0.00 [90.0–90.0] | 90.00 ± 0.00 [90.0–90.0] | 10.00 | "
                   "30.00 | 50.00 ± 14.14 [40.0–60.0] | 30.00 ± 14.14 [20.0–40.0] | 90.00 ± 0.00 [90.0–90.0] | 2 |")
    assert "OpenOOD v1.5's FPR@95 (OoD positive)" in md and "l2ood's FPR@95 (ID positive)" in md


def test_aggregate_flags_an_unstable_data_set_with_every_seed(tmp_path: Path) -> None:
    (tmp_path / "cells").mkdir()
    m = {"fpr95": 0.5, "fpr95_ood_pos": 0.5, "aupr_in": 0.5, "aupr_out": 0.5}
    for seed, b in enumerate((0.979, 0.701, 0.95)):  # "b" moves by 27.8 points between seeds, "a" by 1
        (tmp_path / "cells" / f"c{seed}.json").write_text(json.dumps(_cell(seed, {
            "a": {**m, "auroc": 0.90 + 0.005 * seed}, "b": {**m, "auroc": b}})))
    _, md_path = aggregate(tmp_path)
    md = md_path.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| resnet18 | l2 | feature_norm | 90.50 ["))
    assert row == "| resnet18 | l2 | feature_norm | 90.50 [90.0–91.0] | 87.67 [70.1–97.9] ⚠ |"
    assert "- resnet18 / l2 / feature_norm on b: seed 0: 97.9, seed 1: 70.1, seed 2: 95.0" in md
    assert "Flagged cells per OoD set: b 1." in md
    # the group table shows the spread too: far = b alone
    assert "| 87.67 ± 15.28 [70.1–97.9] |" in md


def test_bench_combined_column_is_cross_fitted(tiny_bench: Path, tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from l2ood.metrics.conformal import combined_scores

    out = tmp_path / "bench"
    assert main(["bench", "--benchmark", "tiny", "--recipe", "cpu-small", "--width", "4", "--epochs", "1",
                 "--batch-size", "64", "--variants", "l2", "--seeds", "0", "--detectors", "feature_norm",
                 "--combine", "feature_norm,knn", "--data-root", str(tiny_bench), "--out", str(out),
                 "--no-progress", "--precision", "fp32", "--n-ood", "30", "--n-id", "60"]) == 0
    cell = read_results(out / "cells" / "resnet18-l2-seed0.json")
    col = "bonferroni(feature_norm,knn)"
    r = cell.only.model_dump(mode="json")
    assert cell.bench is not None and "combine:feature_norm,knn" in cell.bench.requested
    assert r["detectors"] == ["feature_norm", col]
    assert "cross-fitted" in r["combined"][col]["calibration"] and r["combined"][col]["n_calibration"] == 30
    npz = np.load(out / "resnet18" / "l2" / "seed0" / "eval" / "scores.npz")
    id_name = r["id_dataset"]
    # recompute the two folds by hand from the member scores (knn is not reported alone: recompute it)
    from l2ood.detectors import make_detector
    from l2ood.run import Run

    run = Run.load(out / "resnet18" / "l2" / "seed0", device="cpu", precision="fp32", data_root=tiny_bench)
    knn = make_detector("knn").fit(run.forward(run.train_split()), run.head)
    fn = make_detector("feature_norm")
    ood_name = "mnist"
    from l2ood.data import load_dataset

    ids = run.to_input_format(load_dataset("fashion-mnist", "test", root=tiny_bench, n=60, seed=0))
    oods = run.to_input_format(load_dataset("mnist", "test", root=tiny_bench, n=30, seed=0))
    e_id, e_ood = run.forward(ids, cache=False), run.forward(oods, cache=False)
    m_id = np.stack([fn.score(e_id, run.head).numpy(), knn.score(e_id, run.head).numpy()], 1).astype(np.float64)
    m_ood = np.stack([fn.score(e_ood, run.head).numpy(), knn.score(e_ood, run.head).numpy()], 1).astype(np.float64)
    np.testing.assert_allclose(npz[f"{id_name}/feature_norm"], m_id[:, 0], rtol=1e-6)
    perm = np.random.default_rng(0).permutation(60)
    a, b = np.sort(perm[:30]), np.sort(perm[30:])
    aurocs = []
    for f, g in ((a, b), (b, a)):
        cal = [m_id[g, 0], m_id[g, 1]]
        s_id, s_ood = combined_scores(cal, m_id[f]), combined_scores(cal, m_ood)
        aurocs.append(roc_auc_score(np.r_[np.ones(30), np.zeros(30)], np.r_[s_id, s_ood]))
    got = r["ood"][ood_name]["detectors"][col]["auroc"]
    assert got == pytest.approx(float(np.mean(aurocs)), abs=1e-6)
    # the stored ID scores are out of fold: half A against B, half B against A
    oof = np.empty(60)
    oof[a] = combined_scores([m_id[b, 0], m_id[b, 1]], m_id[a])
    oof[b] = combined_scores([m_id[a, 0], m_id[a, 1]], m_id[b])
    np.testing.assert_allclose(npz[f"{id_name}/{col}"], oof, rtol=1e-5)


def test_cifar_benchmark_analysis_of_combinations_and_best_columns(tmp_path: Path) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar10_local.py"
    spec = importlib.util.spec_from_file_location("cifar10_local", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cifar10_local"] = mod
    spec.loader.exec_module(mod)
    # two seeds; near = one set, far = two sets (group value = their mean)
    au = {  # (variant, detector): {(set, seed): auroc}
        ("l2", "feature_norm"): {("tin", 0): .80, ("tin", 1): .78, ("mnist", 0): .98, ("mnist", 1): .70,
                                 ("dtd", 0): .90, ("dtd", 1): .90},
        ("l2", "knn"): {("tin", 0): .84, ("tin", 1): .82, ("mnist", 0): .90, ("mnist", 1): .92,
                        ("dtd", 0): .88, ("dtd", 1): .86},
        ("l2", "bonferroni(feature_norm,knn)"): {("tin", 0): .85, ("tin", 1): .81, ("mnist", 0): .97,
                                                 ("mnist", 1): .80, ("dtd", 0): .89, ("dtd", 1): .88},
        ("ce", "feature_norm"): {("tin", 0): .75, ("tin", 1): .75, ("mnist", 0): .90, ("mnist", 1): .90,
                                 ("dtd", 0): .80, ("dtd", 1): .80},
        ("ce", "energy"): {("tin", 0): .83, ("tin", 1): .83, ("mnist", 0): .93, ("mnist", 1): .95,
                           ("dtd", 0): .91, ("dtd", 1): .91},
    }
    grp = {"tin": "near", "mnist": "far", "dtd": "far"}
    csv_path = tmp_path / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["variant", "seed", "detector", "ood", "group", "auroc"])
        w.writeheader()
        for (v, d), vals in au.items():
            for (s, seed), a in vals.items():
                w.writerow({"variant": v, "seed": seed, "detector": d, "ood": s, "group": grp[s], "auroc": a})
    md = mod.analysis(csv_path)
    # near: combination (85+81)/2 = 83.0 vs better part knn (84+82)/2 = 83.0 → Δ +0.00; wins: seed 0 (85 > 84),
    #       seed 1 (81 < 82) → 1/2
    # far: combination per seed (97+89)/2 = 93.0, (80+88)/2 = 84.0 → 88.5; parts: knn 89.0 (both seeds),
    #      feature_norm 94.0 / 80.0 → 87.0; Δ = 88.5 − 89.0 = −0.50; wins: 93 < 94, 84 < 89 → 0/2
    assert "| L2 | bonferroni(feature_norm,knn) | +0.00 | 1/2 | -0.50 | 0/2 |" in md
    # near: CE's best energy 83.0; L2's best: knn and the combination tie at 83.0 (the first listed wins: knn);
    #       per seed knn 84 ≥ 83, 82 < 83 → 1/2; L2 ‖z‖ near 79.0
    assert "| near | L2 | knn | 83.00 | +0.00 | 1/2 | 79.00 |" in md
    # far: CE's best energy (92+93)/2 = 92.5; L2's best knn 89.0 → Δ −3.50, seeds 89 < 92, 89 < 93 → 0/2
    assert "| far | L2 | knn | 89.00 | -3.50 | 0/2 | 87.00 |" in md
    assert "| far | CE | energy | 92.50 | +0.00 | 2/2 |  |" in md
    # L2 ‖z‖ far per seed: 94.0 and 80.0 → range 14.0, unstable
    assert "| far | L2 | feature_norm | 94.0 | 80.0 | 14.0 **unstable** |" in md


def test_bench_never_mixes_settings(tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bench folder holds one set of settings: a cell or a trained model of other hyper-parameters is refused
    (exit 2, naming the setting), never reused under the new ones."""
    out = tmp_path / "bench"

    def argv(epochs: str) -> list[str]:
        return ["bench", "--benchmark", "tiny", "--recipe", "cpu-small", "--width", "4", "--epochs", epochs,
                "--batch-size", "64", "--variants", "l2", "--seeds", "0", "--detectors", "feature_norm",
                "--data-root", str(tiny_bench), "--out", str(out), "--no-progress", "--precision", "fp32",
                "--n-ood", "20"]

    assert main(argv("1")) == 0
    cell = out / "cells" / "resnet18-l2-seed0.json"
    key = read_results(cell).bench
    assert key is not None and key.hyper is not None and key.hyper["epochs"] == 1 and key.hyper["n_ood"] == 20
    before, first = cell.read_bytes(), read_results(cell).only
    capsys.readouterr()
    assert main(argv("2")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "epochs: 1 there, 2 now" in err
    assert cell.read_bytes() == before  # nothing rewritten
    # the cell is gone but its model is not: the model of other settings is refused too
    cell.unlink()
    assert main(argv("2")) == 2
    err = capsys.readouterr().err
    assert "holds a model trained with other settings" in err and "epochs: 1 there, 2 now" in err
    # the same settings resume: the model is kept, the cell written again with the same numbers
    assert main(argv("1")) == 0
    again = read_results(cell)
    assert again.bench == key and again.only.ood == first.ood and again.only.id_accuracy == first.id_accuracy
