"""Hostile data (issue 24): tar shards with absurd header integers and labels, symbolic link loops in image
folders. Each must end in a clear error (DataError; exit 2 from the CLI) or a skipped member with a warning —
never a traceback, never a hang. The hostile files are generated here, byte by byte."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from l2ood.cli import main
from l2ood.data import DataError, DataFormatError
from l2ood.data.folders import scan_image_folder
from l2ood.data.preprocess import ImageReadError
from l2ood.data.stream import index_tar, open_stream

BLOCK = 512


# ------------------------------------------------------------------------------------------------ tar bytes

def png_bytes(value: int = 0, size: int = 8) -> bytes:
    """A small gray PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def octal(v: int, width: int = 12) -> bytes:
    """A tar numeric field in octal (NUL-terminated)."""
    return b"%0*o\x00" % (width - 1, v)


def base256(v: int, width: int = 12) -> bytes:
    """A tar numeric field in GNU base-256 (any integer, negative ones included, as tarfile reads them)."""
    n = v % (1 << (8 * width - 8))
    return bytes([0xFF if v < 0 else 0x80]) + n.to_bytes(width - 1, "big")


def header(name: str, size: bytes | int, typ: bytes = b"0", checksum_ok: bool = True) -> bytes:
    """One ustar header block with a raw ``size`` field (bytes) or an honest size (int)."""
    h = bytearray(BLOCK)
    raw = name.encode()
    h[0:len(raw)] = raw
    h[100:108] = b"0000644\x00"
    h[108:116] = h[116:124] = b"0000000\x00"
    h[124:136] = octal(size) if isinstance(size, int) else size
    h[136:148] = octal(0)
    h[156:157] = typ
    h[257:263], h[263:265] = b"ustar\x00", b"00"
    h[148:156] = b" " * 8
    chk = sum(h) + (0 if checksum_ok else 7)
    h[148:156] = b"%06o\x00 " % chk
    return bytes(h)


def member(name: str, data: bytes, size: bytes | int | None = None) -> bytes:
    """A header (honest size unless ``size`` is given) followed by ``data`` padded to whole blocks."""
    return header(name, len(data) if size is None else size) + data + bytes(-len(data) % BLOCK)


END = bytes(2 * BLOCK)


def hostile_shards() -> dict[str, tuple[bytes, str]]:
    """Shard bytes by case name → ``(bytes, expected)`` with expected ``"error"`` (a DataError) or ``"skip"``
    (the good sample ``good`` with label 1 kept, the bad member left out with a warning)."""
    good = member("good.png", png_bytes()) + member("good.cls", b"1")
    png = png_bytes(9)
    cases = {
        "member size past end of file": (good + member("bad.png", png, size=octal(0o77777777777)) + END, "skip"),
        "member size beyond any file (base-256 10**25)": (good + member("bad.png", png, size=base256(10**25)) + END,
                                                          "skip"),
        "negative member size (base-256 -512)": (good + member("bad.png", png, size=base256(-512)) + END, "error"),
        "negative .cls member size": (good + member("x.png", png) + member("x.cls", b"3", size=base256(-5)) + END,
                                      "error"),
        "label 10**30": (good + member("x.png", png) + member("x.cls", str(10**30).encode()) + END, "error"),
        "label -5": (good + member("x.png", png) + member("x.cls", b"-5") + END, "error"),
        "label abc": (good + member("x.png", png) + member("x.cls", b"abc") + END, "error"),
        "label of 100 bytes": (good + member("x.png", png) + member("x.cls", b"1" * 100) + END, "error"),
        "label not ASCII": (good + member("x.png", png) + member("x.cls", "٣".encode()) + END, "error"),
        "corrupt header after the first": (good + header("bad.png", len(png), checksum_ok=False) + png + END, "skip"),
        "truncated in the middle of a header": (good + header("bad.png", len(png))[:300], "skip"),
        "sparse member": (good + header("bad.png", 0, typ=b"S") + END, "skip"),
        "first header corrupt": (header("bad.png", len(png), checksum_ok=False) + png + END, "error"),
    }
    return cases


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a thread: its result, or its exception re-raised; fails the test if it takes longer."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------------------------------------------ tar shards

