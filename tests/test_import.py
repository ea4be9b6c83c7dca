"""``l2ood import``: a classifier l2ood did not train becomes a run folder that every command works on — evaluate,
calibrate, screen, serve, bench — with its network rebuilt from a factory only when its code is trusted."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from l2ood.cli import main
from l2ood.errors import ConfigError, RunError
from l2ood.importing import InputConfig, import_classifier
from l2ood.metrics.conformal import calibrate
from l2ood.models import ModelConfig, build_model
from l2ood.run import Run
from l2ood.screen import Screener

NET = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        """A user's own classifier: no l2ood base class; the head is `out`, an inner linear layer `proj` too."""

        def __init__(self, classes=10, width=8):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.proj = nn.Linear(width, 16)
            self.out = nn.Linear(16, classes)

        def forward(self, x):
            return self.out(torch.relu(self.proj(self.body(x))))

    def build(classes=10, width=8):
        torch.manual_seed(0)
        return Net(classes, width)

    def not_a_module():
        return 42

    def broken(classes=10):
        net = build(classes)
        with torch.no_grad():
            net.out.bias.fill_(float("nan"))
        return net
''')


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Path]:
    """A user's network in an importable module of a temporary folder, its weights file and a few images."""
    root = tmp_path_factory.mktemp("import")
    (root / "usernet.py").write_text(NET)
    sys.path.insert(0, str(root))
    import usernet  # type: ignore[import-not-found]

    net = usernet.build(10, 8)
    with torch.no_grad():  # weights that differ from the factory's own, so that loading them is observable
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "w.safetensors"))
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(imgs / f"x{i}.png")
    yield {"root": root, "weights": root / "w.safetensors", "imgs": imgs, "data": data_root}
    sys.path.remove(str(root))
    sys.modules.pop("usernet", None)


def _import(user: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["import", "--factory", "usernet:build", "--kwargs", '{"classes": 10, "width": 8}',
                 "--weights", str(user["weights"]), "--preprocessing", "cifar", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def imported(user: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "run"
    assert _import(user, out, "--data", "fashion-mnist", "--holdout", "200", "--data-root", str(user["data"])) == 0
    return out


def test_the_record_says_from_what_and_with_which_digests(imported: Path, user: dict[str, Path]) -> None:
    rec = json.loads((imported / "model.json").read_text())
    assert rec["model"]["arch"] == "factory:usernet:build" and rec["model"]["head"] == "ce"
    assert rec["model"]["factory_kwargs"] == {"classes": 10, "width": 8}
    assert rec["model"]["head_layer"] == "out"  # found: the last linear layer whose output is the model's
    imp = rec["imported"]
    assert imp["kind"] == "imported" and imp["source"] == "factory:usernet:build" and imp["head_found"] is True
    assert imp["weights_file_sha256"] == hashlib.sha256(user["weights"].read_bytes()).hexdigest()
    assert imp["factory_sha256"] == hashlib.sha256((user["root"] / "usernet.py").read_bytes()).hexdigest()
    assert rec["preprocessing"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert rec["preprocessing"]["size"] == [32, 32] and rec["preprocessing"]["channels"] == 3
    assert rec["data"]["n_train"] == 400 and rec["data"]["holdout"] is not None  # 600 minus the 200 held out
    assert rec["data"]["fingerprint"] is not None


def test_a_factory_run_loads_only_when_its_code_is_trusted(imported: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L2OOD_TRUST_CODE", raising=False)
    with pytest.raises(RunError, match="--trust-code"):
        Run.load(imported)
    assert main(["screen", str(imported), str(imported / "model.json"), "--no-progress"]) == 2
    assert "runs that code" in capsys.readouterr().err
    monkeypatch.setenv("L2OOD_TRUST_CODE", "1")
    assert Run.load(imported).config.head_layer == "out"


def test_the_imported_network_computes_what_the_users_does(imported: Path, user: dict[str, Path]) -> None:
    """Logits and z of the run = the user's own network on the normalized input (its weights file loaded)."""
    import usernet
    from safetensors.torch import load_file

    net = usernet.build(10, 8)
    net.load_state_dict(load_file(str(user["weights"])))
    net.eval()
    run = Run.load(imported, device="cpu", precision="fp32", trust_code=True)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    ext = run.forward_batch(x)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    xn = (x.float() / 255 - mean) / std
    with torch.no_grad():
        z = torch.relu(net.proj(net.body(xn)))
        torch.testing.assert_close(ext.logits, net(xn), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ext.features, z, rtol=1e-5, atol=1e-5)


def test_factory_source_change_warns(imported: Path, user: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rec = json.loads((imported / "model.json").read_text())
    rec["imported"]["factory_sha256"] = "0" * 64  # as if the module's source had been edited since import
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes((imported / "model.safetensors").read_bytes())
    (run / "model.json").write_text(json.dumps(rec))
    with pytest.warns(UserWarning, match="changed since the run was imported"):
        Run.load(run, trust_code=True)


def test_an_architecture_by_name_from_a_wrapped_torch_checkpoint(tmp_path: Path) -> None:
    """A torch checkpoint (read with weights_only=True) with a {"state_dict": ...} wrapper and DataParallel's
    "module." prefixes: the backbone and the one head among its tensors are found; outputs equal the source's."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", width=4, head="ce", num_classes=7, mean=[0.5, 0.5, 0.5], std=[0.25] * 3)
    clf = build_model(cfg).eval()
    sd = {f"module.{k}": v for k, v in clf.state_dict().items() if "input_" not in k}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    run = import_classifier(tmp_path / "run", arch="resnet18", width=4, weights=tmp_path / "ckpt.pt",
                            preprocessing=None, image_size=(32, 32), mean=[0.5], std=[0.25],
                            class_names=[f"c{i}" for i in range(7)])
    assert run.config.num_classes == 7 and run.config.class_names == [f"c{i}" for i in range(7)]
    assert run.record.imported is not None and run.record.imported.head_layer == "fc"
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        ref = clf(x.float() / 255)
    got = Run.load(tmp_path / "run", device="cpu", precision="fp32").forward_batch(x)
    torch.testing.assert_close(got.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.features, ref.features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("args", "message"), [
    (["--kwargs", "{not json"], "--kwargs: not JSON"),
    (["--kwargs", "[1, 2]"], "JSON object"),
    (["--factory", "nosuchpackage.nets:build"], "cannot import nosuchpackage.nets"),
    (["--factory", "usernet:not_a_module", "--kwargs", "{}"], "returned a int, not an nn.Module"),
    (["--factory", "usernet:nothing_here"], "has no function 'nothing_here'"),
    (["--factory", "usernet"], "expected package.module:function"),
    (["--head", "body"], "must be an nn.Linear"),
    (["--head", "nope"], "has no layer 'nope'"),
    (["--class-names", "a,b,c"], "3 class names for a head of 10 classes"),
    (["--kwargs", '{"classes": 5}'], "of another shape"),
    (["--factory", "usernet:broken", "--kwargs", "{}", "--weights", ""], "not finite"),
    (["--image-size", "0"], "--image-size"),
    (["--mean", "0.1,0.2"], "mean and std need 1 or 3 values each"),
    (["--preprocessing", "imagenet1k"], "unknown preprocessing preset"),
    (["--holdout", "5"], "--holdout needs --data"),
])
def test_import_errors_are_one_clear_message(user: dict[str, Path], tmp_path: Path, args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--factory": "usernet:build", "--kwargs": '{"classes": 10, "width": 8}', "--weights": str(user["weights"])}
    rest: list[str] = []
    for i in range(0, len(args), 2):
        if args[i] in base:
            base[args[i]] = args[i + 1]
        else:
            rest += args[i : i + 2]
    argv = ["import", "--out", str(tmp_path / "run"), "--preprocessing", "cifar"]
    argv += [a for k, v in base.items() if v for a in (k, v)] + rest
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.json").exists()


def test_a_pickled_module_is_never_unpickled(user: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import usernet

    torch.save(usernet.build(10, 8), tmp_path / "whole_module.pt")  # a pickled nn.Module, not a state dict
    assert main(["import", "--factory", "usernet:build", "--weights", str(tmp_path / "whole_module.pt"),
                 "--preprocessing", "cifar", "--out", str(tmp_path / "run")]) == 2
    assert "weights_only=True" in capsys.readouterr().err


def test_input_presets_and_overrides() -> None:
    c = InputConfig.of("imagenet")
    assert (c.size, c.fit, c.channels) == ((224, 224), "imagenet", 3) and c.mean == [0.485, 0.456, 0.406]
    g = InputConfig.of("unit", channels=1, size=(28, 28))
    assert (g.size, g.fit, g.mean, g.std) == ((28, 28), "resize", [0.0], [1.0])
    assert InputConfig.of("cifar", fit="crop", mean=[0.5], std=[0.5]).mean == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match="give the input size"):
        InputConfig.of(None, size=(8, 8))
    with pytest.raises(ConfigError, match="std values must be > 0"):
        InputConfig.of("cifar", std=[0.0])


def test_every_command_works_on_an_imported_run(imported: Path, user: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-root", str(user["data"]), "--no-progress", "--precision", "fp32", "--trust-code"]
    out = tmp_path / "eval"
    assert main(["evaluate", str(imported), "--ood", "mnist", "--detectors",
                 "feature_norm,energy,knn,mahalanobis,odin", "--combine", "feature_norm,knn", "--val-ood", "noise",
                 "--n-val-ood", "100", "--out", str(out), *data]) == 0
    res = json.loads((out / "results.json").read_text())
    run = next(iter(res["runs"].values()))
    assert {"feature_norm", "knn", "mahalanobis", "odin", "bonferroni(feature_norm,knn)"} <= set(run["detectors"])
    assert 0.5 < run["ood"]["mnist"]["detectors"]["mahalanobis"]["auroc"] <= 1.0
    assert "knn" in run["selection"]["columns"]  # k chosen on the holdout vs the validation OoD set
    assert (imported / "detectors" / "knn.safetensors").is_file()  # fitted once on the recorded ID data
    assert main(["calibrate", str(imported), "--detector", "knn", "--alpha", "0.1", "--name", "knn", *data]) == 0
    assert main(["calibrate", str(imported), "--detector", "feature_norm,mahalanobis", "--alpha", "0.1",
                 "--name", "both", *data]) == 0
    capsys.readouterr()
    files = [str(p) for p in sorted(user["imgs"].glob("*.png"))]
    assert main(["screen", str(imported), *files, "--calibration", "knn", "--format", "jsonl", "--no-progress",
                 "--trust-code", "--precision", "fp32"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(recs) == 6 and all(r["status"] == "ok" and r["verdict"] in ("in", "out") for r in recs)
    scr = Screener.from_run(Run.load(imported, device="cpu", precision="fp32", trust_code=True), calibration="knn")
    direct = {Path(r["path"]).name: r for r in scr.screen(files)}
    for r in recs:  # the CLI and the Python screen agree
        d = direct[Path(r["path"]).name]
        assert r["verdict"] == d["verdict"] and r["score"] == pytest.approx(d["score"], rel=1e-6)
    both = Screener.from_run(Run.load(imported, device="cpu", precision="fp32", trust_code=True), calibration="both")
    assert all(r["status"] == "ok" and 0 < r["p_value"] <= 1 for r in both.screen(files))


def test_the_service_screens_an_imported_run(imported: Path, user: dict[str, Path]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from l2ood.deploy.service import ServeConfig, create_app

    if Run.load(imported, trust_code=True).calibration("knn") is None:
        assert main(["calibrate", str(imported), "--detector", "knn", "--alpha", "0.1", "--name", "knn",
                     "--data-root", str(user["data"]), "--no-progress", "--precision", "fp32", "--trust-code"]) == 0
    scr = Screener.from_run(Run.load(imported, device="cpu", precision="fp32", trust_code=True), calibration="knn")
    files = sorted(user["imgs"].glob("*.png"))
    direct = {Path(r["path"]).name: r for r in scr.screen([str(p) for p in files])}
    with TestClient(create_app(scr, ServeConfig(), run_label="imported")) as c:
        for p in files:
            r = c.post("/v1/screen", content=p.read_bytes()).json()
            assert r["verdict"] == direct[p.name]["verdict"]
            # one image per forward pass here, six in one batch there: float sums in another order
            assert r["score"] == pytest.approx(direct[p.name]["score"], rel=1e-4)


def test_false_alarms_of_an_imported_screen_stay_within_the_conformal_bound(imported: Path) -> None:
    """Held-out ID images of the imported network (fashion-mnist stand-in test split, 300 images): over 2 000
    random calibration/test splits the rate of ID images rejected at alpha = 0.1 stays within the conformal bound
    (at most alpha; for continuous scores exactly floor(alpha (n+1)) / (n+1))."""
    run = Run.load(imported, device="cpu", precision="fp32", trust_code=True)
    test, _ = run.id_test()
    scores = run.scores(test)  # ‖z‖ of the user's network
    assert len(np.unique(scores)) == len(scores)  # continuous: no ties
    rng = np.random.default_rng(0)
    n_cal, alpha, trials, rejected, tested = 149, 0.1, 2000, 0, 0
    for _ in range(trials):
        perm = rng.permutation(len(scores))
        cal = calibrate(scores[perm[:n_cal]], alpha=alpha)
        flags = cal.is_ood(scores[perm[n_cal:]])
        rejected, tested = rejected + int(flags.sum()), tested + len(flags)
    rate = rejected / tested
    exact = np.floor(alpha * (n_cal + 1)) / (n_cal + 1)  # = 0.1
    # the splits share one pool of 300 images, so the estimate varies more than a binomial: 0.01 tolerance
    assert abs(rate - exact) < 0.01, rate


def test_import_refuses_an_existing_run_and_overwrite_replaces_it_whole(user: dict[str, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _import(user, out) == 0
    (out / "detectors").mkdir()
    (out / "detectors" / "knn.safetensors").write_bytes(b"statistics of the old weights")
    (out / "notes.txt").write_text("the user's own file")
    capsys.readouterr()
    assert _import(user, out) == 2 and "already holds" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    assert _import(user, out, "--overwrite") == 0
    assert not (out / "detectors").exists()  # nothing of the replaced run is kept
    assert json.loads((out / "model.json").read_text())["calibrations"] == {}


def test_a_gray_input_takes_the_presets_luma_statistics() -> None:
    g = InputConfig.of("cifar", channels=1)
    assert g.channels == 1 and g.mean == pytest.approx([0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465])
    with pytest.raises(ConfigError, match="need 1 value each"):
        InputConfig.of("cifar", channels=1, mean=[0.1, 0.2, 0.3])


def test_an_imported_runs_screen_exports_to_onnx(imported: Path, user: dict[str, Path], tmp_path: Path) -> None:
    """The KNN screen of a factory-built run as one ONNX model: onnxruntime's verdicts are the Python screen's."""
    ort = pytest.importorskip("onnxruntime")
    if Run.load(imported, trust_code=True).calibration("knn") is None:
        assert main(["calibrate", str(imported), "--detector", "knn", "--alpha", "0.1", "--name", "knn",
                     "--data-root", str(user["data"]), "--no-progress", "--precision", "fp32", "--trust-code"]) == 0
    out = tmp_path / "screen.onnx"
    assert main(["export", str(imported), "-o", str(out), "--calibration", "knn", "--verify-n", "64",
                 "--data-root", str(user["data"]), "--trust-code"]) == 0
    run = Run.load(imported, device="cpu", precision="fp32", trust_code=True)
    scr = Screener.from_run(run, calibration="knn")
    test, _ = run.id_test()
    x = next(iter(run.image_batches(test, batch_size=40)))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x.float().div(255).numpy()}),
                   strict=True))
    want = scr.score(x)
    # KNN scores are small differences of cosine similarities: compared on the scale of their spread, as the
    # export's own verification does (l2ood.deploy.export.SCORE_RTOL)
    np.testing.assert_allclose(got["score"], want.scores, rtol=0, atol=1e-3 * float(np.ptp(want.scores)))
    assert [bool(v) for v in got["verdict"]] == [bool(v) for v in want.is_ood]


def test_a_cropping_fit_is_applied_once_when_files_are_screened(user: dict[str, Path], tmp_path: Path) -> None:
    """Regression: with the ``imagenet`` fit (shorter side, then a centre crop of 0.875), screened files were fitted
    twice (cropped again after being brought to the input size). The score of a file is the score of the file
    brought to the model's input once."""
    from l2ood.data.preprocess import decode_image

    assert _import(user, tmp_path / "run", "--fit", "imagenet") == 0
    run = Run.load(tmp_path / "run", device="cpu", precision="fp32", trust_code=True)
    assert run.preprocessing.fit == "imagenet"
    files = [str(p) for p in sorted(user["imgs"].glob("*.png"))]  # 36×30 images: resized, then cropped
    got = [r["score"] for r in Screener(run).screen(files)]
    once = torch.cat([run.preprocessing(decode_image(f)) for f in files])
    want = run.forward_batch(once).features.norm(dim=1).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
