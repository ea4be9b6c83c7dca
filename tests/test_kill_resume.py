"""SIGKILL at named points of an evaluate, a calibrate and a bench, then the same command again: it finishes with
the numbers of an uninterrupted run (every metric, every score), and nothing half-written is ever read.

Each kill point is a function of l2ood that the child process wraps: the process kills itself (SIGKILL, no
clean-up of any kind) before or after the n-th call. This puts the kill exactly where the test wants it —
between writing a fitted-statistics file and recording it, between training and evaluating a bench cell, ... —
instead of at a wall-clock time that lands somewhere different on every machine.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2ood.bench import BENCHMARKS
from l2ood.cli import main
from l2ood.record import read_record
from l2ood.results import read_results

KILL = """
import importlib, os, signal, sys
target, when, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
mod_name, _, attr = target.partition(":")
holder = importlib.import_module(mod_name)
*path, name = attr.split(".")
for p in path:
    holder = getattr(holder, p)
real = getattr(holder, name)
calls = [0]
def hook(*a, **k):
    calls[0] += 1
    if when == "before" and calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*a, **k)
    if when == "after" and calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(holder, name, hook)
if len(sys.argv) > 4 and sys.argv[4] == "--bench-tiny":
    from l2ood.bench import BENCHMARKS
    BENCHMARKS["tiny"] = {"id": "fashion-mnist", "channels": 1, "size": [28, 28],
                          "ood": {"near": ["mnist"], "far": ["noise"]}}
    argv = sys.argv[5:]
else:
    argv = sys.argv[4:]