@pytest.mark.parametrize("case", list(hostile_shards()))
def test_hostile_tar_headers_and_labels(tmp_path: Path, case: str) -> None:
    data, expected = hostile_shards()[case]
    shard = tmp_path / "one" / "s.tar"
    shard.parent.mkdir()
    shard.write_bytes(data)
    if expected == "error":
        with pytest.raises(DataFormatError) as e:
            within(20, lambda: index_tar(shard))
        assert str(shard) in str(e.value)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys, offs, sizes, labels = within(20, lambda: index_tar(shard))
    assert keys == ["good"] and labels == [1]  # the good sample before the bad member is kept
    assert offs[0] + sizes[0] <= len(data) and sizes[0] == len(png_bytes())
    assert any(str(shard) in str(w.message) and "1 sample(s) indexed" in str(w.message) for w in caught)


def test_labels_in_range_and_unlabelled_marker(tmp_path: Path) -> None:
    png = png_bytes()
    shard = tmp_path / "s" / "a.tar"
    shard.parent.mkdir()
    shard.write_bytes(member("a.png", png) + member("a.cls", b" 999999\n") + member("b.png", png)
                      + member("b.cls", b"-1") + END)
    keys, _, _, labels = index_tar(shard)
    assert keys == ["a", "b"] and labels == [999_999, -1]
    with pytest.warns(UserWarning, match="read unlabelled"):
        ds = open_stream(f"wds:{shard.parent}", "train")
    assert ds.labels is None and len(ds) == 2


def test_skipped_members_leave_a_readable_set(tmp_path: Path) -> None:
    """A shard whose second image claims more bytes than the file holds: the set has the first image only, and it
    decodes."""
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.tar").write_bytes(member("a.png", png_bytes(7)) + member("a.cls", b"0")
                                   + member("b.png", png_bytes(), size=octal(10**9)) + END)
    with pytest.warns(UserWarning, match="past the end"):
        ds = open_stream(f"wds:{folder}", "train", size=(8, 8))
    assert len(ds) == 1 and ds.labels is not None and ds.labels.tolist() == [0]
    assert ds.read(0) == png_bytes(7)


