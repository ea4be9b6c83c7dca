"""The streaming data path (issue 12): image folders, image lists and tar shards of photo-sized JPEGs read
batch by batch; exact resume, data parallelism, run records, fine-tuning from weights files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from l2ood.data import DataError, DataSource, load_source
from l2ood.data.folders import scan_image_folder
from l2ood.data.preprocess import to_model_input
from l2ood.data.source import choose_data_path
from l2ood.data.stream import (
    IGNORE_LABEL,
    StreamingSet,
    epoch_seed,
    eval_batches,
    loader,
    materialize,
    open_stream,
    rrc_box,
    train_view,
    write_shards,
)
from l2ood.data.synthetic import write_photo_folder
from l2ood.data.transforms import convert_format
from l2ood.errors import ConfigError
from l2ood.models import ModelConfig, build_model
from l2ood.pipeline import training_data
from l2ood.run import Run
from l2ood.train import TrainConfig, train


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 JPEGs (4 classes × 60) of about 300×400 px — photo-sized, larger than 224 — as a folder with
    train/ and test/ splits, the same training images as 3 tar shards, and an OpenOOD-style image list."""
    root = tmp_path_factory.mktemp("photos")
    write_photo_folder(root / "folder" / "train", 45, 4, photo_size=(300, 400), seed=1)
    write_photo_folder(root / "folder" / "test", 15, 4, photo_size=(300, 400), seed=2)
    files, labels, names = scan_image_folder(root / "folder" / "train")
    write_shards(files, labels, root / "shards", per_shard=64, class_names=names)
    base = root / "folder" / "train"
    lines = [f"{f.relative_to(base).as_posix()} {lab}" for f, lab in zip(files, labels or [], strict=True)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def _sources(root: Path) -> dict[str, StreamingSet]:
    return {
        "folder": open_stream(f"imagefolder:{root / 'folder'}", "train", size=(64, 64)),
        "shards": open_stream(f"wds:{root / 'shards'}", "train", size=(64, 64)),
        "list": open_stream(f"imglist:{root / 'train.txt'}@{root / 'folder' / 'train'}", "train", size=(64, 64)),
    }


def test_three_sources_index_the_same_images(photos: Path) -> None:
    s = _sources(photos)
    assert {k: len(v) for k, v in s.items()} == {"folder": 180, "shards": 180, "list": 180}
    assert len(s["shards"].files) == 3 and s["shards"].is_tar and not s["folder"].is_tar
    for ds in s.values():
        assert ds.labels is not None and torch.equal(ds.labels, s["folder"].labels)
        assert ds.num_classes == 4
    assert s["shards"].class_names == s["folder"].class_names  # classes.txt beside the shards
    for i in (0, 77, 179):  # byte-identical members
        assert s["shards"].read(i) == s["folder"].read(i) == s["list"].read(i)
    assert s["folder"].source == DataSource(f"imagefolder:{photos / 'folder'}", "train", None, (), True)


def test_training_views_are_a_function_of_seed_and_index_only(photos: Path) -> None:
    s = _sources(photos)
    es = epoch_seed(3, 1)
    batch = [[(i, es) for i in (5, 100, 150, 7)]]
    a, ya, _ = next(iter(loader(s["folder"], batch, workers=0)))
    b, yb, _ = next(iter(loader(s["shards"], batch, workers=2)))
    c, _, _ = next(iter(loader(s["list"], [[(i, es) for i in (5, 100, 150, 7)]], workers=1)))
    assert a.shape == (4, 3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(ya, yb)
    d, _, _ = next(iter(loader(s["folder"], [[(i, epoch_seed(3, 2)) for i in (5, 100, 150, 7)]], workers=0)))
    assert not torch.equal(a, d)  # another epoch, other crops


def test_rrc_box_follows_torchvision_rules() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):  # any image shape: the box lies inside the image
        w, h = int(rng.integers(50, 800)), int(rng.integers(50, 800))
        left, top, cw, ch = rrc_box(w, h, rng)
        assert 0 <= left and 0 <= top and left + cw <= w and top + ch <= h and cw > 0 and ch > 0
    areas, aspects = [], []
    for _ in range(2000):  # a square image: area in scale=(0.08, 1), aspect in ratio=(3/4, 4/3)
        left, top, cw, ch = rrc_box(500, 500, rng)
        areas.append(cw * ch / 500**2)
        aspects.append(cw / ch)
    a, r = np.array(areas), np.array(aspects)
    assert a.min() > 0.075 and a.max() <= 1.0 and 0.4 < np.median(a) < 0.6  # uniform draws, large ones rejected
    assert r.min() > 0.74 and r.max() < 1.35 and abs(np.median(np.log(r))) < 0.05  # log-uniform, symmetric
    # no draw fits a 1000×10 strip: the centred crop of the clamped ratio 4/3 (torchvision's fallback)
    assert rrc_box(1000, 10, np.random.default_rng(1)) == (493, 0, 13, 10)


def test_train_view_flips_and_uses_jpeg_draft_consistently(tmp_path: Path) -> None:
    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :200] = 255  # left half white
    p = tmp_path / "half.png"
    Image.fromarray(img).save(p)
    data = p.read_bytes()
    outs = [train_view(data, (32, 32), np.random.default_rng(k)) for k in range(40)]
    assert all(o.shape == (3, 32, 32) and o.dtype == np.uint8 for o in outs)
    # with flips, some crops have the white part on the right, some on the left
    left_white = [o[:, :, :4].mean() > o[:, :, -4:].mean() + 50 for o in outs]
    right_white = [o[:, :, -4:].mean() > o[:, :, :4].mean() + 50 for o in outs]
    assert any(left_white) and any(right_white)
    no_flip = [train_view(data, (32, 32), np.random.default_rng(k), hflip=False) for k in range(40)]
    assert not any(o[:, :, -4:].mean() > o[:, :, :4].mean() + 50 for o in no_flip)