from l2ood.cli import main
sys.exit(main(argv))
"""

FP32 = ["--precision", "fp32", "--device", "cpu", "--no-progress"]


def _killed(tmp_path: Path, target: str, when: str, nth: int, argv: list[str], bench: bool = False) -> None:
    """Run ``l2ood argv`` in a child that SIGKILLs itself at the kill point; assert it died there."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "L2OOD_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-c", KILL, target, when, str(nth), *(["--bench-tiny"] if bench else []),
                        *argv], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, f"not killed at {target} ({when} call {nth}): rc {p.returncode}\n" \
                                            + p.stderr[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a trained run with a holdout and an ID test split, its data root)."""
    from conftest import write_idx_dataset

    root = tmp_path_factory.mktemp("killdata")
    write_idx_dataset(root / "fashion-mnist", 500, 120, "bars", seed=10, gz=True)
    write_idx_dataset(root / "mnist", 200, 120, "blobs", seed=20, gz=False)
    run = root.parent / "killrun"
    assert main(["train", "--data-root", str(root), "--epochs", "1", "--width", "4", "--batch-size", "64",
                 "--holdout", "100", "--out", str(run), *FP32]) == 0
    return run, root


def _fresh(trained: tuple[Path, Path], dest: Path) -> Path:
    shutil.copytree(trained[0], dest, ignore=shutil.ignore_patterns(".l2ood.lock"))
    return dest


def _evaluate_argv(run: Path, root: Path, out: Path) -> list[str]:
    return ["evaluate", str(run), "--ood", "mnist,noise", "--n-ood", "60", "--detectors", "feature_norm,knn,vim,msp",
            "--combine", "feature_norm,knn", "--data-root", str(root), "--out", str(out), *FP32]


def _same_results(a: Path, b: Path, scores: bool = True) -> None:
    """Two evaluation folders hold the same metrics (and the same raw scores)."""
    ra, rb = read_results(a / "results.json").only, read_results(b / "results.json").only
    assert ra.detectors == rb.detectors and ra.id_accuracy == rb.id_accuracy
    for s, col, m in ra.rows():
        assert m.model_dump() == rb.ood[s].detectors[col].model_dump(), (s, col)
    if not scores:
        return
    sa, sb = np.load(a / "scores.npz"), np.load(b / "scores.npz")
    assert sorted(sa.files) == sorted(sb.files)
    for k in sa.files:
        assert np.array_equal(sa[k], sb[k]), k


@pytest.mark.slow
@pytest.mark.parametrize(("target", "when", "nth"), [
    ("l2ood.run:Run.forward", "after", 2),  # mid-extraction: some cached forward passes written, others not
    ("l2ood.columns:add_fitted_detector", "before", 1),  # a fitted file written, not yet in the run record
    ("l2ood.columns:add_fitted_detector", "after", 1),  # one detector fitted and recorded, the other not
    ("l2ood.evaluation:write_samples", "before", 1),  # results.json and scores written, the sample table not
    ("l2ood.report:write_report", "before", 1),  # everything computed, the report not written
])
def test_evaluate_killed_then_resumed_gives_the_same_numbers(trained: tuple[Path, Path], tmp_path: Path,
                                                               target: str, when: str, nth: int) -> None:
    ref_run, root = _fresh(trained, tmp_path / "ref"), trained[1]
    assert main(_evaluate_argv(ref_run, root, tmp_path / "ref_out")) == 0
    run = _fresh(trained, tmp_path / "run")
    _killed(tmp_path, target, when, nth, _evaluate_argv(run, root, tmp_path / "out"))
    read_record(run)  # the run record is always readable after a kill
    assert main(_evaluate_argv(run, root, tmp_path / "out")) == 0
    _same_results(tmp_path / "ref_out", tmp_path / "out", scores=False)
    _same_results(ref_run / "eval", run / "eval")
    assert read_record(run).detectors == read_record(ref_run).detectors  # same fitted files, same digests
    assert (run / "eval" / "samples.csv").read_text() == (ref_run / "eval" / "samples.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(("target", "when", "nth"), [
    ("l2ood.columns:save_fitted", "after", 1),  # statistics written, not recorded
    ("l2ood.screen.calibrate_run:add_calibration", "before", 1),  # scored, calibration not stored
])
def test_calibrate_killed_then_resumed_gives_the_same_calibration(trained: tuple[Path, Path], tmp_path: Path,
                                                                  target: str, when: str, nth: int) -> None:
    argv = ["calibrate", "", "--detector", "feature_norm,mahalanobis", "--alpha", "0.1", *FP32]
    ref = _fresh(trained, tmp_path / "ref")
    assert main([argv[0], str(ref), *argv[2:]]) == 0
    run = _fresh(trained, tmp_path / "run")
    _killed(tmp_path, target, when, nth, [argv[0], str(run), *argv[2:]])
    assert "default" not in read_record(run).calibrations
    assert main([argv[0], str(run), *argv[2:]]) == 0
    a, b = read_record(ref).calibrations["default"], read_record(run).calibrations["default"]
    assert a.to_dict() == b.to_dict()


def _bench_argv(root: Path, out: Path) -> list[str]:
    return ["bench", "--benchmark", "tiny", "--recipe", "cpu-small", "--width", "4", "--epochs", "1",
            "--batch-size", "64", "--variants", "l2,ce", "--seeds", "0", "--detectors", "feature_norm,knn",
            "--data-root", str(root), "--out", str(out), "--n-ood", "40", *FP32]


def _table(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "results.csv").open()))


@pytest.mark.slow
@pytest.mark.parametrize(("target", "when", "nth"), [
    ("l2ood.train.trainer:save_checkpoint", "after", 1),  # mid-training of the first cell
    ("l2ood.pipeline:evaluate", "before", 1),  # first model trained, not evaluated
    ("l2ood.bench.runner:write_results", "before", 1),  # first cell evaluated, its file not written
    ("l2ood.bench.runner:write_results", "after", 1),  # first cell written, second not started
])
def test_bench_killed_then_resumed_gives_the_same_table(trained: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, target: str, when: str,
                                                         nth: int) -> None:
    root = trained[1]
    monkeypatch.setitem(BENCHMARKS, "tiny", {"id": "fashion-mnist", "channels": 1, "size": [28, 28],
                                             "ood": {"near": ["mnist"], "far": ["noise"]}})
    assert main(_bench_argv(root, tmp_path / "ref")) == 0
    _killed(tmp_path, target, when, nth, _bench_argv(root, tmp_path / "b"), bench=True)
    assert main(_bench_argv(root, tmp_path / "b")) == 0
    drop = ("git_commit",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _table(tmp_path / "b")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _table(tmp_path / "ref")]