def test_corrupt_index_entries_never_read_past_their_member(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.tar").write_bytes(member("a.png", png_bytes()) + END)
    ds = open_stream(f"wds:{folder}", "train")
    ds.sizes[0] = -1  # an index made by hand (or an older version): a negative size would read the whole file
    with pytest.raises(ImageReadError, match="corrupt index"):
        ds.read(0)
    ds.sizes[0] = 10**9
    with pytest.raises(ImageReadError):
        ds.read(0)


def test_shard_paths_never_block_or_explode(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    os.mkfifo(tmp_path / "shards" / "train-000.tar")  # opening a FIFO for reading blocks until a writer comes
    with pytest.raises(DataError, match="no tar shards"):
        within(20, lambda: open_stream(f"wds:{tmp_path / 'shards'}/train-{{000..001}}.tar", "train"))
    with pytest.raises(DataError, match="no tar shards"):
        within(20, lambda: open_stream(f"wds:{tmp_path / 'shards'}/train-000.tar", "train"))
    with pytest.raises(DataFormatError, match="more than"):
        within(20, lambda: open_stream(f"wds:{tmp_path}/s-{{0..99999999999999}}.tar", "train"))
    with pytest.raises(DataFormatError, match="18 digits"):
        within(20, lambda: open_stream(f"wds:{tmp_path}/s-{{0..{'9' * 5000}}}.tar", "train"))


def test_classes_file_that_is_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.tar").write_bytes(member("a.png", png_bytes()) + member("a.cls", b"0") + END)
    (folder / "classes.txt").write_bytes(b"cat\n\xff\xfe\n")
    with pytest.raises(DataFormatError, match="not UTF-8"):
        open_stream(f"wds:{folder}", "train")


def test_cli_train_on_hostile_shards_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for case in ("label 10**30", "negative member size (base-256 -512)", "label abc"):
        folder = tmp_path / case.replace(" ", "_").replace("*", "")
        folder.mkdir()
        (folder / "train-0.tar").write_bytes(hostile_shards()[case][0])
        rc = main(["train", "--dataset", f"wds:{folder}", "--data-path", "stream", "--epochs", "1", "--width", "2",
                   "--holdout", "1", "--out", str(tmp_path / "run"), "--no-progress", "--workers", "0"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err and "error:" in err and "train-0.tar" in err


# ------------------------------------------------------------------------------------------------ symlink loops

def _class_folders(root: Path, classes: int = 2, per_class: int = 3) -> None:
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), 40 * c + i, np.uint8)).save(d / f"{i}.png")


def test_class_folder_linking_back_to_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _class_folders(root)
    (root / "c9").symlink_to(root, target_is_directory=True)
    with pytest.raises(DataFormatError, match="symbolic link loop") as e:
        within(20, lambda: scan_image_folder(root))
    assert "c9" in str(e.value)


def test_loop_deep_inside_a_class_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _class_folders(root)
    (root / "c1" / "sub").mkdir()
    (root / "c1" / "sub" / "up").symlink_to("..", target_is_directory=True)
    with pytest.raises(DataFormatError, match="symbolic link loop") as e:
        within(20, lambda: scan_image_folder(root))
    assert str(root / "c1" / "sub" / "up") in str(e.value)


def test_links_to_one_folder_twice_are_read_once_and_never_explode(tmp_path: Path) -> None:
    """25 levels of a diamond (two links to the next level at each) name 2**25 paths without any loop; each folder
    is read once, with a warning."""
    root = tmp_path / "data"
    _class_folders(root, classes=1)
    levels = [root / "c0" / "d0"]
    levels[0].mkdir()
    for k in range(1, 26):
        nxt = tmp_path / "deep" / f"d{k}"
        nxt.mkdir(parents=True)
        (levels[-1] / "a").symlink_to(nxt, target_is_directory=True)
        (levels[-1] / "b").symlink_to(nxt, target_is_directory=True)
        levels.append(nxt)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(levels[-1] / "bottom.png")
    with pytest.warns(UserWarning, match="read once"):
        files, labels, names = within(20, lambda: scan_image_folder(root))
    assert names == ["c0"] and labels == [0] * 4
    assert sum(f.name == "bottom.png" for f in files) == 1


def test_cli_train_on_a_looping_folder_exits_2(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _class_folders(root)
    (root / "c0" / "again").symlink_to(root, target_is_directory=True)
    env = {**os.environ, "L2OOD_CACHE": str(tmp_path / "cache"), "L2OOD_LOG_DIR": str(tmp_path / "logs")}
    p = subprocess.run([sys.executable, "-m", "l2ood", "train", "--dataset", f"imagefolder:{root}", "--epochs", "1",
                        "--width", "2", "--holdout", "1", "--out", str(tmp_path / "run"), "--no-progress"],
                       capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 2, p.stderr
    assert "symbolic link loop" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "model.json").exists()


def test_tarfile_module_agrees_on_honest_shards(tmp_path: Path) -> None:
    """The hand-made headers are real tar: an honest shard built with them reads the same through tarfile."""
    shard = tmp_path / "a.tar"
    shard.write_bytes(member("k.png", png_bytes()) + member("k.cls", b"4") + END)
    with tarfile.open(shard) as tf:
        assert [m.name for m in tf] == ["k.png", "k.cls"]
    assert index_tar(shard)[0] == ["k"] and index_tar(shard)[3] == [4]