def test_eval_view_is_the_screen_path_with_imagenet_crop(photos: Path) -> None:
    ds = _sources(photos)["folder"].with_size((224, 224))
    x, _, err = next(iter(loader(ds, eval_batches(len(ds), 3)[:1], workers=0)))
    assert not err
    f = Path(ds.files[0])
    screened = to_model_input(f, 3, (224, 224), fit="imagenet")[0]
    assert torch.equal(x[0], screened)
    # geometry: shorter side -> 256, then the centre 224×224 (torchvision Resize(256) + CenterCrop(224))
    arr = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)[None]
    h, w = arr.shape[-2:]
    resized = convert_format(arr, 3, (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256))
    top, left = round((resized.shape[2] - 224) / 2), round((resized.shape[3] - 224) / 2)
    assert torch.equal(screened, resized[0, :, top : top + 224, left : left + 224])


def test_unreadable_images_are_ignored_by_the_loss(tmp_path: Path) -> None:
    write_photo_folder(tmp_path / "d", 4, 2, photo_size=(64, 64))
    bad = tmp_path / "d" / "00_astronaut" / "00002.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = open_stream(f"imagefolder:{tmp_path / 'd'}", "train", size=(32, 32))
    _, y, err = next(iter(loader(ds, [[(i, 1) for i in range(len(ds))]], workers=0)))
    assert (y == IGNORE_LABEL).sum() == 1 and y[2] == IGNORE_LABEL and len(err) == 1 and "00002.jpg" in err[0]
    m = materialize(ds)  # evaluation: skipped with a warning
    assert len(m) == 7


def test_bad_shards_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "gz").mkdir()
    with tarfile.open(tmp_path / "gz" / "a.tar", "w:gz") as tf:
        tf.add(__file__, arcname="x.py")
    with pytest.raises(DataError, match="uncompressed tar"):
        open_stream(f"wds:{tmp_path / 'gz'}", "train")
    with pytest.raises(DataError, match="no tar shards"):
        open_stream(f"wds:{tmp_path / 'none'}-{{000..003}}.tar", "train")
    with pytest.raises(DataError, match="cannot be streamed"):
        open_stream("mnist", "train")


def test_split_and_subset_match_the_in_memory_semantics(photos: Path) -> None:
    ds = _sources(photos)["shards"]
    rest, hold = ds.split(30, seed=4)
    assert len(rest) == 150 and len(hold) == 30
    perm = torch.randperm(180, generator=torch.Generator().manual_seed(4))
    assert set(hold.keys) == {ds.keys[i] for i in perm[:30].tolist()}
    assert rest.source is not None and rest.source.ops[0].part == "rest" and rest.source.stream
    again = load_source(rest.source, size=(64, 64))
    assert isinstance(again, StreamingSet) and again.keys == rest.keys and again.fingerprint() == rest.fingerprint()


def test_auto_data_path() -> None:
    assert choose_data_path("wds:/x", "auto") == "stream"
    assert choose_data_path("imagefolder:/x", "auto", (224, 224)) == "stream"
    assert choose_data_path("imagefolder:/x", "auto", (32, 32), n_images=1000) == "memory"
    assert choose_data_path("imagefolder:/x", "auto", (32, 32), n_images=2_000_000) == "stream"  # 6 GB decoded
    assert choose_data_path("cifar10", "auto", (224, 224)) == "memory"
    with pytest.raises(ConfigError, match="stream reads"):
        choose_data_path("cifar10", "stream")


def _tiny(seed: int = 0, **kw: object) -> tuple[ModelConfig, TrainConfig]:
    return (ModelConfig(arch="resnet18", width=4, head="l2"),
            TrainConfig(epochs=2, batch_size=24, lr=0.05, seed=seed, device="cpu", precision="fp32", workers=2,
                        **kw))  # type: ignore[arg-type]


