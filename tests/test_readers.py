"""Readers of the CIFAR-scale OoD benchmark's official formats, on generated files in the official layouts.

CIFAR python/binary tarballs and folders, SVHN .mat, DTD / Tiny-ImageNet / Places-like image trees,
OpenOOD image lists, the decoded-image cache, and the non-executing pickle reader (malicious pickles
are refused and nothing runs). Nothing here calls pickle.load/loads.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l2ood.data import DATASETS, DataFormatError, DataNotFoundError, load_dataset
from l2ood.data import folders as folders_mod
from l2ood.data.cifar import CIFAR10_CLASSES
from l2ood.data.folders import load_image_folder

RNG = np.random.default_rng(0)


# --- writers for the official layouts -----------------------------------------------------------

def cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC uint8 images → CIFAR rows: the 1024 red, then green, then blue bytes, each plane row-major."""
    return np.concatenate([images[..., c].reshape(len(images), -1) for c in range(3)], axis=1)


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_cifar10(n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """HWC images and labels for data_batch_1..5 and test_batch."""
    out = {}
    for i, m in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        out[m] = (RNG.integers(0, 256, (n + i, 32, 32, 3), dtype=np.uint8), RNG.integers(0, 10, n + i))
    return out


def write_cifar10_binary_tar(path: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for m, (x, y) in batches.items():
            rec = np.concatenate([y.astype(np.uint8)[:, None], cifar_rows(x)], axis=1)
            add_bytes(tf, f"cifar-10-batches-bin/{m}.bin", rec.tobytes())
        add_bytes(tf, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(CIFAR10_CLASSES) + "\n\n").encode())


def hwc(ds_images: torch.Tensor) -> np.ndarray:
    return ds_images.permute(0, 2, 3, 1).numpy()


def save_img(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# --- CIFAR --------------------------------------------------------------------------------------

def test_cifar10_binary_tarball_and_folder(tmp_path: Path) -> None:
    batches = make_cifar10(4)
    binroot = tmp_path / "b"
    write_cifar10_binary_tar(binroot / "cifar-10-binary.tar.gz", batches)
    for split, members in (("test", ["test_batch"]), ("train", [f"data_batch_{k}" for k in range(1, 6)])):
        ds = load_dataset("cifar10", split, root=binroot, download=False)
        np.testing.assert_array_equal(hwc(ds.images), np.concatenate([batches[m][0] for m in members]))
        assert ds.labels.tolist() == np.concatenate([batches[m][1] for m in members]).tolist()
        assert ds.meta["format"] == "cifar-binary" and ds.class_names == list(CIFAR10_CLASSES) and ds.hflip
    with tarfile.open(binroot / "cifar-10-binary.tar.gz") as tf:  # the extracted folder reads the same
        tf.extractall(tmp_path / "x", filter="data")
    ds = load_dataset("cifar10", "test", root=tmp_path / "x" / "cifar-10-batches-bin", download=False)
    np.testing.assert_array_equal(hwc(ds.images), batches["test_batch"][0])


def test_cifar100_binary(tmp_path: Path) -> None:
    fine_names = [f"class_{i:02d}" for i in range(100)]
    b = tmp_path / "bin" / "cifar-100-binary"
    b.mkdir(parents=True)
    x, fine, coarse = (RNG.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), RNG.integers(0, 100, 7),
                       RNG.integers(0, 20, 7))
    rec = np.concatenate([coarse.astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None], cifar_rows(x)], 1)
    (b / "test.bin").write_bytes(rec.tobytes())  # 2 label bytes (coarse, fine) + 3072
    (b / "fine_label_names.txt").write_text("\n".join(fine_names) + "\n")
    ds = load_dataset("cifar100", "test", root=tmp_path / "bin", download=False)
    np.testing.assert_array_equal(hwc(ds.images), x)
    assert ds.labels.tolist() == fine.tolist() and ds.class_names == fine_names


