"""The decode budget: images within the pixel limit whose decoding would cost minutes of CPU are refused with a
clear reason (by ``decode_image``, ``l2ood screen`` and the service), never decoded at length, never judged.

The generators below (``SLOW_IMAGES``) build each kind of slow image; benchmarks/_rel_service.py uses them too.
Each is small to build; with ``scale="bomb"`` they are the sizes an attacker would send (minutes of decoding
without the budget), with ``scale="test"`` just over the limits.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from l2ood.data import preprocess
from l2ood.data.preprocess import (
    MAX_BMP_RLE_BYTES,
    MAX_GIF_BLOCKS,
    MAX_JPEG_MARKERS,
    MAX_JPEG_SCANS,
    MAX_PNG_CHUNKS,
    MAX_TIFF_STRIPS,
    MAX_TIFF_TAG_VALUES,
    DecodeBudgetError,
    ImageReadError,
    check_decode_work,
    decode_image,
)

# ------------------------------------------------------------------------------------------------ generators


def _jpeg(size: tuple[int, int], progressive: bool = True) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, "JPEG", progressive=progressive, quality=90)
    return buf.getvalue()


def _scans(d: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan (SOS segment and its entropy-coded data) of a JPEG written by Pillow."""
    out, i = [], 2
    while i < len(d) and d[i + 1] != 0xD9:
        length = int.from_bytes(d[i + 2 : i + 4], "big")
        end = i + 2 + length
        if d[i + 1] == 0xDA:
            nxt = preprocess._JPEG_SCAN_END.search(d, end)
            end = nxt.start() if nxt else len(d)
            out.append((i, end))
        i = end
    return out


def jpeg_many_scans(n_scans: int, size: tuple[int, int]) -> bytes:
    """A progressive JPEG whose last scan is repeated: each repeat is ~14 bytes but makes libjpeg walk every
    8×8 block again (about 3 ms per scan for 4 megapixels here; 10 000 scans of 36 megapixels: hours)."""
    d = _jpeg(size)
    start, end = _scans(d)[-1]
    return d[:end] + d[start:end] * n_scans + d[end:]


def jpeg_many_markers(n: int) -> bytes:
    """A small JPEG preceded by ``n`` empty COM segments (4 bytes each, parsed one by one in Python)."""
    d = _jpeg((64, 64), progressive=False)
    return d[:2] + b"\xff\xfe\x00\x02" * n + d[2:]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_many_chunks(n: int) -> bytes:
    """A 100×100 PNG whose pixel data is cut into ``n`` IDAT chunks (a few bytes or none each; ~4 µs each in
    Pillow)."""
    rows = np.random.default_rng(0).integers(0, 256, (100, 101), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none"
    raw = zlib.compress(rows.tobytes(), 0)
    cuts = np.linspace(0, len(raw), min(n, len(raw)) + 1).astype(int)
    idat = b"".join(_chunk(b"IDAT", raw[a:b]) for a, b in itertools.pairwise(cuts))
    pad = _chunk(b"IDAT", b"") * (n - (len(cuts) - 1))  # empty IDAT chunks: Pillow still reads each
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 100, 100, 8, 0, 0, 0, 0))
            + idat + pad + _chunk(b"IEND", b""))


def apng_many_frames(n: int) -> bytes:
    """An APNG with ``n`` frames (only the first is decoded)."""
    frames = [Image.new("L", (32, 32), i % 256) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], duration=10)
    return buf.getvalue()


def gif_many_blocks(n: int) -> bytes:
    """A 64×64 GIF with ``n`` empty comment extensions before its first frame (3 bytes each, read one by one)."""
    buf = io.BytesIO()
    Image.new("P", (64, 64), 1).save(buf, "GIF")
    d = buf.getvalue()
    head = 13 + (3 << ((d[10] & 7) + 1) if d[10] & 0x80 else 0)
    return d[:head] + b"\x21\xfe\x00" * n + d[head:]


def gif_many_frames(n: int) -> bytes:
    frames = [Image.new("P", (48, 48), i % 2) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def webp_many_frames(n: int) -> bytes:
    frames = [Image.new("RGB", (64, 64), (i % 256, 0, 0)) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    return buf.getvalue()


def tiff_many_strips(rows: int) -> bytes:
    """An uncompressed 8-bit 1×``rows`` TIFF with one row (one byte) per strip: Pillow makes one tile per strip
    in Python (~6 µs each)."""
    entries = [(256, 4, 1, 1), (257, 4, 1, rows), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, rows, 8 + rows), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, rows, 8 + 5 * rows)]
    ifd = 8 + 9 * rows
    head = b"II*\x00" + struct.pack("<I", ifd)
    offsets = (8 + np.arange(rows, dtype="<u4")).tobytes()
    counts = np.ones(rows, dtype="<u4").tobytes()
    table = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + bytes(4)
    return head + bytes([7]) * rows + offsets + counts + table


