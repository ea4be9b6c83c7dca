"""Screening: calibration guarantees, every bad input handled, and a train → calibrate → screen round trip."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l2ood.cli import main
from l2ood.data import load_dataset
from l2ood.data import preprocess as preprocess_mod
from l2ood.screen import Screener, calibrate, conformal_p_values, decode_image, threshold_for_tpr
from l2ood.screen import images as images_mod

# ---------------------------------------------------------------- calibration


def test_p_values_by_hand() -> None:
    cal = [1.0, 2.0, 3.0, 4.0]
    # p(s) = (1 + #{cal <= s}) / 5
    np.testing.assert_allclose(conformal_p_values(cal, [0.5, 1.0, 2.5, 4.0, 9.0]),
                               [1 / 5, 2 / 5, 3 / 5, 5 / 5, 5 / 5])
    assert threshold_for_tpr(np.arange(1, 21), 0.95) == 2.0


def test_conformal_id_rejection_rate_over_random_splits() -> None:
    """Over many random calibration/test splits of exchangeable ID scores, the rejection rate of
    'p <= alpha' is at most alpha; for continuous scores it equals floor(alpha (n+1)) / (n+1)."""
    rng = np.random.default_rng(0)
    n_cal, alpha, trials = 199, 0.05, 4000
    rejected = 0
    for _ in range(trials):
        s = rng.gamma(2.0, 1.0, n_cal + 10)  # any continuous ID score distribution
        perm = rng.permutation(s.size)
        cal = calibrate(s[perm[:n_cal]], alpha=alpha)
        rejected += int(cal.is_ood(s[perm[n_cal:]]).sum())
    rate = rejected / (trials * 10)
    exact = np.floor(alpha * (n_cal + 1)) / (n_cal + 1)  # = 0.05
    # binomial std of the estimate ~ sqrt(0.05 * 0.95 / 40000) = 0.0011 -> 4 sigma tolerance
    assert abs(rate - exact) < 0.0045, rate
    assert rate <= alpha + 0.0045


def test_threshold_mode_accepts_tpr_of_fresh_id() -> None:
    rng = np.random.default_rng(1)
    accepted = []
    for _ in range(500):
        cal = calibrate(rng.normal(size=400), tpr=0.95)
        accepted.append(1 - cal.is_ood(rng.normal(size=400)).mean())
    # E[accepted] = ceil(0.95 n)/(n+1) = 380/401 = 0.9476
    assert abs(np.mean(accepted) - 380 / 401) < 0.004


def test_calibration_errors() -> None:
    with pytest.raises(ValueError, match="alpha"):
        calibrate(np.arange(10.0), alpha=0.01)  # below 1/(n+1): could never reject
    with pytest.raises(ValueError, match="finite"):
        calibrate([1.0, np.nan])
    with pytest.raises(ValueError, match="tpr"):
        threshold_for_tpr([1.0], 1.5)


# ---------------------------------------------------------------- bad inputs


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def zoo(tmp_path: Path) -> dict[str, Path]:
    """A folder of good images in every awkward mode plus every kind of bad file."""
    d = tmp_path / "zoo"
    d.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    f: dict[str, Path] = {}
    f["rgb_png"] = _png(d / "rgb.png", rgb)
    Image.fromarray(rgb).save(d / "photo.jpg", quality=90)
    f["jpeg"] = d / "photo.jpg"
    f["gray"] = _png(d / "gray.png", rgb[..., 0])
    f["rgba"] = _png(d / "rgba.png", np.dstack([rgb, np.full((40, 30), 128, np.uint8)]))
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    f["palette"] = d / "palette.png"
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    f["cmyk"] = d / "cmyk.jpg"
    Image.fromarray((rng.integers(0, 65536, (20, 20))).astype(np.uint16)).save(d / "deep16.png")
    f["16bit"] = d / "deep16.png"
    f["tiny"] = _png(d / "one.png", np.array([[200]], np.uint8))
    Image.fromarray(rgb).save(d / "pic.bmp")
    Image.fromarray(rgb).save(d / "pic.tiff")
    Image.fromarray(rgb).save(d / "pic.webp")
    f["large"] = _png(d / "large.png", np.zeros((2500, 2000), np.uint8))
    # bad ones
    (d / "empty.png").write_bytes(b"")
    f["empty"] = d / "empty.png"
    (d / "trunc.png").write_bytes(f["rgb_png"].read_bytes()[:200])
    f["trunc_png"] = d / "trunc.png"
    (d / "trunc.jpg").write_bytes(f["jpeg"].read_bytes()[:300])
    f["trunc_jpg"] = d / "trunc.jpg"
    (d / "notes.jpg").write_text("this is not an image")
    f["text"] = d / "notes.jpg"
    (d / "readme.txt").write_text("ignored: not an image extension")
    os.symlink(d / "nowhere.png", d / "dangling.png")
    f["broken_link"] = d / "dangling.png"
    (d / "sub").mkdir()
    os.symlink(d, d / "sub" / "loop")
    _png(d / "sub" / "nested.png", rgb[:8, :8])
    return f


def _screener(tmp_path: Path, data_root: Path) -> Screener:
    from l2ood.models import ModelConfig
    from l2ood.train import TrainConfig, train

    ds = load_dataset("fashion-mnist", "train", root=data_root)
    run = tmp_path / "run"
    train(ds.subset(64), ModelConfig(width=2), TrainConfig(epochs=1, device="cpu", precision="fp32"), run,
          progress=False, log=None)
    return Screener.from_run(run, threshold=1.0, device="cpu", precision="fp32")


def test_every_bad_input_gets_a_record(zoo: dict[str, Path], tmp_path: Path, data_root: Path) -> None:
    scr = _screener(tmp_path, data_root)
    folder = zoo["rgb_png"].parent
    recs = list(scr.screen([folder, tmp_path / "missing.png"], batch_size=4, max_pixels=6_000_000))
    by = {Path(r["path"]).name: r for r in recs}
    ok = {"rgb.png", "photo.jpg", "gray.png", "rgba.png", "palette.png", "cmyk.jpg", "deep16.png",
          "one.png", "pic.bmp", "pic.tiff", "pic.webp", "large.png", "nested.png"}
    for name in ok:
        assert by[name]["status"] == "ok", (name, by[name])
        assert np.isfinite(by[name]["score"]) and by[name]["verdict"] in ("in", "out")
        assert 0 <= by[name]["pred_class"] < 10 and 0 < by[name]["confidence"] <= 1
    reasons = {
        "empty.png": "empty file", "trunc.png": "corrupt or truncated", "trunc.jpg": "corrupt or truncated",
        "notes.jpg": "not a recognized image", "dangling.png": "broken symbolic link",
        "loop": "directory loop", "missing.png": "no such file",
    }
    for name, why in reasons.items():
        assert by[name]["status"] == "error" and why in by[name]["error"], (name, by[name])
    assert "readme.txt" not in by
    assert sum(r["path"].endswith("nested.png") for r in recs) == 1  # the loop is not followed twice


def test_decompression_bomb_and_pixel_limit(tmp_path: Path) -> None:
    big = _png(tmp_path / "big.png", np.zeros((300, 400), np.uint8))
    with pytest.raises(images_mod.ImageReadError, match="too large"):
        decode_image(str(big), max_pixels=100_000)
    assert decode_image(str(big), max_pixels=120_000).shape == (300, 400)


def test_mode_conversions_exact(tmp_path: Path) -> None:
    a16 = np.array([[0, 65535], [257 * 100, 257 * 7]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "d.png")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "d.png")), [[0, 255], [100, 7]])
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = [0, 0, 0, 0]  # fully transparent black -> white
    rgba[0, 1] = [0, 0, 0, 255]  # opaque black stays black
    Image.fromarray(rgba).save(tmp_path / "t.png")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "t.png")), [[[255] * 3, [0] * 3]])


def test_permission_denied_is_a_record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        data_root: Path) -> None:
    scr = _screener(tmp_path, data_root)
    p = _png(tmp_path / "secret.png", np.zeros((5, 5), np.uint8))

    def deny(path: str) -> bytes:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(preprocess_mod, "_open_fd", deny)
    (rec,) = list(scr.screen([p]))
    assert rec["status"] == "error" and rec["error"] == "permission denied"


def test_fuzzed_real_images_never_crash(tmp_path: Path, data_root: Path) -> None:
    import skimage.data

    scr = _screener(tmp_path, data_root)
    rng = np.random.default_rng(42)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(skimage.data.astronaut()[::4, ::4]).save(src / "a.png")
    Image.fromarray(skimage.data.camera()[::4, ::4]).save(src / "c.jpg", quality=80)
    fuzz = tmp_path / "fuzz"
    fuzz.mkdir()
    n = 0
    for f in src.iterdir():
        data = bytearray(f.read_bytes())
        for i in range(40):
            b = bytearray(data)
            how = i % 4
            if how == 0:
                b = b[: rng.integers(1, len(b))]
            elif how == 1:
                for j in rng.integers(0, len(b), 20):
                    b[j] = rng.integers(0, 256)
            elif how == 2:
                j = int(rng.integers(0, len(b)))
                b[j:j] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            else:
                b[8:40] = bytes(32)  # wipe the header after the signature
            (fuzz / f"{i:02d}{f.suffix}").write_bytes(bytes(b))
            n += 1
    recs = list(scr.screen([fuzz], batch_size=8))
    assert len(recs) == n and len({r["path"] for r in recs}) == n
    for r in recs:
        if r["status"] == "ok":
            assert np.isfinite(r["score"])
        else:
            assert r["error"] and r["score"] is None
    assert any(r["status"] == "error" for r in recs)


# ---------------------------------------------------------------- end to end


def test_train_calibrate_screen_round_trip(tmp_path: Path, data_root: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data-root", str(data_root), "--epochs", "3", "--width", "4",
                 "--batch-size", "32", "--holdout", "150", "--out", str(run), "--no-progress",
                 "--precision", "fp32"]) == 0
    # screening an uncalibrated run is refused with a clear message
    assert main(["screen", str(run), str(tmp_path), "--no-progress"]) == 2
    assert "not calibrated" in capsys.readouterr().err
    assert main(["calibrate", str(run), "--tpr", "0.95", "--data-root", str(data_root), "--no-progress",
                 "--precision", "fp32"]) == 0
    meta = json.loads((run / "model.json").read_text())
    cal = meta["calibrations"]["default"]
    assert len(cal["scores"]) == 150 and cal["split"]["n"] == 150
    # predicted flag rate from the evaluation path
    scr = Screener.from_run(run, device="cpu", precision="fp32")
    mnist = load_dataset("mnist", "test", root=data_root)
    predicted = float((scr.score(mnist.images).scores < cal["threshold"]).mean())
    # write the MNIST test images as PNG files and screen the folder through the CLI
    folder = tmp_path / "mnist_png"
    folder.mkdir()
    for i, img in enumerate(mnist.images[:, 0].numpy()):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    capsys.readouterr()
    assert main(["screen", str(run), str(folder), "--no-progress", "--precision", "fp32",
                 "--batch-size", "64"]) == 0
    out = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert len(rows) == len(mnist)
    flagged = np.mean([r["verdict"] == "out" for r in rows])
    assert abs(flagged - predicted) <= 2 / len(mnist), (flagged, predicted)
    assert "screened 300 images" in out.err
    # a bad file makes the exit status 1 but the others are still screened
    (folder / "zz_bad.png").write_bytes(b"\x89PNG broken")
    assert main(["screen", str(run), str(folder), "--no-progress", "--format", "jsonl",
                 "-o", str(tmp_path / "o.jsonl")]) == 1
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 301 and lines[-1]["status"] == "error"


def test_screener_api_on_tensors(tmp_path: Path, data_root: Path) -> None:
    scr = _screener(tmp_path, data_root)
    out = scr.score(torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8))  # converted to 1×28×28
    assert out.scores.shape == (5,) and out.is_ood is not None and out.p_values is None
    with pytest.raises(ValueError, match="float input"):
        scr.score(torch.rand(2, 3, 40, 40))


def test_pickle_run_refused_by_screen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.pth").write_bytes(b"\x80\x04.")
    assert main(["screen", str(tmp_path / "model.pth"), str(tmp_path)]) == 2
    assert "pickle" in capsys.readouterr().err
