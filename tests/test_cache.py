"""The cache folder: a size cap on decoded images (least recently used out), `l2ood cache info|clear`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2ood.cli.main import main
from l2ood.data import load_dataset
from l2ood.data.cache import decoded_cap_bytes, decoded_dir, enforce_cap, entries
from l2ood.errors import ConfigError


def _file(path: Path, size: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_enforce_cap_deletes_least_recently_used_first(tmp_path: Path) -> None:
    d = tmp_path / "decoded"
    a = _file(d / "a.npz", 400, 1000)  # oldest
    b = _file(d / "b.npz", 400, 2000)
    c = _file(d / "c.npz", 400, 3000)
    new = _file(d / "new.npz", 400, 500)  # just written (older mtime on purpose): kept anyway
    other = _file(d / "notes.txt", 10_000, 1)  # not a cache file: never touched
    gone = enforce_cap(d, cap=900, keep=new)
    assert gone == [a, b]
    assert sorted(p.name for p in d.iterdir()) == ["c.npz", "new.npz", "notes.txt"] and other.exists()
    assert enforce_cap(d, cap=10_000) == []  # under the cap: nothing goes
    assert enforce_cap(d, cap=0, keep=new) == [c, new]  # a cap of 0 empties it, the kept file last


def test_cap_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L2OOD_DECODED_CACHE_GB", raising=False)
    assert decoded_cap_bytes() == 20 * 2**30
    monkeypatch.setenv("L2OOD_DECODED_CACHE_GB", "0.5")
    assert decoded_cap_bytes() == 2**29
    for bad in ("lots", "-1"):
        monkeypatch.setenv("L2OOD_DECODED_CACHE_GB", bad)
        with pytest.raises(ConfigError, match="L2OOD_DECODED_CACHE_GB"):
            decoded_cap_bytes()


def _folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for k in range(n):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"c{k % 2}" / f"{k}.png")
    return root


def test_decoded_cache_is_capped_and_hits_refresh_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = _folder(tmp_path / "one", 6, 0), _folder(tmp_path / "two", 6, 1)
    load_dataset(f"imagefolder:{one}", size=(16, 16))
    (f1,) = decoded_dir().glob("*.npz")
    os.utime(f1, (1, 1))  # long unused
    load_dataset(f"imagefolder:{one}", size=(16, 16))  # a hit marks it used now
    assert f1.stat().st_mtime > 1
    os.utime(f1, (1, 1))
    # a cap that holds one decoded folder: writing the second evicts the least recently used first one
    monkeypatch.setenv("L2OOD_DECODED_CACHE_GB", str(1.5 * f1.stat().st_size / 2**30))
    load_dataset(f"imagefolder:{two}", size=(16, 16))
    files = list(decoded_dir().glob("*.npz"))
    assert len(files) == 1 and files[0] != f1
    # cap 0: no cache at all
    monkeypatch.setenv("L2OOD_DECODED_CACHE_GB", "0")
    for p in files:
        p.unlink()
    ds = load_dataset(f"imagefolder:{one}", size=(16, 16))
    assert len(ds) == 6 and list(decoded_dir().glob("*.npz")) == []


def test_cache_info_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(os.environ["L2OOD_CACHE"])
    _file(root / "decoded" / "x.npz", 3 << 20, 1)
    _file(root / "logs" / "crash.log", 100, 1)
    _file(root / "mnist" / "train-images-idx3-ubyte.gz", 2048, 1)
    assert [(e.kind, e.files) for e in entries(root)] == [("decoded", 1), ("logs", 1), ("downloads", 1)]
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"cache folder: {root}" in out and "3.0 MiB" in out and "downloads" in out
    assert "total" in out and "3 files" in out
    assert main(["cache", "clear"]) == 0  # default: the decoded images only
    assert not (root / "decoded").exists() and (root / "logs").exists() and (root / "mnist").exists()
    assert "freed 3.0 MiB" in capsys.readouterr().out
    assert main(["cache", "clear", "all"]) == 0
    assert list(root.iterdir()) == []
    assert main(["cache", "clear", "bogus"]) == 2
    assert "unknown cache part" in capsys.readouterr().err