def test_cifar_bad_files_are_refused_before_reading(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for m in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        (folder / f"{m}.bin").write_bytes(bytes(3073 * 2))
    (folder / "test_batch.bin").write_bytes(bytes(3073 * 2 + 5))  # not whole records
    with pytest.raises(DataFormatError, match="not 1 to 10000 records"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    with open(folder / "test_batch.bin", "wb") as f:  # sparse: larger than any official batch, never read
        f.truncate(3073 * 10_001)
    with pytest.raises(DataFormatError, match="not 1 to 10000 records"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    (folder / "test_batch.bin").write_bytes(bytes([10]) + bytes(3072))  # label 10 of 10 classes
    with pytest.raises(DataFormatError, match="out of range"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_python_version_alone_gets_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"never parsed")
    with pytest.raises(DataNotFoundError, match=r"python \(pickle\) version.*cifar-10-binary.tar.gz"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_cifar_download_uses_official_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pooch

    calls: list[tuple[str, str]] = []
    batches = make_cifar10(2)

    def fake_retrieve(url: str, known_hash: str, fname: str, path: Path, downloader: object) -> str:
        calls.append((url, known_hash))
        write_cifar10_binary_tar(Path(path) / fname, batches)
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    ds = load_dataset("cifar10", "test", root=tmp_path / "empty")
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                      "md5:c32a1d4ab5d03f1284b67883e8d87530")]
    np.testing.assert_array_equal(hwc(ds.images), batches["test_batch"][0])
    load_dataset("cifar10", "test", root=tmp_path / "empty")  # now found in the cache
    assert len(calls) == 1


# --- SVHN ---------------------------------------------------------------------------------------

def test_svhn_mat(tmp_path: Path) -> None:
    from scipy.io import savemat

    n = 11
    x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=np.uint8)[:, None]
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": y})
    ds = load_dataset("svhn", "test", root=tmp_path, download=False)
    assert ds.images.shape == (n, 3, 32, 32)
    np.testing.assert_array_equal(ds.images.numpy(), x.transpose(3, 2, 0, 1))
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert ds.class_names == [str(i) for i in range(10)] and not ds.hflip
    savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": x[..., :3], "y": y[:3]})
    assert len(load_dataset("svhn", "train", root=tmp_path, download=False)) == 3
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"junk")
    with pytest.raises(DataFormatError):
        load_dataset("svhn", "test", root=tmp_path, download=False)


# --- image folders, DTD, Tiny-ImageNet, Places365 -----------------------------------------------

def write_tree(root: Path, classes: dict[str, int], size: tuple[int, int], ext: str = ".jpg") -> None:
    for c, n in classes.items():
        for i in range(n):
            save_img(root / c / f"{c}_{i:04d}{ext}", RNG.integers(0, 256, (*size, 3), dtype=np.uint8))


def test_dtd_folder_crop_mode_and_tarball(tmp_path: Path) -> None:
    images = tmp_path / "dtd" / "images"
    write_tree(images, {"banded": 3, "zigzagged": 2}, (48, 40))
    write_tree(images, {"crystalline": 2}, (30, 50), ext=".png")
    # shorter side → 32 then centre crop: the red side bands of a 64×128 image are cut away
    band = np.zeros((64, 128, 3), np.uint8)
    band[:, :, 1] = 200
    band[:, :24, :] = (255, 0, 0)
    band[:, -24:, :] = (255, 0, 0)
    save_img(images / "aaa_center" / "x.png", band)
    ds = load_dataset("dtd", "test", root=tmp_path, download=False)
    assert ds.images.shape == (8, 3, 32, 32)
    assert ds.class_names == ["aaa_center", "banded", "crystalline", "zigzagged"]
    assert ds.labels.tolist() == [0, 1, 1, 1, 2, 2, 3, 3]
    centre = ds.images[0].float()
    assert centre[0].max() < 5 and abs(centre[1].mean() - 200) < 2
    resized = load_image_folder(images, mode="resize")
    assert resized.images[0, 0].float().max() > 200  # the whole-image resize keeps the red bands
    # the official tarball layout, found in a data root and extracted into the cache
    tar_root = tmp_path / "tar"
    tar_root.mkdir()
    with tarfile.open(tar_root / "dtd-r1.0.1.tar.gz", "w:gz") as tf:
        tf.add(images, arcname="dtd/images")
        add_bytes(tf, "dtd/labels/train1.txt", b"banded/banded_0000.jpg\n")
        add_bytes(tf, "../evil.jpg", b"x")
    ds2 = load_dataset("dtd", "test", root=tar_root, download=False)
    assert torch.equal(ds2.images, ds.images) and ds2.labels.tolist() == ds.labels.tolist()
    assert not (tmp_path / "cache" / "extracted" / "evil.jpg").exists()


