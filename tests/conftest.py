"""Shared fixtures: small generated data sets in the official IDX layout, so tests need no download."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from l2ood.data.idx import write_idx

torch.set_num_threads(2)


def make_pattern_images(n: int, num_classes: int = 10, size: int = 28, seed: int = 0,
                        style: str = "bars") -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic images: class k is a grating with k+1 periods across the image (random
    phase, so random crops keep the class); horizontal stripes for "bars", vertical for "blobs"."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    pos = np.arange(size) / size
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = np.sin(2 * np.pi * (labels[:, None] + 1) * pos[None, :] + phase[:, None])  # (n, size)
    img = wave[:, :, None] if style == "bars" else wave[:, None, :]
    imgs = 128 + 90 * np.broadcast_to(img, (n, size, size)) + rng.normal(0, 10, (n, size, size))
    return np.clip(imgs, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_idx_dataset(folder: Path, n_train: int, n_test: int, style: str, seed: int,
                      gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = make_pattern_images(n, seed=s, style=style)
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", y)


def tiny_run(root: Path, *, n_train: int = 300, n_test: int = 80, width: int = 2, holdout: int = 60, epochs: int = 1,
             calibrate: bool = False) -> Path:
    """Train a tiny L2 run on a generated Fashion-MNIST stand-in in ``root/data`` (and calibrate it); returns the run
    folder ``root/run``. The data root is ``root/data``."""
    from l2ood.cli import main

    write_idx_dataset(root / "data" / "fashion-mnist", n_train, n_test, "bars", seed=10)
    args = ["--data-root", str(root / "data"), "--no-progress", "--precision", "fp32"]
    assert main(["train", "--epochs", str(epochs), "--width", str(width), "--holdout", str(holdout),
                 "--out", str(root / "run"), *args]) == 0
    if calibrate:
        assert main(["calibrate", str(root / "run"), *args]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding generated ``fashion-mnist/`` (gz) and ``mnist/`` (raw) IDX files."""
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root / "fashion-mnist", 600, 300, "bars", seed=10, gz=True)
    write_idx_dataset(root / "mnist", 300, 300, "blobs", seed=20, gz=False)
    return root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the user's L2OOD_DATA or writes to the real cache."""
    monkeypatch.delenv("L2OOD_DATA", raising=False)
    monkeypatch.setenv("L2OOD_CACHE", str(tmp_path / "cache"))


@contextlib.contextmanager
def mounted(args: list[str], target: Path) -> Iterator[bool]:
    """``mount ARGS TARGET`` for the duration (yields False where mounting is not permitted), then unmount.
    Shared by the fault tests and benchmarks/reliability.py."""
    target.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", *args, str(target)], capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def wait_ready(url: str, seconds: float = 30.0) -> bool:
    """Poll ``URL/ready`` until it answers 200 (True) or ``seconds`` pass (False). Shared by the service
    tests and benchmarks/serve_load.py."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False
