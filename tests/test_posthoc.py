"""Post-hoc detection on a user's own nn.Module (l2ood.posthoc): the head's input is z, the model stays in the loop."""

from __future__ import annotations

import csv
import importlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from l2ood.bench import BENCHMARKS
from l2ood.cli import main
from l2ood.data import load_dataset
from l2ood.data.source import open_images
from l2ood.data.transforms import convert_format
from l2ood.detectors import Extraction, Head, make_detector
from l2ood.errors import ConfigError
from l2ood.importing import InputConfig
from l2ood.metrics import ood_metrics
from l2ood.models.imported import TRUST_ENV
from l2ood.posthoc import PostHoc
from l2ood.run import Run
from l2ood.screen import Screener


class TVStyle(nn.Module):
    """torchvision-like: conv features, pooling, flatten, dropout, then `classifier.1` (a Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.body(x), 1))


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_scores_match_the_formulas_on_the_users_model() -> None:
    torch.manual_seed(0)
    model = TVStyle().eval()
    x, y = _data(64, 1)
    ph = PostHoc(model, head="classifier.1", detectors=["feature_norm", "energy", "msp", "mahalanobis", "knn"],
                 device="cpu", batch_size=16, detector_kwargs={"knn": {"k": 5}})
    with pytest.raises(ConfigError, match="fit"):
        ph.score(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    ph.fit(loader)
    test, _ = _data(20, 2)
    s = ph.score(test)
    with torch.no_grad():
        z = torch.flatten(model.body(test), 1)
        logits = model(test)
        ztr = torch.flatten(model.body(x), 1)
    torch.testing.assert_close(s["feature_norm"], z.norm(dim=1))
    torch.testing.assert_close(s["energy"], logits.logsumexp(1))
    torch.testing.assert_close(s["msp"], logits.log_softmax(1).max(1).values)  # log MSP since 0.2
    head = Head(model.classifier[1].weight.detach(), model.classifier[1].bias.detach(), "ce")
    for name, kw in (("mahalanobis", {}), ("knn", {"k": 5})):
        ref = make_detector(name, **kw).fit(Extraction(ztr, head.logits(ztr), y), head)
        torch.testing.assert_close(s[name], ref.score(Extraction(z, logits), head), rtol=1e-4, atol=1e-4)


def test_odin_keeps_the_model_in_the_loop() -> None:
    torch.manual_seed(0)
    model = TVStyle().eval()
    x, _ = _data(6, 3)
    ph = PostHoc(model, head="classifier.1", detectors=["odin"], device="cpu",
                 detector_kwargs={"odin": {"temperature": 10.0, "epsilon": 0.01}})
    s = ph.score(x)["odin"]
    xg = x.clone().requires_grad_(True)  # reference: ODIN by hand on the user's model
    out = model(xg)
    nn.functional.cross_entropy(out / 10.0, out.argmax(1), reduction="sum").backward()
    with torch.no_grad():
        ref = (model(x - 0.01 * xg.grad.sign()) / 10.0).log_softmax(1).max(1).values  # type: ignore[union-attr]
    torch.testing.assert_close(s, ref, rtol=1e-5, atol=1e-6)


def test_evaluate_and_bad_heads() -> None:
    torch.manual_seed(0)
    model = TVStyle().eval()
    ph = PostHoc(model, head="classifier.1", detectors=["feature_norm", "energy"], device="cpu")
    ident, _ = _data(40, 4)
    res = ph.evaluate(ident, {"bright": torch.rand(40, 3, 12, 12) * 0.1 + 0.9})
    assert set(res["bright"]) == {"feature_norm", "energy"}
    assert all(0 <= m["auroc"] <= 1 and np.isfinite(m["fpr95"]) for m in res["bright"].values())
    with pytest.raises(ConfigError, match=r"nn\.Linear"):
        PostHoc(model, head="body", device="cpu")
    with pytest.raises(ConfigError, match="unknown detector"):
        PostHoc(model, head="classifier.1", detectors=["nope"], device="cpu")
    uint8 = (ident * 255).round().to(torch.uint8)  # uint8 images are scaled to [0, 1] first
    torch.testing.assert_close(ph.score(uint8)["energy"], ph.score(uint8.float() / 255)["energy"])


# ------------------------------------------------------------------------------------------------------------------
# l2ood's image sets, the bench's table, and a deployable run folder (PostHoc.save / PostHoc.calibrate)

USERNET = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        """A user's gray-image classifier: conv body, then the head `fc`."""

        def __init__(self, classes=10, width=6):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
            self.fc = nn.Linear(4 * width, classes)

        def forward(self, x):
            return self.fc(self.body(x))

    def build(classes=10, width=6):
        return Net(classes, width)