def test_tiny_imagenet_tree_and_zip(tmp_path: Path) -> None:
    base = tmp_path / "data" / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (base).mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    for w in wnids:
        write_tree(base / "train" / w, {"images": 2}, (64, 64), ext=".JPEG")
    ann = []
    for i in range(5):
        save_img(base / "val" / "images" / f"val_{i}.JPEG", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        ann.append(f"val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    test_imgs = RNG.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    for i, im in enumerate(test_imgs):
        save_img(base / "test" / "images" / f"test_{i}.png", im)  # PNG here: exact pixels for the check
    test = load_dataset("tin", "test", root=tmp_path / "data", download=False)
    assert test.images.shape == (4, 3, 32, 32) and test.labels is None
    from l2ood.data.preprocess import to_model_input

    # the reader decodes through the one preprocessing path (the one screened files take) ...
    expect = torch.cat([to_model_input(im, 3, (32, 32)) for im in test_imgs])
    torch.testing.assert_close(test.images, expect, rtol=0, atol=0)
    # ... whose antialiased bilinear resize agrees with Pillow's bilinear (a reference) to a few levels
    pil = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BILINEAR)) for im in test_imgs])
    diff = np.abs(hwc(test.images).astype(int) - pil.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.6
    val = load_dataset("tin", "val", root=tmp_path / "data", download=False)
    assert val.labels.tolist() == [0, 1, 2, 0, 1] and val.class_names == wnids
    train = load_dataset("tin", "train", root=tmp_path / "data", download=False)
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and train.class_names == wnids
    zroot = tmp_path / "z" / "tin"
    zroot.mkdir(parents=True)
    with zipfile.ZipFile(zroot / "tiny-imagenet-200.zip", "w") as zf:
        for f in sorted(base.rglob("*")):
            if f.is_file():
                zf.write(f, f"tiny-imagenet-200/{f.relative_to(base).as_posix()}")
    ztest = load_dataset("tin", "test", root=tmp_path / "z", download=False)
    assert torch.equal(ztest.images, test.images)


def test_places365_class_and_flat_folders(tmp_path: Path) -> None:
    write_tree(tmp_path / "a" / "places365", {"abbey": 2, "zoo": 3}, (40, 40))
    ds = load_dataset("places365", "test", root=tmp_path / "a", download=False)
    assert ds.images.shape == (5, 3, 32, 32) and ds.class_names == ["abbey", "zoo"]
    write_tree(tmp_path / "b" / "places365", {"val_256": 4}, (256, 256))
    flat = load_dataset("places365", "test", root=tmp_path / "b", download=False)
    assert flat.images.shape == (4, 3, 32, 32) and flat.labels is None


def test_imagefolder_cache_skips_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "imgs", {"cat": 3, "dog": 2}, (20, 24), ext=".png")
    (tmp_path / "imgs" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        first = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", size=(16, 16))
    assert first.images.shape == (5, 3, 16, 16) and first.labels.tolist() == [0, 0, 0, 1, 1]
    calls = []

    def no_decode(*a: object, **k: object) -> np.ndarray:
        calls.append(a)
        raise AssertionError("decoded again")

    monkeypatch.setattr(folders_mod, "_decode_image", no_decode)
    with pytest.warns(UserWarning, match="skipped 1"):
        second = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", size=(16, 16))
    assert not calls and torch.equal(second.images, first.images) and second.labels.tolist() == [0, 0, 0, 1, 1]
    # a changed file (new mtime) or another size invalidates the cache
    f = tmp_path / "imgs" / "cat" / "cat_0000.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataFormatError, match="none of the"), pytest.warns(UserWarning, match="decoded again"):
        load_dataset(f"imagefolder:{tmp_path / 'imgs'}", size=(16, 16))
    assert calls


def test_imagefolder_flat_splits_and_missing(tmp_path: Path) -> None:
    write_tree(tmp_path / "split" / "train", {"a": 2, "b": 1}, (8, 8), ext=".bmp")
    write_tree(tmp_path / "split" / "test", {"a": 1, "b": 1}, (8, 8), ext=".png")
    assert len(load_dataset(f"imagefolder:{tmp_path / 'split'}", "train")) == 3
    te = load_dataset(f"imagefolder:{tmp_path / 'split'}", "test", channels=1, size=(8, 8))
    assert te.images.shape == (2, 1, 8, 8) and te.class_names == ["a", "b"]
    for i in range(3):
        save_img(tmp_path / "flat" / f"{i}.jpeg", np.full((10, 10, 3), 50 * i, np.uint8))
    flat = load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    assert flat.labels is None and flat.images.shape == (3, 3, 32, 32)
    with pytest.raises(DataNotFoundError, match="imagefolder:DIR"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")


# --- OpenOOD image lists ------------------------------------------------------------------------

def test_openood_imglist(tmp_path: Path) -> None:
    data = tmp_path / "openood"
    imgs = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        save_img(data / "images_classic" / "svhn" / "test" / f"{i:04d}.png", im)
    lst = data / "benchmark_imglist" / "cifar10" / "test_svhn.txt"
    lst.parent.mkdir(parents=True)
    lst.write_text("".join(f"svhn/test/{i:04d}.png -1\n" for i in range(4)))
    ds = load_dataset(f"imglist:{lst}")
    np.testing.assert_array_equal(hwc(ds.images), imgs)
    assert ds.labels is None and ds.name == "test_svhn"
    labelled = tmp_path / "elsewhere" / "test_cifar10.txt"
    labelled.parent.mkdir()
    labelled.write_text("svhn/test/0000.png 3\nsvhn/test/0002.png 7\n\nsvhn/test/missing.png 1\n")
    with pytest.warns(UserWarning, match="1 listed image"):
        ds2 = load_dataset(f"imglist:{labelled}@{data / 'images_classic'}")
    assert ds2.labels.tolist() == [3, 7]
    np.testing.assert_array_equal(hwc(ds2.images), imgs[[0, 2]])
    with pytest.warns(UserWarning):
        assert len(load_dataset(f"imglist:{labelled}", root=data)) == 2  # --data-root DATA → images_classic
    with pytest.raises(DataNotFoundError, match="IMAGEROOT"):
        load_dataset(f"imglist:{labelled}")
    (tmp_path / "bad.txt").write_text("a.png notalabel\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:1"):
        load_dataset(f"imglist:{tmp_path / 'bad.txt'}")


# --- registry and missing data ------------------------------------------------------------------

@pytest.mark.parametrize(("name", "url"), [
    ("cifar10", "cifar-10-binary.tar.gz"), ("cifar100", "cifar-100-binary.tar.gz"),
    ("svhn", "test_32x32.mat"), ("dtd", "dtd-r1.0.1.tar.gz"), ("tin", "tiny-imagenet-200.zip"),
    ("places365", "val_256.tar"),
])
def test_missing_data_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, url: str) -> None:
    assert name in DATASETS
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset(name, "test", root=tmp_path / "empty", download=False)
    msg = str(ei.value)
    for part in ("not found", "Searched", str(tmp_path / "empty"), "--data-root", "L2OOD_DATA", url,
                 "Download disabled"):
        assert part in msg

    import pooch

    def no_network(*a: object, **k: object) -> None:
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(pooch, "retrieve", no_network)
    with pytest.raises(DataNotFoundError, match="network unreachable"):
        load_dataset(name, "test", root=tmp_path / "empty")


# --- the CIFAR-10 JPEG copy in the data folder $L2OOD_DATA (docs/RESULTS-cifar10.md, "Data layout") -------

# read when the module is collected: the autouse fixture in conftest.py removes L2OOD_DATA during every test
DATA_FOLDER = os.environ.get("L2OOD_DATA")


def test_shared_cifar10_jpeg_tree_when_present(tmp_path: Path) -> None:
    if not DATA_FOLDER:
        pytest.skip("L2OOD_DATA is not set (the data folder holding cifar10-jpeg/test/<class>/*.jpg)")
    test_dir = Path(DATA_FOLDER) / "cifar10-jpeg" / "test"
    if not (test_dir / "airplane").is_dir():
        pytest.skip(f"no CIFAR-10 JPEG tree in L2OOD_DATA: {test_dir / 'airplane'} is not a folder")
    sub = tmp_path / "two"
    sub.mkdir()
    for c in ("airplane", "automobile"):
        (sub / c).symlink_to(test_dir / c, target_is_directory=True)
    ds = load_dataset(f"imagefolder:{sub}")
    n0 = len([p for p in (test_dir / "airplane").iterdir() if p.suffix == ".jpg"])
    assert ds.images.shape[1:] == (3, 32, 32) and ds.class_names == ["airplane", "automobile"]
    assert ds.labels.tolist()[:n0] == [0] * n0 and set(ds.labels.tolist()[n0:]) == {1}
    first = sorted((test_dir / "airplane").glob("*.jpg"))[0]
    np.testing.assert_array_equal(hwc(ds.images[:1])[0], np.asarray(Image.open(first).convert("RGB")))
    few = load_image_folder(test_dir, per_class_limit=3)
    assert len(few) == 30 and few.class_names == list(CIFAR10_CLASSES)
    assert torch.bincount(few.labels).tolist() == [3] * 10
