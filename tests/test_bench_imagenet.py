"""OpenOOD's ImageNet benchmarks through their image lists (issue 12), on a generated tree in OpenOOD's layout:
``benchmark_imglist/imagenet200/*.txt`` + ``images_largescale/``. Streamed training at a reduced size, and
post-hoc evaluation of a pretrained classifier from a weights file."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from l2ood.data.synthetic import write_photo_folder
from l2ood.models import ModelConfig, build_model
from l2ood.run import Run

OOD_LISTS = ("ssb_hard", "ninco", "inaturalist", "textures", "openimage_o")


@pytest.fixture(scope="module")
def openood_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openood")
    imgs = root / "images_largescale"
    lists = root / "benchmark_imglist" / "imagenet200"
    lists.mkdir(parents=True)
    write_photo_folder(imgs / "gen" / "train", 12, 3, photo_size=(120, 160), seed=1)
    write_photo_folder(imgs / "gen" / "test", 5, 3, photo_size=(120, 160), seed=2)
    write_photo_folder(imgs / "gen" / "ood", 4, 8, photo_size=(120, 160), seed=3)
    for split in ("train", "test"):
        lines = [f"gen/{split}/{d.name}/{f.name} {k}"
                 for k, d in enumerate(sorted((imgs / "gen" / split).iterdir())) for f in sorted(d.iterdir())]
        (lists / f"{split}_imagenet200.txt").write_text("\n".join(lines) + "\n")
    ood_classes = sorted((imgs / "gen" / "ood").iterdir())[3:]  # photos no ID class was made from
    for name, d in zip(OOD_LISTS, ood_classes, strict=False):
        (lists / f"test_{name}.txt").write_text("".join(f"gen/ood/{d.name}/{f.name} -1\n" for f in sorted(d.iterdir())))
    for d in sorted((imgs / "gen" / "ood").iterdir())[:3]:
        shutil.rmtree(d)
    return root


def _bench(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "L2OOD_CACHE": str(out / "cache")}
    args = ["bench", "--benchmark", "imagenet200", "--data-root", str(root), "--image-size", "40", "--seeds", "0",
            "--detectors", "feature_norm,msp,mahalanobis", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--no-progress", "--out", str(out), *extra]
    return subprocess.run([sys.executable, "-m", "l2ood", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_imagenet200_streamed_training_bench(openood_root: Path, tmp_path: Path) -> None:
    p = _bench(openood_root, tmp_path / "b", "--recipe", "cpu-small", "--archs", "resnet18", "--width", "4",
               "--epochs", "1", "--batch-size", "12", "--variants", "l2")
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((tmp_path / "b" / "resnet18" / "l2" / "seed0" / "model.json").read_text())
    assert rec["preprocessing"]["fit"] == "imagenet" and rec["preprocessing"]["size"] == [40, 40]
    assert rec["data"]["train"]["stream"] is True and rec["data"]["n_train"] == 36
    assert rec["data"]["train"]["spec"].endswith("train_imagenet200.txt@" + str(openood_root / "images_largescale"))
    rows = list(csv.DictReader((tmp_path / "b" / "results.csv").open()))
    sets = {r["ood"] for r in rows}
    assert {f"test_{n}" for n in OOD_LISTS} <= sets
    groups = {r["group"] for r in rows}
    assert {"near", "far"} <= groups
    cell = json.loads((tmp_path / "b" / "cells" / "resnet18-l2-seed0.json").read_text())
    assert cell["runs"]["resnet18-l2-seed0"]["n_id_test"] == 15
    assert all(v["n"] == 4 for v in cell["runs"]["resnet18-l2-seed0"]["ood"].values())


def test_imagenet_posthoc_bench_of_a_pretrained_classifier(openood_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    clf = build_model(ModelConfig(arch="resnet18", width=4, head="ce", num_classes=3))
    save_file({k: v.contiguous() for k, v in clf.state_dict().items() if "input_" not in k},
              str(tmp_path / "pre.safetensors"))
    run = Run.from_pretrained("resnet18", tmp_path / "pre.safetensors", width=4, image_size=(40, 40), device="cpu",
                              precision="fp32")
    assert run.config.num_classes == 3 and run.preprocessing.fit == "imagenet"
    assert run.config.mean == pytest.approx([0.485, 0.456, 0.406])
    assert torch.equal(run.model.fc.weight.cpu(), clf.fc.weight)  # the pretrained head is kept
    p = _bench(openood_root, tmp_path / "b", "--recipe", "pretrained-resnet50", "--archs", "resnet18", "--width", "4",
               "--variants", "ce", "--pretrained", str(tmp_path / "pre.safetensors"), "--n-fit", "20")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "detectors fitted on 20 training images" in p.stderr
    cell = json.loads((tmp_path / "b" / "cells" / "resnet18-ce-seed0.json").read_text())
    assert cell["bench"]["train_seconds"] == 0.0
    assert set(cell["runs"]["resnet18-ce-seed0"]["detectors"]) == {"feature_norm", "msp", "mahalanobis"}
    # the same classifier imported as a run folder (`l2ood import`) gives the same cell, number for number
    imp = subprocess.run([sys.executable, "-m", "l2ood", "import", "--arch", "resnet18", "--width", "4", "--weights",
                          str(tmp_path / "pre.safetensors"), "--preprocessing", "imagenet", "--image-size", "40",
                          "--out", str(tmp_path / "imported")], capture_output=True, text=True)
    assert imp.returncode == 0, imp.stderr
    p2 = _bench(openood_root, tmp_path / "d", "--recipe", "pretrained-resnet50", "--archs", "resnet18", "--width", "4",
                "--variants", "ce", "--pretrained", str(tmp_path / "imported"), "--n-fit", "20")
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "imported in" in p2.stderr
    cell2 = json.loads((tmp_path / "d" / "cells" / "resnet18-ce-seed0.json").read_text())
    assert cell2["runs"]["resnet18-ce-seed0"]["ood"] == cell["runs"]["resnet18-ce-seed0"]["ood"]
    assert cell2["bench"]["hyper"]["pretrained"].startswith(str(tmp_path / "imported") + "@")
    missing = _bench(openood_root, tmp_path / "c", "--recipe", "pretrained-resnet50", "--archs", "resnet18",
                     "--variants", "ce")
    assert missing.returncode == 2 and "--pretrained FILE" in missing.stderr

