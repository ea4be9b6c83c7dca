"""The runnable examples (examples/*.py) and the README's / API site's Python code blocks, executed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _run_example(name: str, tmp_path: Path) -> str:
    env = {**os.environ, "L2OOD_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--small"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_example_posthoc_own_model(tmp_path: Path) -> None:
    out = _run_example("posthoc_own_model.py", tmp_path)
    auroc = {m[0]: float(m[1]) for m in re.findall(r"^(\w+)\s+AUROC ([0-9.]+)", out, re.M)}
    assert set(auroc) == {"feature_norm", "energy", "knn", "mahalanobis", "vim", "odin"}
    assert auroc["mahalanobis"] > 90 and auroc["knn"] > 90  # colour noise is far from the gratings


def test_example_train_l2_on_folder(tmp_path: Path) -> None:
    out = _run_example("train_l2_on_folder.py", tmp_path)
    assert "screen rule: OoD when feature_norm <" in out and "[holdout]" in out


def test_example_calibrate_and_screen(tmp_path: Path) -> None:
    out = _run_example("calibrate_and_screen.py", tmp_path)
    m = re.search(r"screened (\d+) images: (\d+) flagged, 0 unreadable", out)
    assert m and int(m.group(1)) == 30
    html = Path(re.search(r"and (\S+review\.html)", out).group(1)).read_text()  # type: ignore[union-attr]
    assert html.count('<img class="thumb"') == int(m.group(2))


def test_example_serve_and_query(tmp_path: Path) -> None:
    out = _run_example("serve_and_query.py", tmp_path)
    assert "ready: {'ready': True}" in out and "without the token: 401" in out
    assert len(re.findall(r"^(photo|odd)_\d\.png\s+(in|out)\s+score", out, re.M)) == 8


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_python_blocks_run(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks(ROOT / "README.md")
    assert len(blocks) == 2
    block = next(b for b in blocks if "training_data" in b)
    small = block.replace("holdout=5000", "holdout=100").replace("epochs=6", "epochs=1").replace("width=16", "width=2")
    assert small != block
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("L2OOD_DATA", str(data_root))  # generated Fashion-MNIST-format files, found first
    ns: dict[str, object] = {}
    exec(compile(small, "README.md", "exec"), ns)
    run, ext = ns["run"], ns["ext"]
    assert ext.features.shape[0] == 300 and (tmp_path / "runs" / "fm-l2" / "model.json").is_file()  # type: ignore[attr-defined]
    assert run.calibration() is not None  # type: ignore[attr-defined]


def test_api_site_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = _python_blocks(ROOT / "apidocs" / "index.md")
    rng = np.random.default_rng(0)
    labels = np.arange(900) % 3
    imgs = np.clip(rng.normal(60 + 70 * labels[:, None, None, None], 25, (900, 16, 16, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "my_images.npz", images=imgs, labels=labels)
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.fromarray(imgs[i]).save(tmp_path / "photos" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    small = block.replace("epochs=10", "epochs=1").replace("width=16", "width=2")
    exec(compile(small, "apidocs/index.md", "exec"), {})
    assert (tmp_path / "runs" / "mine" / "model.json").is_file()


def test_version_is_single_sourced() -> None:
    import importlib.metadata as md

    import l2ood

    assert l2ood.__version__ == md.version("l2ood")
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", cff, re.M).group(1) == l2ood.__version__  # type: ignore[union-attr]
    base = re.match(r"\d+\.\d+\.\d+", l2ood.__version__).group(0)  # type: ignore[union-attr]
    assert f"## [{base}]" in (ROOT / "CHANGELOG.md").read_text() and (ROOT / "LICENSE").read_text().startswith("MIT")


def test_readme_posthoc_block_runs() -> None:
    import torch
    from torch import nn

    block = next(b for b in _python_blocks(ROOT / "README.md") if "PostHoc" in b)

    class Net(nn.Module):  # a user's model with a linear head named fc
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x))

    x = torch.rand(60, 3, 10, 10)
    ns: dict[str, object] = {
        "my_model": Net().eval(), "test_images": torch.rand(20, 3, 10, 10), "noise_images": torch.randn(20, 3, 10, 10),
        "train_loader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(60) % 3),
                                                    batch_size=16)}
    exec(compile(block, "README.md", "exec"), ns)
    res = ns["ph"].evaluate(ns["test_images"], {"noise": ns["noise_images"]})  # type: ignore[attr-defined]
    assert set(res["noise"]) == {"feature_norm", "energy", "knn", "mahalanobis", "odin"}


def test_example_screen_own_classifier(tmp_path: Path) -> None:
    out = _run_example("screen_own_classifier.py", tmp_path)
    assert "calibrated: OoD when mahalanobis <" in out
    verdicts = dict(re.findall(r"^(photo_\d|odd_\d)\.png\s+(in|out)\s+score", out, re.M))
    assert len(verdicts) == 10 and all(v == "out" for k, v in verdicts.items() if k.startswith("odd"))
