"""Readers of the CIFAR-scale OoD benchmark's official formats, on generated files in the official layouts.

CIFAR python/binary tarballs and folders, SVHN .mat, DTD / Tiny-ImageNet / Places-like image trees,
OpenOOD image lists, the decoded-image cache, and the non-executing pickle reader (malicious pickles
are refused and nothing runs). Nothing here calls pickle.load/loads.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
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
from l2ood.data.safepickle import safe_load

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG = np.random.default_rng(0)


# --- writers for the official layouts -----------------------------------------------------------

def cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC uint8 images → CIFAR rows: the 1024 red, then green, then blue bytes, each plane row-major."""
    return np.concatenate([images[..., c].reshape(len(images), -1) for c in range(3)], axis=1)


def py2_pickle(obj: object) -> bytes:
    """Protocol 2 as Python 2's cPickle + numpy 1.x wrote the CIFAR files: py2 str (SHORT_BINSTRING /
    BINSTRING) keys and values, numpy.core.multiarray._reconstruct + BUILD, BINPUT/BINGET memo."""
    out = bytearray(b"\x80\x02")
    memo: dict[str, int] = {}

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def glob(name: str) -> None:
        if name in memo:
            out.extend(b"h" + bytes([memo[name]]))
        else:
            memo[name] = len(memo) + 1
            out.extend(b"c" + name.encode() + b"\nq" + bytes([memo[name]]))

    def w(o: object) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                w(v)
            out.extend(b"e")
        elif isinstance(o, str):
            string(o.encode("latin-1"))
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):
            glob("numpy.core.multiarray\n_reconstruct")
            glob("numpy\nndarray")
            out.extend(b"K\x00\x85")
            string(b"b")
            out.extend(b"\x87R(K\x01(")
            for d in o.shape:
                w(int(d))
            out.extend(b"t")
            glob("numpy\ndtype")
            string(o.dtype.str[1:].encode())
            out.extend(b"K\x00K\x01\x87R(K\x03")
            string(o.dtype.str[:1].encode())
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    pickletools.dis(bytes(out), out=io.StringIO())  # well-formed (checked without executing)
    return bytes(out)


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


