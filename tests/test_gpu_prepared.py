"""Issue 15's prepared GPU run, end to end at tiny size on the CPU: pack → device script (TINY=1) → report.

Generated data in the benchmark data layout (docs/RESULTS-cifar10.md, "Data layout": a CIFAR-10-like JPEG
tree, five npz OoD packs) go through
``benchmarks/gpu_pack.py`` (pack, unpack), ``benchmarks/gpu_paper.sh`` (the exact device entry point,
width 4, 1 epoch, a few hundred images) and ``benchmarks/gpu_report.py``; the assertions read the files
they write.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2ood.metrics.ood import fpr_at_tpr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_paper import converged_epoch, fpr95_openood  # noqa: E402

CLASSES = [f"class{k}" for k in range(10)]
OOD = {"tinyimagenet_test_resize": "near", "mnist_test": "far", "fashionmnist_test": "far",
       "dtd_partial10": "far", "textures_skimage": "far"}


def _shared_data(root: Path) -> Path:
    """A small stand-in for the data folder DATA/: cifar10-jpeg/{train,test}/<class>/NNNN.jpg + the npz packs."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 32), ("test", 21)):
        for k, cls in enumerate(CLASSES):
            d = root / "cifar10-jpeg" / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                img = np.clip(rng.normal(25 * k, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                img[:, : 3 + 2 * k] = 255 - 20 * k  # a class-dependent bar
                Image.fromarray(img).save(d / f"{i:04d}.jpg", quality=75)
    gray = rng.integers(0, 256, (120, 32, 32, 1), dtype=np.uint8).repeat(3, axis=-1)
    np.savez_compressed(root / "mnist_test.npz", images=gray, labels=rng.integers(0, 10, 120))
    np.savez_compressed(root / "fashionmnist_test.npz", images=gray[::-1].copy(), labels=rng.integers(0, 10, 120),
                        class_names=np.array([f"f{k}" for k in range(10)]))
    np.savez_compressed(root / "textures_skimage.npz", images=gray[:, ::-1].copy())
    np.savez_compressed(root / "tinyimagenet_test_resize.npz",
                        images=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8),
                        names=np.array([f"t{i}.JPEG" for i in range(120)]))
    np.savez_compressed(root / "dtd_partial10.npz", images=rng.integers(0, 256, (110, 32, 32, 3), dtype=np.uint8),
                        labels=rng.integers(0, 10, 110))
    (root / "SOURCES.md").write_text("# generated for tests\n")
    return root


def _run(cmd: list[str], env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_fpr95_openood_is_the_ood_positive_convention() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.integers(0, 30, rng.integers(5, 200)).astype(float)  # ties on purpose
        b = rng.integers(-10, 25, rng.integers(5, 200)).astype(float)
        # OoD positive, score negated == l2ood's ID-positive rule with the roles swapped
        assert fpr95_openood(a, b) == pytest.approx(fpr_at_tpr(-b, -a))
        q = np.sort(b)[math.ceil(0.95 * b.size - 1e-9) - 1]  # flag OoD at score <= q: 95 % of OoD flagged
        assert fpr95_openood(a, b) == pytest.approx(np.mean(a <= q))


def test_converged_epoch() -> None:
    s = [(5, 0.80), (10, 0.90), (15, 0.96), (20, 0.936), (25, 0.94), (30, 0.945)]
    assert converged_epoch(s) == 20  # 0.96 is 1.5 points off; from 20 on all within 1 point of 0.945
    assert converged_epoch([(5, 0.5)]) == 5
    assert converged_epoch([]) is None


def test_prepared_report_without_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = _run([sys.executable, "benchmarks/gpu_report.py", "--results-dir", str(tmp_path / "res"),
              "--doc", str(tmp_path / "R.md")], env)
    assert r.returncode == 0, r.stderr
    doc = (tmp_path / "R.md").read_text()
    assert "Status: not yet run" in doc and "TEST RENDERING" not in doc
    assert "| knn | 90.64 | 92.96 | ce / knn | — | — |" in doc
    assert "| ce | feature_norm | — | — | — | — | — | — | — | 0 |" in doc
    assert "bash benchmarks/gpu_paper.sh" in doc


def test_tiny_end_to_end(tmp_path: Path) -> None:
    src = _shared_data(tmp_path / "shared")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "L2OOD_CACHE": str(tmp_path / "cache"),
           "PYTHON": sys.executable}
    # pack: lossless, gray packs stored with one channel
    r = _run([sys.executable, "benchmarks/gpu_pack.py", "pack", "--src", str(src), "--dst", str(tmp_path / "pack"),
              "--no-wheels", "--no-size-check"], env)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert man["jpeg"]["files"] == 10 * (32 + 21)
    assert man["npz"]["mnist_test.npz"]["arrays"]["images"]["gray_to_rgb"] is True
    assert man["npz"]["tinyimagenet_test_resize.npz"]["arrays"]["images"]["gray_to_rgb"] is False

    # the device script, tiny mode (width 4, 1 epoch, 300 training images)
    out, runs, data = tmp_path / "out", tmp_path / "runs", tmp_path / "data"
    env_sh = {**env, "TINY": "1", "OUT": str(out), "RUNS": str(runs), "DATA_DIR": str(data),
              "PACK": str(tmp_path / "pack"), "VARIANTS": "ce,l2", "DETECTORS": "feature_norm,msp,knn,mahalanobis",
              "CORE": "feature_norm,msp"}
    r = _run(["bash", "benchmarks/gpu_paper.sh"], env_sh, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # unpacked data are the packed files: byte-identical JPEGs, identical arrays
    some = src / "cifar10-jpeg" / "test" / "class3" / "0007.jpg"
    assert (data / "cifar10-jpeg" / "test" / "class3" / "0007.jpg").read_bytes() == some.read_bytes()
    for name in OOD:
        with np.load(src / f"{name}.npz") as a, np.load(data / f"{name}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            assert all(np.array_equal(a[k], b[k]) for k in a.files)

    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "nvidia-smi.txt", "paper_raw.json", "results.csv",
                                                      "results.md"]
    raw = json.loads((out / "paper_raw.json").read_text())
    assert raw["tiny"] is True and raw["env"]["cuda_available"] is False
    assert raw["spec"]["hyper"]["width"] == 4 and raw["spec"]["hyper"]["epochs"] == 1
    assert raw["spec"]["hyper"]["batch_size"] == 128 and raw["spec"]["n_train"] == 300
    assert set(raw["phases"]) == {"wheels_s", "unpack_s"}
    cells = {c["variant"]: c for c in raw["cells"]}
    assert set(cells) == {"ce", "l2"}
    for v, c in cells.items():
        assert c["state"] == "finished" and c["complete"] and c["required"], c
        assert [h["epoch"] for h in c["history"]] == [1]
        events = [e["event"] for e in c["events"]]
        assert events[:3] == ["start", "data", "training"] and events[-1] == "done"
        assert "eval_core_done" in events and "eval_rest_done" in events  # two evaluation phases
        data_ev = next(e for e in c["events"] if e["event"] == "data")
        assert data_ev["n_train"] == 300 and data_ev["n_id"] == 200 and set(data_ev["ood"]) == set(OOD)
        # tracking after the (only) epoch: ||z|| AUROC on every OoD set
        assert [t["epoch"] for t in c["track"]] == [1]
        assert set(c["track"][0]["ood"]) == set(OOD)
        assert all(0 <= m["auroc"] <= 1 for m in c["track"][0]["ood"].values())
        res = c["cell"]["results"]
        assert c["cell"]["groups"] == OOD
        assert res["head"] == v and 0 <= res["id_accuracy"] <= 1 and res["n_id_test"] == 200
        want = {"feature_norm", "knn", "mahalanobis"} | ({"msp"} if v == "ce" else {"msp:trained", "msp:raw"})
        assert set(res["detectors"]) == want
        for d in res["ood"].values():
            assert d["n"] == 100 and set(d["detectors"]) == want
            for m in d["detectors"].values():
                assert 0 <= m["auroc"] <= 1 and 0 <= m["fpr95"] <= 1 and 0 <= m["fpr95_openood"] <= 1
        # the OpenOOD-convention FPR matches the saved raw scores (last evaluation phase: knn, mahalanobis)
        with np.load(runs / "resnet18" / v / "seed0" / "eval" / "scores.npz") as sc:
            id_name = res["id_dataset"]
            for ds in OOD:
                for col in ("knn", "mahalanobis"):
                    exp = fpr_at_tpr(-sc[f"{ds}/{col}"], -sc[f"{id_name}/{col}"])
                    assert res["ood"][ds]["detectors"][col]["fpr95_openood"] == pytest.approx(exp)

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == (4 + 5) * len(OOD)  # CE: 4 columns, L2: 5 (msp twice) — × 5 OoD sets
    assert {r["group"] for r in rows} == {"near", "far"} and "fpr95_openood" in rows[0]
    assert "near AUROC" in (out / "results.md").read_text()

    # report: refuses CPU bundles for the GPU table; with --allow-cpu says it is a test rendering
    res_dir, doc_path = tmp_path / "res", tmp_path / "RESULTS-gpu.md"
    r = _run([sys.executable, "benchmarks/gpu_report.py", "--add", str(out), "--tag", "t1", "--results-dir",
              str(res_dir), "--doc", str(doc_path)], env)
    assert r.returncode != 0 and "CPU" in r.stderr and not doc_path.exists()
    r = _run([sys.executable, "benchmarks/gpu_report.py", "--add", str(out), "--tag", "t1", "--results-dir",
              str(res_dir), "--doc", str(doc_path), "--allow-cpu"], env)
    assert r.returncode == 0, r.stderr
    assert (res_dir / "paper" / "t1" / "paper_raw.json").is_file()
    doc = doc_path.read_text()
    assert doc.splitlines()[2].startswith("**TEST RENDERING from a CPU smoke test")
    merged = list(csv.DictReader((res_dir / "paper" / "merged.csv").open()))
    assert len(merged) == len(rows)
    by_key = {(r["variant"], r["detector"], r["ood"]): r for r in merged}
    for r0 in rows:
        assert float(by_key[(r0["variant"], r0["detector"], r0["ood"])]["auroc"]) == pytest.approx(float(r0["auroc"]))
    # group table: near = Tiny-ImageNet alone; far = mean of the four far sets
    ce_fn = [r for r in rows if r["variant"] == "ce" and r["detector"] == "feature_norm"]
    near = 100 * float(next(r["auroc"] for r in ce_fn if r["group"] == "near"))
    far = 100 * np.mean([float(r["auroc"]) for r in ce_fn if r["group"] == "far"])
    acc = 100 * float(ce_fn[0]["id_acc"])
    assert f"| ce | feature_norm | {near:.2f} | {far:.2f} |" in doc
    assert f"| {acc:.2f} | 1 |" in doc
    assert "| l2 | msp:raw |" in doc and "| l2 | msp:trained |" in doc
    assert "| knn | 90.64 | 92.96 | ce / knn |" in doc
    # tracking table: one tracked epoch, which is the last one
    tracking = list(csv.DictReader((res_dir / "paper" / "tracking.csv").open()))
    assert len(tracking) == 2 * len(OOD) and {r["epoch"] for r in tracking} == {"1"}
    assert "| ce | 0 | near | 1 |" in doc and "| l2 | 0 | far | 1 |" in doc
    assert "| ce/seed0 | t1 | finished | 1/1 |" in doc

    # a second run on the same run folders (the same command again, here with no time limit): nothing is
    # retrained, only the missing detector is evaluated, the earlier detectors' results are kept
    out2 = tmp_path / "out2"
    r = _run(["bash", "benchmarks/gpu_paper.sh"],
             {**env_sh, "OUT": str(out2), "DETECTORS": "feature_norm,msp,knn,mahalanobis,energy", "BUDGET_S": "0"},
             timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    raw2 = json.loads((out2 / "paper_raw.json").read_text())
    assert raw2["budget_s"] == 0 and "no time limit" in (out2 / "log.txt").read_text()
    for c in raw2["cells"]:
        assert c["state"] == "finished" and c["complete"]
        started = max(i for i, e in enumerate(c["events"]) if e["event"] == "start")
        now = c["events"][started:]
        assert [e["event"] for e in now] == ["start", "data", "eval_rest", "eval_rest_done", "done"]
        assert now[2]["detectors"] == ["energy"]
        cols = set(c["cell"]["results"]["detectors"])
        assert {"feature_norm", "knn", "mahalanobis"} <= cols and ("energy" in cols or "energy:raw" in cols)
        assert c["cell"]["requested"] == ["feature_norm", "msp", "knn", "mahalanobis", "energy"]