''')


@pytest.fixture
def usernet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The user's network module, importable as ``posthoc_usernet`` (a factory needs an import path)."""
    (tmp_path / "posthoc_usernet.py").write_text(USERNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("posthoc_usernet", None)
    yield importlib.import_module("posthoc_usernet")
    sys.modules.pop("posthoc_usernet", None)


def _trained_like(module: Any, seed: int = 0, **kw: Any) -> Any:
    """The user's network with weights of its own (not the factory's initialisation) and BatchNorm statistics."""
    torch.manual_seed(seed)
    net = module.build(**kw)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        bn = net.body[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


GRAY32 = InputConfig.of("unit", channels=1, size=(32, 32), mean=[0.5], std=[0.25])


def test_image_sets_are_read_through_the_input_config(usernet: Any, data_root: Path, tmp_path: Path) -> None:
    """l2ood image sets: refused without preprocessing (one clear error); with it, brought to the input format as runs
    bring them, scaled to [0, 1] and normalized inside the model — the same scores as uint8 tensors, [0, 1] float
    tensors and DataLoaders of the same images, and as the formulas on the user's model."""
    model = _trained_like(usernet)
    test = load_dataset("fashion-mnist", "test", root=data_root, n=40, seed=0)  # 28×28 gray, uint8
    train = load_dataset("fashion-mnist", "train", root=data_root, n=150, seed=0)
    with pytest.raises(ConfigError, match=r"pass preprocessing=\.\.\."):
        PostHoc(model, head="fc", device="cpu").score(test)
    dets = ["feature_norm", "energy", "knn", "mahalanobis"]
    ph = PostHoc(model, head="fc", detectors=dets, device="cpu", batch_size=16, preprocessing=GRAY32,
                 detector_kwargs={"knn": {"k": 3}})
    ph.fit(train)
    assert ph.n_fit == 150
    s = ph.score(test)
    x = convert_format(test.images, 1, (32, 32)).float() / 255  # the set in the input format, on [0, 1]
    with torch.no_grad():
        z, logits = model.body((x - 0.5) / 0.25), model((x - 0.5) / 0.25)
    torch.testing.assert_close(s["feature_norm"], z.norm(dim=1))
    torch.testing.assert_close(s["energy"], logits.logsumexp(1))
    ext = ph.extract(test)
    assert ext.labels is not None and torch.equal(ext.labels, test.labels)
    # fitted on the set's tensors (uint8 of another size: converted) = fitted on the set
    ph2 = PostHoc(model, head="fc", detectors=dets, device="cpu", preprocessing=GRAY32,
                  detector_kwargs={"knn": {"k": 3}}).fit((train.images, train.labels))
    assert test.labels is not None
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, test.labels), batch_size=7)
    for other in (ph2.score(test.images), ph2.score(x), ph2.score(loader)):
        for d in dets:
            torch.testing.assert_close(other[d], s[d], rtol=1e-5, atol=1e-5)
    # evaluate takes image sets too
    mnist = load_dataset("mnist", "test", root=data_root, n=30, seed=0)
    res = ph.evaluate(test, {"mnist": mnist})
    ref = ood_metrics(s["knn"].double().numpy(), ph.score(mnist)["knn"].double().numpy())
    assert res["mnist"]["knn"]["auroc"] == pytest.approx(ref["auroc"], abs=1e-6)
    # an image folder, decoded into memory or streamed from disk (RGB files → the gray input): the same scores
    rng = np.random.default_rng(1)
    for i in range(12):
        (tmp_path / "folder" / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / "folder" / f"class_{i % 2}" / f"{i}.png")
    spec = f"imagefolder:{tmp_path / 'folder'}"
    mem, streamed = (open_images(spec, "train", size=(32, 32), data_path=p) for p in ("memory", "stream"))
    assert not mem.streamed and streamed.streamed
    torch.testing.assert_close(ph.score(streamed)["knn"], ph.score(mem)["knn"])
    with pytest.raises(ConfigError, match=r"\(N, 1, 32, 32\) on the \[0, 1\] scale"):
        ph.score(torch.rand(3, 1, 28, 28))
    with pytest.warns(UserWarning, match="do not normalize"):
        ph.score((x - 0.5) / 0.25)
    with pytest.raises(ConfigError, match="cannot read images"):
        ph.score(42)


@pytest.fixture
def tiny_benchmark(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A benchmark on generated data: ID the Fashion-MNIST stand-in, near the MNIST stand-in, far noise + blobs."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("fashion-mnist", "mnist"):
        (root / name).symlink_to(data_root / name, target_is_directory=True)
    rng = np.random.default_rng(0)
    np.savez(root / "blobs.npz", images=rng.integers(0, 256, (40, 20, 20, 3), dtype=np.uint8))
    monkeypatch.setitem(BENCHMARKS, "tiny-posthoc", {
        "id": "fashion-mnist", "channels": 1, "size": [28, 28],
        "ood": {"near": ["mnist"], "far": ["noise", "npz:{root}/blobs.npz"]},
    })
    return root


def test_evaluate_benchmark_is_the_bench_table(usernet: Any, tiny_benchmark: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The near/far table of a user's model equals `l2ood bench --recipe pretrained-* --pretrained RUN` on the
    same network (saved by PostHoc.save): every set's AUROC and FPR@95, and the group means it prints."""
    model = _trained_like(usernet, seed=1)
    dets = ["feature_norm", "energy", "knn"]
    inp = InputConfig.of("unit", channels=1, size=(28, 28))
    ph = PostHoc(model, head="fc", detectors=dets, device="cpu", preprocessing=inp)
    table = ph.evaluate_benchmark("tiny-posthoc", data_root=tiny_benchmark, n_ood=30, n_id=100, n_fit=200)
    assert not ph.fitted and ph.n_fit == 0  # the object's own (knn) fit is left as it was: none
    assert table.groups == {"mnist": "near", "noise": "far", "blobs": "far"} and table.group_names == ["near", "far"]
    assert table.n == {table.id_name: 100, "mnist": 30, "noise": 30, "blobs": 30} and table.id_accuracy is not None
    for d in dets:
        far = [table.per_set[s][d]["auroc"] for s in ("noise", "blobs")]
        assert table.means[d]["far"]["auroc"] == pytest.approx(float(np.mean(far)), abs=1e-12)
        assert table.means[d]["near"]["fpr95"] == table.per_set["mnist"][d]["fpr95"]
    # the same numbers from the bench itself, on the run folder of this network
    run_dir = tmp_path / "run"
    ph.save(run_dir, factory="posthoc_usernet:build")
    monkeypatch.setenv(TRUST_ENV, "1")
    out = tmp_path / "bench"
    assert main(["bench", "--benchmark", "tiny-posthoc", "--recipe", "pretrained-resnet50", "--pretrained",
                 str(run_dir), "--variants", "ce", "--seeds", "0", "--detectors", ",".join(dets), "--data-root",
                 str(tiny_benchmark), "--out", str(out), "--n-ood", "30", "--n-id", "100", "--n-fit", "200",
                 "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(dets) * 3
    for r in rows:
        assert table.groups[r["ood"]] == r["group"]
        for m in ("auroc", "fpr95", "fpr95_ood_pos"):
            assert table.per_set[r["ood"]][r["detector"]][m] == pytest.approx(float(r[m]), abs=1e-6)
        assert table.id_accuracy == pytest.approx(float(r["id_acc"]), abs=1e-9)
    md = (out / "results.md").read_text()
    for d in dets:  # the group columns the bench prints: near/far AUROC, FPR95 (OoD+), FPR95 (ID+)
        row = next(line for line in md.splitlines() if line.startswith(f"| torchvision:resnet50 | ce | {d} |"))
        want = [f"{100 * table.means[d][g][m]:.2f}" for m in ("auroc", "fpr95_ood_pos", "fpr95")
                for g in ("near", "far")]
        assert row.split(" | ")[3:9] == want
        assert f"| {d} | " + " | ".join(want) in table.markdown()
    with pytest.raises(ConfigError, match="unknown benchmark"):
        ph.evaluate_benchmark("nope")
    with pytest.raises(ConfigError, match="preprocessing"):
        PostHoc(model, head="fc", device="cpu").evaluate_benchmark("tiny-posthoc", data_root=tiny_benchmark)


def _record_json(run_dir: Path) -> dict[str, Any]:
    """The run record without what differs between two imports of the same network: when, and from which file."""
    rec = json.loads((run_dir / "model.json").read_text())
    rec["provenance"].pop("created")
    for k in ("weights_file", "weights_file_sha256"):
        rec["imported"].pop(k)
    return rec


def test_save_and_calibrate_equal_the_command_line(usernet: Any, data_root: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """PostHoc.save + PostHoc.calibrate write the run folder `l2ood import --factory` + `l2ood calibrate` write
    (same weights file, same record, same calibration), and both screen files with the same verdicts — which are
    PostHoc's own scores of those files."""
    model = _trained_like(usernet, seed=2)
    inp = InputConfig.of("unit", channels=1, size=(28, 28), mean=[0.3], std=[0.4])
    ph = PostHoc(model, head="fc", detectors=["feature_norm", "energy"], device="cpu", preprocessing=inp)
    a, b = tmp_path / "a", tmp_path / "b"
    run = ph.save(a, factory="posthoc_usernet:build", factory_kwargs={"width": 6}, data="fashion-mnist",
                  holdout=60, data_root=data_root, class_names=[f"c{i}" for i in range(10)])
    assert run.path == a and run.record.imported is not None and run.record.imported.head_layer == "fc"
    cal = ph.calibrate(a, detector="energy", tpr=0.9, data_root=data_root)
    assert cal.n == 60 and Run.load(a, trust_code=True).calibration() == cal
    # the same with the command line, from a weights file of the same network
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert main(["import", "--factory", "posthoc_usernet:build", "--kwargs", '{"width": 6}', "--weights",
                 str(tmp_path / "w.safetensors"), "--head", "fc", "--preprocessing", "unit", "--channels", "1",
                 "--image-size", "28", "--mean", "0.3", "--std", "0.4", "--class-names", ",".join(
                     f"c{i}" for i in range(10)), "--data", "fashion-mnist", "--holdout", "60", "--data-root",
                 str(data_root), "--out", str(b)]) == 0
    monkeypatch.setenv(TRUST_ENV, "0")
    assert main(["calibrate", str(b), "--detector", "energy", "--tpr", "0.9", "--data-root", str(data_root),
                 "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 2  # a factory's run: not trusted
    monkeypatch.setenv(TRUST_ENV, "1")
    assert main(["calibrate", str(b), "--detector", "energy", "--tpr", "0.9", "--data-root", str(data_root),
                 "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert _record_json(a) == _record_json(b)  # model, preprocessing, data, calibration, digests
    # the same verdicts from both folders (Python screen on a, the command line on b), and PostHoc's scores
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    arrays = [*load_dataset("fashion-mnist", "test", root=data_root, n=6, seed=3).images[:, 0].numpy(),
              *rng.integers(0, 256, (4, 30, 36, 3), dtype=np.uint8)]
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(imgs / f"x{i}.png")
    recs = list(Screener.from_run(a, device="cpu", precision="fp32").screen([imgs]))
    assert main(["screen", str(b), str(imgs), "--format", "jsonl", "-o", str(tmp_path / "b.jsonl"),
                 "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    cli = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in recs] == [r["verdict"] for r in cli] and {r["verdict"] for r in recs} <= {"in", "out"}
    np.testing.assert_allclose([r["score"] for r in recs], [r["score"] for r in cli], rtol=1e-6)
    files = [torch.from_numpy(np.array(Image.open(imgs / f"x{i}.png"))) for i in range(len(arrays))]
    mine = [float(ph.score(f.permute(2, 0, 1) if f.ndim == 3 else f[None])["energy"][0]) for f in files]
    np.testing.assert_allclose([r["score"] for r in recs], mine, rtol=1e-5)
    assert [r["verdict"] for r in recs] == ["out" if s < cal.threshold else "in" for s in mine]


def test_save_records_the_fitted_detectors_and_refuses_what_it_cannot_rebuild(usernet: Any, data_root: Path,
                                                                             tmp_path: Path) -> None:
    """The detectors PostHoc fitted are saved with the run: it calibrates and screens with them although it holds no
    training data. A factory that builds another network is refused before anything is written."""
    model = _trained_like(usernet, seed=3)
    train = load_dataset("fashion-mnist", "train", root=data_root, n=120, seed=1)
    ph = PostHoc(model, head="fc", detectors=["knn", "feature_norm"], device="cpu", preprocessing=GRAY32).fit(train)
    run = ph.save(tmp_path / "run", factory="posthoc_usernet:build")
    assert list(model.fc._forward_hooks.values()) == [ph.net._capture]  # the import's wrapper let go of the head
    entry = run.record.detectors["knn"]
    assert entry.n_fit == 120 and entry.hyper_parameters["k"] == 50 and (tmp_path / "run" / entry.file).is_file()
    cal = ph.calibrate(tmp_path / "run", detector="knn", calibration_data="fashion-mnist", data_root=data_root)
    assert cal.fitted == {"knn": entry.sha256}  # the saved fit, not a new one (the run records no training data)
    test = load_dataset("fashion-mnist", "test", root=data_root, n=20, seed=5)
    got = Screener.from_run(Run.load(tmp_path / "run", device="cpu", precision="fp32", trust_code=True)).score(
        test.images)
    np.testing.assert_allclose(got.scores, ph.score(test)["knn"].double().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="builds another network"):
        ph.save(tmp_path / "other", factory="posthoc_usernet:build", factory_kwargs={"width": 5})
    assert not (tmp_path / "other").exists()
    with pytest.raises(ConfigError, match="exactly one of factory"):
        ph.save(tmp_path / "other", arch="resnet18", factory="posthoc_usernet:build")
    with pytest.raises(ConfigError, match="preprocessing"):
        PostHoc(model, head="fc", device="cpu").save(tmp_path / "other", factory="posthoc_usernet:build")


def test_save_by_architecture_name(tmp_path: Path) -> None:
    """A network in an l2ood architecture's layout, saved by name: its state dict goes through a temporary
    safetensors file (gone afterwards) into `import_classifier(arch=...)`; the run computes the same outputs."""
    from l2ood.models import ModelConfig, build_model

    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = build_model(ModelConfig(arch="resnet18", width=4, head="ce", num_classes=3,
                                                    in_channels=1)).backbone
            self.fc = nn.Linear(int(self.backbone.feature_dim), 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.backbone(x))

    torch.manual_seed(0)
    net = Mine().eval()
    ph = PostHoc(net, head="fc", detectors=["feature_norm"], device="cpu", preprocessing=GRAY32)
    run = ph.save(tmp_path / "run", arch="resnet18", width=4)
    rec = run.record.imported
    assert rec is not None and rec.source == "resnet18" and rec.weights_file is not None
    assert not Path(rec.weights_file).exists()  # the temporary file
    x = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    got = run.forward_batch(x)
    with torch.no_grad():
        z = net.backbone((x.float() / 255 - 0.5) / 0.25)
    torch.testing.assert_close(got.features, z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits, net.fc(z).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ph.score(x)["feature_norm"], z.norm(dim=1), rtol=1e-5, atol=1e-5)