def tiff_many_tag_values(n: int) -> bytes:
    """A 16×16 TIFF whose SampleFormat tag holds ``n`` numbers: Pillow unpacks them into a tuple when it opens
    the file."""
    buf = io.BytesIO()
    Image.new("L", (16, 16), 9).save(buf, "TIFF")
    d = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", d, 4)[0]
    k = struct.unpack_from("<H", d, ifd)[0]
    entries = [bytes(d[ifd + 2 + 12 * i : ifd + 14 + 12 * i]) for i in range(k)]
    values_at = len(d)
    d += bytes(2 * n)
    new_ifd = len(d)
    entries.append(struct.pack("<HHII", 339, 3, n, values_at))  # SampleFormat: SHORT × n
    entries.sort(key=lambda e: struct.unpack_from("<H", e)[0])
    d += struct.pack("<H", k + 1) + b"".join(entries) + bytes(4)
    struct.pack_into("<I", d, 4, new_ifd)
    return bytes(d)


def bmp_rle(n_bytes: int, width: int = 4000) -> bytes:
    """An RLE8 BMP of 1-pixel runs (2 bytes per pixel): Pillow decodes RLE in Python, ~0.2 µs per byte."""
    rows = max(1, n_bytes // (2 * width + 2))
    body = (b"\x01\x07" * width + b"\x00\x00") * rows + b"\x00\x01"
    pal = b"".join(bytes((i, i, i, 0)) for i in range(256))
    off = 14 + 40 + len(pal)
    return (b"BM" + struct.pack("<IHHI", off + len(body), 0, 0, off)
            + struct.pack("<IiiHHIIiiII", 40, width, rows, 1, 8, 1, len(body), 2835, 2835, 256, 0) + pal + body)


#: kind → (builder(scale) → bytes, file suffix, words the refusal names). scale "test": just over the limit;
#: "bomb": what an attacker sends (minutes of decoding without the budget; still within the pixel limit).
SLOW_IMAGES: dict[str, tuple[Callable[[str], bytes], str, str]] = {
    "progressive JPEG, many scans": (
        lambda s: jpeg_many_scans(MAX_JPEG_SCANS + 5, (256, 256)) if s == "test"
        else jpeg_many_scans(20_000, (6000, 6000)), ".jpg", "scans"),
    "JPEG, many markers": (
        lambda s: jpeg_many_markers(MAX_JPEG_MARKERS + 10 if s == "test" else 2_000_000), ".jpg", "markers"),
    "PNG, many tiny IDAT chunks": (
        lambda s: png_many_chunks(MAX_PNG_CHUNKS + 2000 if s == "test" else 2_000_000), ".png", "chunks"),
    "GIF, many blocks before the first frame": (
        lambda s: gif_many_blocks(MAX_GIF_BLOCKS + 10 if s == "test" else 8_000_000), ".gif", "blocks"),
    "TIFF, one-row strips": (
        lambda s: tiff_many_strips(MAX_TIFF_STRIPS + 10 if s == "test" else 3_000_000), ".tif", "strips"),
    "TIFF, a tag of millions of numbers": (
        lambda s: tiff_many_tag_values(MAX_TIFF_TAG_VALUES + 10 if s == "test" else 15_000_000), ".tif", "tags"),
    "BMP, RLE8 of 1-pixel runs": (
        lambda s: bmp_rle(MAX_BMP_RLE_BYTES + 100_000 if s == "test" else 30_000_000), ".bmp", "RLE"),
}

#: multi-frame files: only the first frame is decoded, so these are screened normally (and fast).
MULTI_FRAME: dict[str, tuple[Callable[[], bytes], str]] = {
    "APNG, 3 000 frames": (lambda: apng_many_frames(3000), ".png"),
    "GIF, 3 000 frames": (lambda: gif_many_frames(3000), ".gif"),
    "WebP, 3 000 frames": (lambda: webp_many_frames(3000), ".webp"),
}


# ------------------------------------------------------------------------------------------------ decode_image

@pytest.mark.parametrize("kind", list(SLOW_IMAGES))
def test_slow_images_are_refused_before_decoding(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build, _, word = SLOW_IMAGES[kind]
    data = build("test")
    with pytest.raises(DecodeBudgetError, match=word):
        check_decode_work(data)  # the structure alone: no pixel is decoded

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow was asked to open a refused image")

    monkeypatch.setattr(preprocess.Image, "open", never)
    with pytest.raises(DecodeBudgetError, match="decode budget") as e:
        decode_image(data)
    assert word in str(e.value)


def test_images_within_the_budget_still_decode() -> None:
    base_scans = len(_scans(_jpeg((64, 64))))
    assert decode_image(jpeg_many_scans(MAX_JPEG_SCANS - base_scans, (64, 64))).shape == (64, 64)
    rgb = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", progressive=True, optimize=True, quality=95)
    assert decode_image(buf.getvalue()).shape == (120, 160, 3)
    assert decode_image(jpeg_many_markers(MAX_JPEG_MARKERS - 20)).shape == (64, 64)
    assert decode_image(png_many_chunks(MAX_PNG_CHUNKS - 100)).shape == (100, 100)
    assert decode_image(gif_many_blocks(1000)).shape == (64, 64, 3)
    assert decode_image(tiff_many_strips(2000)).shape == (2000, 1)
    assert decode_image(bmp_rle(200_000, width=100)).shape == (990, 100)
    big = io.BytesIO()
    Image.fromarray(np.zeros((3000, 2500), np.uint8)).save(big, "PNG")  # Pillow writes 64 KiB IDAT chunks
    assert decode_image(big.getvalue()).shape == (3000, 2500)


@pytest.mark.parametrize("kind", list(MULTI_FRAME))
def test_multi_frame_files_decode_their_first_frame(kind: str) -> None:
    build, _ = MULTI_FRAME[kind]
    a = decode_image(build())
    assert a.shape[:2] in ((32, 32), (48, 48), (64, 64))
    assert int(a.reshape(-1, a.shape[-1] if a.ndim == 3 else 1)[:, 0].max()) == 0  # frame 0 is the dark one


def _fake_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> list[int]:
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        return calls[0] * step

    monkeypatch.setattr(preprocess, "_clock", clock)
    return calls


def test_the_deadline_stops_any_decoder_at_its_next_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read the decoder makes checks the deadline (a fake clock: 1 ms per look), so the per-byte RLE loop,
    the per-chunk PNG loop and the per-block GIF loop all stop once the budget is spent."""
    rle = bmp_rle(1_000_000, width=500)  # within every structural limit; ~500 000 reads
    calls = _fake_clock(monkeypatch, 0.001)
    with pytest.raises(DecodeBudgetError, match=r"decoding took longer than 0\.5 s"):
        decode_image(rle, max_decode_s=0.5)
    assert calls[0] < 600  # stopped right after the budget, not after 500 000 reads
    calls[0] = 0
    assert decode_image(rle, max_decode_s=None).shape == (998, 500)  # no limit: decoded in full
    for data in (png_many_chunks(MAX_PNG_CHUNKS - 100), gif_many_blocks(10_000)):
        with pytest.raises(DecodeBudgetError, match=r"took longer than 0\.05 s"):
            decode_image(data, max_decode_s=0.05)
    with pytest.raises(ImageReadError, match="max_decode_s"):
        decode_image(rle, max_decode_s=0)


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX", "SGI"])
def test_only_the_documented_formats_are_opened(fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, fmt)
    with pytest.raises(ImageReadError, match="not a recognized image format"):
        decode_image(buf.getvalue())


# ------------------------------------------------------------------------------------------------ screen, service

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    from l2ood.data import load_dataset
    from l2ood.models import ModelConfig
    from l2ood.train import TrainConfig, train

    run = tmp_path_factory.mktemp("budget") / "run"
    ds = load_dataset("fashion-mnist", "train", root=data_root)
    train(ds.subset(64), ModelConfig(width=2), TrainConfig(epochs=1, device="cpu", precision="fp32"), run,
          progress=False, log=None)
    return run


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slow")
    for i, (build, suffix, _) in enumerate(SLOW_IMAGES.values()):
        (folder / f"slow_{i}{suffix}").write_bytes(build("test"))
    for i, (build_mf, suffix) in enumerate(MULTI_FRAME.values()):
        (folder / f"frames_{i}{suffix}").write_bytes(build_mf())
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(folder / "good.png")
    return folder


def test_screen_gives_each_slow_image_an_error_record(run_dir: Path, slow_folder: Path, tmp_path: Path) -> None:
    from l2ood.cli import main

    out = tmp_path / "s.jsonl"
    rc = main(["screen", str(run_dir), str(slow_folder), "--threshold", "1.0", "--format", "jsonl", "-o", str(out),
               "--no-progress", "--device", "cpu", "--precision", "fp32"])
    recs = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert rc == 1 and len(recs) == len(SLOW_IMAGES) + len(MULTI_FRAME) + 1
    for i, (_, _, word) in enumerate(SLOW_IMAGES.values()):
        rec = next(r for name, r in recs.items() if name.startswith(f"slow_{i}."))
        assert rec["status"] == "error" and rec["verdict"] is None and rec["score"] is None
        assert "decode budget" in rec["error"] and word in rec["error"], rec
    for name, rec in recs.items():
        if not name.startswith("slow_"):
            assert rec["status"] == "ok" and rec["verdict"] in ("in", "out"), rec


def test_service_answers_slow_images_with_422(run_dir: Path, slow_folder: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from l2ood.deploy.service import ServeConfig, create_app
    from l2ood.screen import Screener

    scr = Screener.from_run(run_dir, threshold=1.0, device="cpu", precision="fp32")
    files = sorted(slow_folder.iterdir())
    with TestClient(create_app(scr, ServeConfig())) as c:
        for f in files:
            r = c.post("/v1/screen", content=f.read_bytes(), headers={"x-filename": f.name})
            if f.name.startswith("slow_"):
                assert r.status_code == 422, (f.name, r.text)
                assert "decode budget" in r.json()["error"] and r.json()["verdict"] is None
            else:
                assert r.status_code == 200 and r.json()["status"] == "ok", (f.name, r.text)
        batch = c.post("/v1/screen/batch", files=[("files", (f.name, f.read_bytes(), "application/octet-stream"))
                                                  for f in files])
        assert batch.status_code == 200
        for rec in batch.json()["results"]:
            assert (rec["status"] == "error") == rec["path"].startswith("slow_"), rec
            if rec["status"] == "error":
                assert "decode budget" in rec["error"] and rec["verdict"] is None
        assert c.get("/health").status_code == 200


def _valid_files() -> list[bytes]:
    out = [jpeg_many_scans(3, (32, 32)), png_many_chunks(40), gif_many_blocks(3), tiff_many_strips(40),
           bmp_rle(3000, width=20)]
    for fmt in ("TIFF", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (20, 12), (5, 6, 7)).save(buf, fmt)
        out.append(buf.getvalue())
    return out


_VALID = _valid_files()


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_mutated_containers_give_a_reason_never_a_crash(data: st.DataObject) -> None:
    """The structure checks read untrusted bytes: mutated files of every format give a result or an
    ImageReadError, never another exception."""
    raw = bytearray(data.draw(st.sampled_from(_VALID)))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    blob = bytes(raw[: data.draw(st.integers(1, len(raw)))])
    try:
        a = decode_image(blob)
    except ImageReadError as e:
        assert str(e)  # a reason for the record
    else:
        assert a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3))



def test_screen_passes_its_decode_budget_to_every_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`l2ood screen --max-decode-s S` decodes every file with that budget (and the review page's thumbnails too)."""
    from tests.conftest import tiny_run

    import l2ood.screen.screener as screener_mod
    from l2ood.cli import main

    run = tiny_run(tmp_path, calibrate=True)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20), 80 * i, np.uint8)).save(imgs / f"{i}.png")
    seen: list[float | None] = []
    real = screener_mod.decode_image

    def spy(source: Any, max_pixels: int = 0, max_decode_s: float | None = None) -> np.ndarray:
        seen.append(max_decode_s)
        return real(source, max_pixels, max_decode_s)

    monkeypatch.setattr(screener_mod, "decode_image", spy)
    assert main(["screen", str(run), str(imgs), "--max-decode-s", "3.5", "--html", str(tmp_path / "r.html"),
                 "--no-progress"]) in (0, 1)
    assert len(seen) >= 3 and set(seen) == {3.5}
    with pytest.raises(SystemExit) as e:  # must be > 0: an argparse error, exit 2
        main(["screen", str(run), str(imgs), "--max-decode-s", "0", "--no-progress"])
    assert e.value.code == 2 and "max-decode-s" in capsys.readouterr().err
