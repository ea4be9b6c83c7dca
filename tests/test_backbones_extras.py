"""Any backbone (issue 12): ``timm:NAME`` / ``torchvision:NAME`` trained, recorded, rebuilt and fine-tuned from a
weights file; torchvision's own transforms as references. Runs where the optional extras are installed
(``.ci/run`` runs this file in a second environment holding torchvision and timm); skipped elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from l2ood.data.stream import open_stream, rrc_box
from l2ood.data.synthetic import write_photo_folder
from l2ood.models import ModelConfig, build_model
from l2ood.results import read_results
from l2ood.run import Run
from l2ood.train import TrainConfig, train
from l2ood.train.trainer import load_pretrained


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_photo_folder(root / "train", 20, 3, photo_size=(240, 320), seed=1)
    write_photo_folder(root / "test", 8, 3, photo_size=(240, 320), seed=2)
    return root


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "timm:test_resnet"])
def test_adapter_backbone_trains_records_and_rebuilds(arch: str, photos: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchvision" if arch.startswith("torchvision") else "timm")
    ds = open_stream(f"imagefolder:{photos}", "train", size=(64, 64))
    cfg = ModelConfig(arch=arch, head="l2")
    res = train(ds, cfg, TrainConfig(epochs=1, batch_size=20, lr=0.01, device="cpu", precision="fp32", workers=0),
                tmp_path / "run", progress=False, log=None)
    rec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert rec["model"]["arch"] == arch and rec["model"]["num_classes"] == 3
    run = Run.load(tmp_path / "run", device="cpu", precision="fp32")  # rebuilt from the record (meta shapes first)
    test, _ = run.id_test()
    ext = run.forward(test)
    assert len(ext) == 24 and ext.features.shape[1] == res.model.fc.in_features
    with torch.no_grad():
        x = next(iter(run.image_batches(test, batch_size=4)))
        direct = res.model.eval()(run.runtime.batch(x)).features
    torch.testing.assert_close(ext.features[:4], direct, rtol=1e-4, atol=1e-4)


def test_torchvision_pretrained_file_initializes_the_backbone(tmp_path: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    ref = tvm.resnet18(num_classes=1000)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")  # the usual torchvision download format
    for f in ("resnet18.safetensors", "resnet18.pth"):
        model = build_model(ModelConfig(arch="torchvision:resnet18", head="l2", num_classes=5))
        load_pretrained(model, tmp_path / f)
        got = model.backbone.body.state_dict()  # type: ignore[union-attr]
        assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items() if k in got)
        assert "fc.weight" not in got and model.fc.weight.shape == (5, 512)
        x = torch.rand(2, 3, 64, 64)
        ref.eval()
        model.eval()
        with torch.no_grad():  # same penultimate features as torchvision's network without its fc
            feats = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
                ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)
            torch.testing.assert_close(model.backbone(x), feats)


def test_cli_fine_tunes_torchvision_resnet_from_a_weights_file(photos: Path, tmp_path: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    save_file({k: v.contiguous() for k, v in tvm.resnet18().state_dict().items()}, str(tmp_path / "w.safetensors"))
    env = {**os.environ, "L2OOD_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "l2ood", "train", "--dataset", f"imagefolder:{photos}", "--arch",
                        "torchvision:resnet18", "--pretrained", str(tmp_path / "w.safetensors"), "--image-size",
                        "64", "--data-path", "stream", "--epochs", "1", "--batch-size", "20", "--lr", "0.01",
                        "--holdout", "12",
                        "--device", "cpu", "--precision", "fp32", "--workers", "0", "--no-progress", "--out",
                        str(tmp_path / "ft")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "streamed" in p.stderr and "backbone initialized" in p.stderr
    e = subprocess.run([sys.executable, "-m", "l2ood", "evaluate", str(tmp_path / "ft"), "--ood", "textures",
                        "--detectors", "feature_norm,msp", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert e.returncode == 0, e.stderr[-2000:]
    (res,) = read_results(tmp_path / "ft" / "eval" / "results.json").to_json()["runs"].values()
    assert res["n_id_test"] == 24 and set(res["ood"]) == {"textures"}


def test_rrc_box_matches_torchvision_distribution() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    from scipy.stats import ks_2samp

    torch.manual_seed(0)
    img = torch.zeros(3, 300, 400)
    tv = [transforms.RandomResizedCrop.get_params(img, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
          for _ in range(3000)]
    rng = np.random.default_rng(0)
    ours = [rrc_box(400, 300, rng) for _ in range(3000)]
    tv_area = np.array([h * w for _, _, h, w in tv]) / 120000
    our_area = np.array([cw * ch for _, _, cw, ch in ours]) / 120000
    tv_aspect = np.array([w / h for _, _, h, w in tv])
    our_aspect = np.array([cw / ch for _, _, cw, ch in ours])
    assert ks_2samp(tv_area, our_area).pvalue > 0.01
    assert ks_2samp(tv_aspect, our_aspect).pvalue > 0.01


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "timm:test_resnet"])
def test_import_a_pretrained_classifier_with_its_head(arch: str, photos: Path, tmp_path: Path) -> None:
    """`l2ood import --arch NAME --weights FILE`: the library's own classifier, head included, becomes a run whose
    logits and z are the library network's, and which calibrates and screens like a trained run."""
    if arch.startswith("torchvision:"):
        tvm = pytest.importorskip("torchvision.models")
        ref = tvm.resnet18(num_classes=3)
    else:
        timm = pytest.importorskip("timm")
        ref = timm.create_model("test_resnet", num_classes=3)
    torch.manual_seed(0)
    with torch.no_grad():  # a head that is not the initial one: loading it must show
        ref.fc.weight.normal_()
    ref.eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "l2ood", "import", "--arch", arch, "--weights",
                        str(tmp_path / "w.safetensors"), "--preprocessing", "imagenet", "--image-size", "64",
                        "--data", f"imagefolder:{photos / 'train'}", "--holdout", "20", "--out", str(run_dir)],
                       capture_output=True, text=True, env={**os.environ, "L2OOD_CACHE": str(tmp_path / "c")})
    assert p.returncode == 0, p.stderr
    run = Run.load(run_dir, device="cpu", precision="fp32")
    assert run.record.imported is not None and run.record.imported.head_layer == "fc"
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref((x.float() / 255 - mean) / std)
    torch.testing.assert_close(run.forward_batch(x).logits, want, rtol=1e-4, atol=1e-4)
    env = {**os.environ, "L2OOD_CACHE": str(tmp_path / "c")}
    cal = subprocess.run([sys.executable, "-m", "l2ood", "calibrate", str(run_dir), "--detector", "mahalanobis",
                          "--alpha", "0.2", "--precision", "fp32", "--no-progress"], capture_output=True, text=True,
                         env=env)
    assert cal.returncode == 0, cal.stderr
    scr = subprocess.run([sys.executable, "-m", "l2ood", "screen", str(run_dir), str(photos / "test"),
                          "--format", "jsonl", "--precision", "fp32", "--no-progress"], capture_output=True, text=True,
                         env=env)
    assert scr.returncode == 0, scr.stderr
    recs = [json.loads(line) for line in scr.stdout.splitlines()]
    assert len(recs) == 24 and all(r["status"] == "ok" and r["verdict"] in ("in", "out") for r in recs)