def test_streamed_run_is_recorded_and_rebuilt(photos: Path, tmp_path: Path) -> None:
    tr, hold = training_data(f"imagefolder:{photos / 'folder'}", holdout=20, size=(48, 48), data_path="stream")
    assert isinstance(tr, StreamingSet) and len(tr) == 160 and isinstance(hold, StreamingSet) and len(hold) == 20
    # 48 < 128 px and a small set: auto keeps it in memory
    mem, _ = training_data(f"imagefolder:{photos / 'folder'}", holdout=20, size=(48, 48), data_path="auto")
    assert not isinstance(mem, StreamingSet) and len(mem) == 160
    mcfg, tcfg = _tiny()
    train(tr, mcfg, tcfg, tmp_path / "run", progress=False, log=None)
    rec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert rec["preprocessing"]["fit"] == "imagenet" and rec["preprocessing"]["size"] == [48, 48]
    assert rec["data"]["train"]["stream"] is True and rec["data"]["test_origin"] == "test-split"
    assert rec["data"]["fingerprint"] == tr.fingerprint() and rec["train"]["workers"] == 2
    assert len(rec["history"]) == 2 and rec["history"][0]["train_acc"] > 0
    run = Run.load(tmp_path / "run")
    again = run.train_split()
    assert isinstance(again, StreamingSet) and again.keys == tr.keys
    test, where = run.id_test()
    assert isinstance(test, StreamingSet) and len(test) == 60 and "test" in where
    ext = run.forward(test)
    assert ext.features.shape == (60, 32) and ext.labels is not None and torch.equal(ext.labels, test.labels)
    assert list((tmp_path / "run" / "cache").glob("*.safetensors"))  # cached like in-memory sets
    # the same file screened gives the same feature norm as through the stream
    x = run.preprocessing(Path(test.files[5]))
    assert torch.allclose(run.forward_batch(x).features.norm(dim=1)[0], ext.features[5].norm(), rtol=1e-5)
    # data changed since training: a new training image is detected by the index fingerprint
    extra = photos / "folder" / "train" / "00_astronaut" / "zz_new.jpg"
    extra.write_bytes(Path(test.files[0]).read_bytes())
    try:
        with pytest.raises(DataError, match="data changed"):
            Run.load(tmp_path / "run").train_split()
    finally:
        extra.unlink()


