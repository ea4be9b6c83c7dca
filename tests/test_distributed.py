"""Data-parallel training: a 2-process gloo run equals a 1-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2ood.train.distributed import DistInfo, scaled_loss, shard


def test_shards_cover_the_batch_exactly() -> None:
    for n in (1, 7, 64, 65):
        for world in (1, 2, 3):
            parts = [shard(n, DistInfo(r, world, r)) for r in range(world)]
            assert parts[0][0] == 0 and sum(length for _, length in parts) == n
            assert all(parts[i][0] + parts[i][1] == parts[i + 1][0] for i in range(world - 1))


def test_scaled_loss_averages_to_the_global_mean() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(7, 3), torch.randint(0, 3, (7,))
    full = torch.nn.functional.cross_entropy(logits, y)
    world = 2
    parts = [scaled_loss(logits[s : s + n], y[s : s + n], 7, DistInfo(r, world, r))
             for r, (s, n) in enumerate(shard(7, DistInfo(r, world, r)) for r in range(world))]
    torch.testing.assert_close(sum(parts) / world, full)  # DDP averages over ranks


def _train_cmd(data_root: Path, out: Path, sync_bn: bool = True) -> list[str]:
    return ["train", "--data-root", str(data_root), "--epochs", "2", "--width", "8", "--batch-size", "50",
            "--lr", "0.02", "--holdout", "100", "--train-subset", "250", "--precision", "fp32",
            "--device", "cpu", "--no-progress", "--out", str(out), "--seed", "5",
            *(["--sync-bn"] if sync_bn else [])]


def _flat(path: Path) -> torch.Tensor:
    t = load_file(str(path / "model.safetensors"))
    return torch.cat([v.flatten() for k, v in sorted(t.items())
                      if v.is_floating_point() and "running" not in k and "input_" not in k])


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path: Path, data_root: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "L2OOD_CACHE": str(tmp_path / "cache")}
    one = subprocess.run([sys.executable, "-m", "l2ood", *_train_cmd(data_root, tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    runs = {}
    for name, sync in (("two", True), ("two_nosync", False)):
        cmd = _train_cmd(data_root, tmp_path / name, sync)
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=2", "-m", "l2ood", *cmd],
                           capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "2 ranks" in p.stderr
        runs[name] = _flat(tmp_path / name)
    a = _flat(tmp_path / "one")
    rel = ((runs["two"] - a).norm() / a.norm()).item()
    rel_nosync = ((runs["two_nosync"] - a).norm() / a.norm()).item()
    # Stated tolerance: the global relative L2 difference of all weights after 10 SGD steps is
    # below 2e-3. It is not ~1e-7 because BatchNorm in this tiny fp32 network is ill-conditioned:
    # the 1-process fp32 run itself deviates from an fp64 computation by ~5e-3 per tensor (measured
    # while writing this test), and the 2-process run differs only in float summation order.
    assert rel < 2e-3, rel
    # negative control: without SyncBN each rank normalizes with its own half batch, a different
    # computation, which must be visibly further away
    assert rel_nosync > 2.5 * rel, (rel, rel_nosync)  # measured here: 2.3e-4 vs 9.4e-4
    # only rank 0 wrote: one log line per epoch, one checkpoint file
    assert len((tmp_path / "two" / "train_log.jsonl").read_text().splitlines()) == 2
    assert len(list((tmp_path / "two").glob("checkpoint-*.safetensors"))) == 1
