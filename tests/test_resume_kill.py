"""Exact resume after SIGKILL, atomic checkpoints under kills, and NaN/inf handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2ood.data import load_dataset
from l2ood.models import ModelConfig, build_model
from l2ood.train import TrainConfig, TrainingDiverged, load_checkpoint, train
from l2ood.train.trainer import make_optimizer


def _cmd(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "l2ood", "train", "--data-root", str(data_root), "--epochs", "3",
            "--width", "4", "--batch-size", "32", "--holdout", "100", "--precision", "fp32",
            "--device", "cpu", "--no-progress", "--out", str(out), "--seed", "2", *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "2", "L2OOD_CACHE": str(tmp_path / "cache")}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(tmp_path: Path, data_root: Path) -> None:
    env = _env(tmp_path)
    ref = subprocess.run(_cmd(data_root, tmp_path / "ref"), env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    # 500 images / 32 = 16 steps per epoch; checkpoint every 5 steps -> mid-epoch checkpoints
    p = subprocess.Popen(_cmd(data_root, run, "--checkpoint-every-steps", "5"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rec = run / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if rec.is_file():
            r = json.loads(rec.read_text())
            if r["epoch"] >= 1 and r["step_in_epoch"] > 0:  # inside the second epoch
                break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "model.safetensors").exists(), "killed too late"
    killed_at = json.loads(rec.read_text())
    assert killed_at["step_in_epoch"] > 0
    res = subprocess.run(_cmd(data_root, run, "--checkpoint-every-steps", "5", "--resume"), env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from epoch" in res.stderr
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("how", ["abort", "segv"])
def test_native_crash_mid_epoch_then_resume_is_bitwise_equal(tmp_path: Path, data_root: Path, how: str) -> None:
    """A native crash (SIGABRT as from "double free or corruption", or SIGSEGV) kills the process with no Python
    clean-up at all; the periodic checkpoint bounds the loss to the steps since it, and --resume finishes with the
    weights of an uninterrupted run."""
    env = _env(tmp_path)
    ref = subprocess.run(_cmd(data_root, tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "crashed"
    code = ("import os, signal, sys\n"
            "import l2ood.train.trainer as t\n"
            "real, calls = t.scaled_loss, [0]\n"
            "def crash(*a, **k):\n"
            "    calls[0] += 1\n"
            "    if calls[0] == 24:  # the 8th step of epoch 2 (16 steps per epoch)\n"
            f"        {'os.abort()' if how == 'abort' else 'os.kill(os.getpid(), signal.SIGSEGV)'}\n"
            "    return real(*a, **k)\n"
            "t.scaled_loss = crash\n"
            "from l2ood.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    argv = _cmd(data_root, run, "--checkpoint-every-steps", "5")[3:]
    p = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -(signal.SIGABRT if how == "abort" else signal.SIGSEGV), p.stderr[-2000:]
    assert "Fatal Python error" in p.stderr  # faulthandler: where it died, instead of nothing
    assert not (run / "model.safetensors").exists()
    rec = json.loads((run / "checkpoint.json").read_text())
    assert (rec["epoch"], rec["step_in_epoch"]) == (1, 4)  # the last periodic checkpoint (global step 20)
    res = subprocess.run(_cmd(data_root, run, "--checkpoint-every-steps", "5", "--resume"), env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_default_checkpoint_cadence_bounds_a_crash() -> None:
    from l2ood.models.config import DEFAULT_CHECKPOINT_STEPS

    assert TrainConfig().checkpoint_every_steps == DEFAULT_CHECKPOINT_STEPS == 500


@pytest.mark.slow
def test_kills_during_checkpoint_writes_never_corrupt_the_latest(tmp_path: Path, data_root: Path) -> None:
    env = _env(tmp_path)
    run = tmp_path / "run"
    delays = [0.9, 1.3, 1.7, 2.1, 2.6, 3.2]
    for d in delays:  # checkpoint every step, kill at staggered times; each restart resumes
        p = subprocess.Popen(_cmd(data_root, run, "--checkpoint-every-steps", "1", "--resume"), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(d)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (run / "checkpoint.json").exists():
            model = build_model(ModelConfig(width=4, in_channels=1))
            opt = make_optimizer(model, TrainConfig())
            rec = load_checkpoint(run, model, opt)  # must always load
            assert rec["global_step"] >= 0
            assert len(list(run.glob("checkpoint-*.safetensors"))) <= 2
    done = subprocess.run(_cmd(data_root, run, "--resume"), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(run.glob(".*.tmp"))


def test_nan_loss_stops_with_message_and_keeps_last_good(tmp_path: Path, data_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_dataset("fashion-mnist", "train", root=data_root)
    cfg = TrainConfig(epochs=3, batch_size=100, device="cpu", precision="fp32", seed=1)
    import l2ood.train.trainer as trainer_mod

    real = trainer_mod.scaled_loss
    calls = {"n": 0}

    def poisoned(*a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*a, **k)  # type: ignore[arg-type]
        return loss * float("nan") if calls["n"] > 8 else loss  # epoch 2 (6 steps/epoch) goes bad

    monkeypatch.setattr(trainer_mod, "scaled_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(ds, ModelConfig(width=4), cfg, tmp_path, progress=False, log=None)
    rec = json.loads((tmp_path / "checkpoint.json").read_text())
    assert rec["epoch"] == 1 and rec["step_in_epoch"] == 0  # the end-of-epoch-1 checkpoint
    t = load_file(str(tmp_path / rec["tensors"]))
    assert all(torch.isfinite(v).all() for v in t.values() if v.is_floating_point())
    assert not (tmp_path / "model.safetensors").exists()


def test_nan_via_cli_is_one_message(tmp_path: Path, data_root: Path) -> None:
    code = (
        "import sys, torch, l2ood.train.trainer as t\n"
        "real = t.scaled_loss\n"
        "t.scaled_loss = lambda *a, **k: real(*a, **k) * float('inf')\n"
        "from l2ood.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = _cmd(data_root, tmp_path / "r")[3:]
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       env=_env(tmp_path), timeout=300)
    assert p.returncode == 2
    assert "stopped" in p.stderr and "Traceback" not in p.stderr