def test_stream_resume_mid_epoch_equals_uninterrupted(photos: Path, tmp_path: Path) -> None:
    tr = open_stream(f"wds:{photos / 'shards'}", "train", size=(40, 40))
    mcfg, tcfg = _tiny(seed=3)
    ref = train(tr, ModelConfig(**mcfg.to_dict()), TrainConfig(**vars(tcfg)), tmp_path / "ref",  # type: ignore[arg-type]
                progress=False, log=None)
    # 180 / 24 = 8 steps per epoch: stop in the second epoch, then resume (other worker count)
    m2, t2 = _tiny(seed=3)
    train(tr, m2, t2, tmp_path / "cut", progress=False, log=None, stop_after_steps=11)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step_in_epoch"] == 3
    m3, t3 = _tiny(seed=3)
    t3.workers = 0
    res = train(tr, m3, t3, tmp_path / "cut", progress=False, log=None, resume=True)
    for (k, a), b in zip(ref.model.state_dict().items(), res.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def _stream_cmd(src: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", src, "--image-size", "40", "--data-path", "stream", "--epochs", "2", "--width", "4",
            "--batch-size", "24", "--lr", "0.02", "--holdout", "0", "--precision", "fp32", "--device", "cpu",
            "--no-progress", "--out", str(out), "--seed", "5", "--workers", "1", *extra]


@pytest.mark.slow
def test_sigkill_mid_epoch_streamed_then_resume_is_bitwise_equal(photos: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "L2OOD_CACHE": str(tmp_path / "cache")}
    src = f"imagefolder:{photos / 'folder'}"
    ref = subprocess.run([sys.executable, "-m", "l2ood", *_stream_cmd(src, tmp_path / "ref")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "l2ood", *_stream_cmd(src, run, "--checkpoint-every-steps", "2")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rec = run / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if rec.is_file():
            r = json.loads(rec.read_text())
            if r["epoch"] >= 1 and r["step_in_epoch"] > 0:
                break
        time.sleep(0.01)
    # the DataLoader workers outlive their killed parent for a moment: they must not keep the run folder locked
    # (regression: the resume below failed with "in use" until forked children dropped the lock descriptor)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "model.safetensors").exists(), "killed too late"
    res = subprocess.run([sys.executable, "-m", "l2ood", *_stream_cmd(src, run, "--checkpoint-every-steps", "2",
                                                                      "--resume")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flat(path: Path) -> torch.Tensor:
    t = load_file(str(path / "model.safetensors"))
    return torch.cat([v.flatten() for k, v in sorted(t.items())
                      if v.is_floating_point() and "running" not in k and "input_" not in k])


@pytest.mark.slow
def test_two_rank_gloo_on_the_streaming_path(photos: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "L2OOD_CACHE": str(tmp_path / "cache")}
    folder = f"imagefolder:{photos / 'folder'}"
    one = subprocess.run([sys.executable, "-m", "l2ood", *_stream_cmd(folder, tmp_path / "one", "--sync-bn")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    runs = {}
    for name, src in (("two", folder), ("two_shards", f"wds:{photos / 'shards'}")):
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "l2ood", *_stream_cmd(src, tmp_path / name, "--sync-bn")],
                           capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "2 ranks" in p.stderr
        runs[name] = _flat(tmp_path / name)
    # folder: each rank reads its slice of every global batch; with SyncBN the 2-rank run computes the
    # 1-process updates (up to float summation order; same tolerance as tests/test_distributed.py)
    a = _flat(tmp_path / "one")
    assert ((runs["two"] - a).norm() / a.norm()).item() < 2e-3
    # shards: each rank reads only its own shards (3 shards: rank 0 gets 2 = 128 images, rank 1 gets 1 =
    # 52) -> 52 // 12 = 4 steps per epoch for both ranks, 2 epochs
    log = [json.loads(x) for x in (tmp_path / "two_shards" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    ck = json.loads((tmp_path / "two_shards" / "model.json").read_text())
    assert ck["provenance"]["world_size"] == 2


def test_shard_ownership_is_disjoint_and_complete(photos: Path) -> None:
    ds = _sources(photos)["shards"]
    own = [set(ds.owned_by(r, 2).tolist()) for r in range(2)]
    assert not own[0] & own[1] and own[0] | own[1] == set(range(len(ds)))
    assert {int(ds.shard[i]) for i in own[1]} == {1}
    with pytest.raises(ConfigError, match="shard"):
        ds.owned_by(0, 4)


def test_pretrained_weights_files(tmp_path: Path) -> None:
    cfg = ModelConfig(arch="resnet18", width=4, head="l2", num_classes=3)
    src = build_model(ModelConfig(arch="resnet18", width=4, head="ce", num_classes=7))
    body = {f"model.{k}": v for k, v in src.backbone.state_dict().items()}  # a prefix to strip
    body["fc.weight"] = torch.zeros(7, 32)  # a pretrained head: left out
    save_file(body, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": body}, tmp_path / "w.pt")
    from l2ood.train.trainer import load_pretrained

    for f in ("w.safetensors", "w.pt"):
        m = build_model(cfg)
        digest = load_pretrained(m, tmp_path / f)
        assert len(digest) == 64
        for k, v in src.backbone.state_dict().items():
            assert torch.equal(m.backbone.state_dict()[k], v), k
    wrong = build_model(ModelConfig(arch="resnet18", width=8, head="l2", num_classes=3))
    with pytest.raises(ConfigError, match="does not fit"):
        load_pretrained(wrong, tmp_path / "w.safetensors")

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("true",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="weights_only"):
        load_pretrained(build_model(cfg), tmp_path / "evil.pt")


def test_cli_fine_tune_from_weights_then_screen(photos: Path, tmp_path: Path) -> None:
    src = build_model(ModelConfig(arch="resnet18", width=4, head="ce", num_classes=9))
    save_file(dict(src.backbone.state_dict()), str(tmp_path / "pre.safetensors"))
    env = {**os.environ, "L2OOD_CACHE": str(tmp_path / "cache")}
    cmd = _stream_cmd(f"wds:{photos / 'shards'}", tmp_path / "ft", "--pretrained", str(tmp_path / "pre.safetensors"))
    cmd[cmd.index("--holdout") + 1] = "40"
    p = subprocess.run([sys.executable, "-m", "l2ood", *cmd], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "backbone initialized from" in p.stderr
    rec = json.loads((tmp_path / "ft" / "model.json").read_text())
    assert rec["model"]["mean"] == [0.485, 0.456, 0.406]  # a pretrained backbone keeps ImageNet normalization
    assert len(rec["train"]["extra"]["pretrained_sha256"]) == 64
    c = subprocess.run([sys.executable, "-m", "l2ood", "calibrate", str(tmp_path / "ft")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert c.returncode == 0, c.stderr[-2000:]
    assert "40 held-out ID images" in c.stdout
    one = next((photos / "folder" / "test").rglob("*.jpg"))
    s = subprocess.run([sys.executable, "-m", "l2ood", "screen", str(tmp_path / "ft"), str(one)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert s.returncode == 0, s.stderr[-2000:]
    assert "screened 1 images" in s.stderr