def write_cifar10_python_tar(path: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]],
                             bytes_keys: bool = False) -> None:
    def key(s: str) -> str | bytes:
        return s.encode() if bytes_keys else s

    def val(s: str) -> str | bytes:
        return s.encode() if bytes_keys else s

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        meta = {key("num_cases_per_batch"): 10000, key("label_names"): [val(c) for c in CIFAR10_CLASSES],
                key("num_vis"): 3072}
        add_bytes(tf, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        add_bytes(tf, "cifar-10-batches-py/readme.html", b"<html></html>")
        for m, (x, y) in batches.items():
            d = {key("batch_label"): val(f"batch {m}"), key("labels"): [int(v) for v in y],
                 key("data"): cifar_rows(x), key("filenames"): [val(f"img_{i}.png") for i in range(len(x))]}
            add_bytes(tf, f"cifar-10-batches-py/{m}", pickle.dumps(d, protocol=2))


def hwc(ds_images: torch.Tensor) -> np.ndarray:
    return ds_images.permute(0, 2, 3, 1).numpy()


def save_img(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# --- safepickle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_safe_load_numpy_and_plain_values(protocol: int) -> None:
    obj = {
        "u8": RNG.integers(0, 256, (3, 4), dtype=np.uint8),
        "i8": np.arange(-5, 5, dtype=np.int64),
        "i4": np.arange(6, dtype=np.int32).reshape(2, 3),
        "f4be": np.linspace(0, 1, 5).astype(">f4"),
        "f8": np.asfortranarray(RNG.normal(size=(3, 2))),
        "empty": np.zeros((0, 3), np.uint8),
        "labels": [0, 1, 255, 256, 70000, -3, 2**40],
        "text": ["a", "ü", ""], "raw": b"\x00\xff", "t": (1, (2, 3), None, True, False),
        b"bkey": 1.5,
    }
    got = safe_load(pickle.dumps(obj, protocol=protocol))
    assert isinstance(got, dict) and set(got) == set(obj)
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape
            np.testing.assert_array_equal(got[k], v)
        else:
            assert got[k] == v


def test_safe_load_python2_style_file(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (300, 3072), dtype=np.uint8)  # 921 600 bytes: a BINSTRING
    (tmp_path / "b").write_bytes(py2_pickle({"data": x, "labels": [1, 2, 3], "batch_label": "training batch 1"}))
    got = safe_load(tmp_path / "b")
    assert isinstance(got, dict) and got["labels"] == [1, 2, 3] and got["batch_label"] == "training batch 1"
    np.testing.assert_array_equal(got["data"], x)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()".encode()
    cases = {
        "reduce-os-system-p2": pickle.dumps({"data": _Evil(marker)}, protocol=2),
        "reduce-os-system-p4": pickle.dumps([_Evil(marker)], protocol=4),  # STACK_GLOBAL
        "builtins-eval": b"\x80\x02cbuiltins\neval\nX" + struct.pack("<I", len(payload)) + payload + b"\x85R.",
        "inst": b"(X" + struct.pack("<I", len(str(marker)) + 6) + b"touch " + str(marker).encode()
        + b"ios\nsystem\n.",
        "dtype-object": b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.",
        "codecs-other": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
        "reduce-on-ndarray-class": b"\x80\x02cnumpy\nndarray\n)R.",
        "unfinished": b"\x80\x02cnumpy\nndarray\n.",
        "truncated": pickle.dumps({"a": [1, 2, 3]}, protocol=2)[:-4],
        "not-a-pickle": b"hello world",
    }
    for name, data in cases.items():
        with pytest.raises(DataFormatError) as ei:
            safe_load(data, source=name)
        assert name in str(ei.value)
    for name, msg in [("reduce-os-system-p2", "'posix system'"), ("reduce-os-system-p4", "'posix system'"),
                      ("builtins-eval", "'builtins eval'"), ("inst", "INST"), ("dtype-object", "'O8'")]:
        with pytest.raises(DataFormatError, match=msg):
            safe_load(cases[name])
    # the same payload inside an official-looking CIFAR tarball
    root = tmp_path / "root"
    write_cifar10_python_tar(root / "cifar10" / "cifar-10-python.tar.gz", make_cifar10(2))
    evil_tar = root / "evil" / "cifar-10-python.tar.gz"
    evil_tar.parent.mkdir()
    with tarfile.open(evil_tar, "w:gz") as tf:
        add_bytes(tf, "cifar-10-batches-py/test_batch", cases["reduce-os-system-p2"])
    with pytest.raises(DataFormatError, match="posix system"):
        load_dataset("cifar10", "test", root=root / "evil", download=False)
    assert not marker.exists()


# --- CIFAR --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_python_tarball(tmp_path: Path, bytes_keys: bool) -> None:
    batches = make_cifar10()
    write_cifar10_python_tar(tmp_path / "cifar10" / "cifar-10-python.tar.gz", batches, bytes_keys=bytes_keys)
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    x, y = batches["test_batch"]
    assert test.images.shape == (len(x), 3, 32, 32) and test.images.dtype == torch.uint8
    np.testing.assert_array_equal(hwc(test.images), x)  # planes → channels, rows → HW
    assert test.labels.tolist() == y.tolist()
    assert test.class_names == list(CIFAR10_CLASSES) and test.hflip
    assert test.meta["format"] == "cifar-python"
    train = load_dataset("cifar10", "train", root=tmp_path, download=False)
    xs = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    np.testing.assert_array_equal(hwc(train.images), xs)
    assert train.labels.tolist() == np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)]).tolist()


def test_cifar10_extracted_folder_and_binary(tmp_path: Path) -> None:
    batches = make_cifar10(4)
    tar = tmp_path / "a" / "cifar-10-python.tar.gz"
    write_cifar10_python_tar(tar, batches)
    with tarfile.open(tar) as tf:
        for m in tf:
            (tmp_path / "a" / m.name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "a" / m.name).write_bytes(tf.extractfile(m).read())  # type: ignore[union-attr]
    tar.unlink()
    ds = load_dataset("cifar10", "test", root=tmp_path / "a" / "cifar-10-batches-py", download=False)
    np.testing.assert_array_equal(hwc(ds.images), batches["test_batch"][0])
    # binary version: 1 label byte + 3072 pixel bytes per record, as a tarball and as a folder
    binroot = tmp_path / "b"
    binroot.mkdir()
    with tarfile.open(binroot / "cifar-10-binary.tar.gz", "w:gz") as tf:
        for m, (x, y) in batches.items():
            rec = np.concatenate([y.astype(np.uint8)[:, None], cifar_rows(x)], axis=1)
            add_bytes(tf, f"cifar-10-batches-bin/{m}.bin", rec.tobytes())
        add_bytes(tf, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(CIFAR10_CLASSES) + "\n\n").encode())
    for split, members in (("test", ["test_batch"]), ("train", [f"data_batch_{k}" for k in range(1, 6)])):
        ds = load_dataset("cifar10", split, root=binroot, download=False)
        np.testing.assert_array_equal(hwc(ds.images), np.concatenate([batches[m][0] for m in members]))
        assert ds.labels.tolist() == np.concatenate([batches[m][1] for m in members]).tolist()
        assert ds.meta["format"] == "cifar-binary" and ds.class_names == list(CIFAR10_CLASSES)


def test_cifar100_python_folder_py2_and_binary(tmp_path: Path) -> None:
    fine_names = [f"class_{i:02d}" for i in range(100)]
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    data = {}
    for split, n in (("train", 12), ("test", 7)):
        x, fine, coarse = (RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), RNG.integers(0, 100, n),
                           RNG.integers(0, 20, n))
        data[split] = (x, fine, coarse)
        d = {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": f"{split} batch 1 of 1",
             "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) for v in coarse],
             "data": cifar_rows(x)}
        (folder / split).write_bytes(py2_pickle(d))  # as the official (Python 2) files
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": fine_names,
                                              "coarse_label_names": [f"super_{i}" for i in range(20)]}))
    for split in ("train", "test"):
        ds = load_dataset("cifar100", split, root=tmp_path, download=False)
        np.testing.assert_array_equal(hwc(ds.images), data[split][0])
        assert ds.labels.tolist() == data[split][1].tolist() and ds.class_names == fine_names
    # binary: 2 label bytes (coarse, fine) + 3072
    b = tmp_path / "bin" / "cifar-100-binary"
    b.mkdir(parents=True)
    x, fine, coarse = data["test"]
    rec = np.concatenate([coarse.astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None], cifar_rows(x)], 1)
    (b / "test.bin").write_bytes(rec.tobytes())
    (b / "fine_label_names.txt").write_text("\n".join(fine_names) + "\n")
    ds = load_dataset("cifar100", "test", root=tmp_path / "bin", download=False)
    np.testing.assert_array_equal(hwc(ds.images), x)
    assert ds.labels.tolist() == fine.tolist() and ds.class_names == fine_names


def test_cifar_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for m in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        (folder / m).write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, protocol=2))
    with pytest.raises(DataFormatError, match=r"uint8 \(N, 3072\)"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    with pytest.raises(DataFormatError, match="labels"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_cifar_download_uses_official_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pooch

    calls: list[tuple[str, str]] = []
    batches = make_cifar10(2)

    def fake_retrieve(url: str, known_hash: str, fname: str, path: Path, downloader: object) -> str:
        calls.append((url, known_hash))
        write_cifar10_python_tar(Path(path) / fname, batches)
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    ds = load_dataset("cifar10", "test", root=tmp_path / "empty")
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "md5:c58f30108f718f92721af3b95e74349a")]
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
    ("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
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


# --- the shared CIFAR-10 JPEG copy --------------------------------------------------------------

def test_shared_cifar10_jpeg_tree_when_present(tmp_path: Path) -> None:
    test_dir = SHARED / "cifar10-jpeg" / "test"
    if not test_dir.is_dir():
        test_dir = Path("/work/shared/data/cifar10-jpeg/test")
    if not (test_dir / "airplane").is_dir():
        pytest.skip("shared CIFAR-10 JPEG tree not present")
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
