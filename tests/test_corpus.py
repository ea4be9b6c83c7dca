"""Every parser against the committed corpus of bad inputs (tests/corpus) and against fuzzed inputs.

Each input must give a clear l2ood error (an :class:`~l2ood.errors.L2oodError` subclass: the CLI prints it as
one message, exit 2) or a valid result, within a stated bound: 5 s and 300 MiB of new peak memory per input.
"""

from __future__ import annotations

import io
import json
import resource
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2ood.data import DataError, load_dataset
from l2ood.data.imglist import load_imglist
from l2ood.data.npz import load_npz
from l2ood.data.preprocess import ImageReadError, decode_image
from l2ood.errors import L2oodError, RunError
from l2ood.models import ModelConfig, build_model
from l2ood.record import RunRecord, read_record, validate_record
from l2ood.train.checkpoint import load_checkpoint, read_checkpoint_record

CORPUS = Path(__file__).resolve().parent / "corpus"
TIME_BOUND_S = 5.0
MEMORY_BOUND_MIB = 300
FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _bounded(fn: object, expect: type[BaseException]) -> object:
    """Run ``fn``; it must raise ``expect`` (or return) within the time and memory bounds."""
    before, t0 = _peak_mib(), time.perf_counter()
    result: object = None
    try:
        result = fn()  # type: ignore[operator]
    except expect:
        pass
    assert time.perf_counter() - t0 < TIME_BOUND_S
    assert _peak_mib() - before < MEMORY_BOUND_MIB
    return result


def _cases(folder: str) -> list[Path]:
    return sorted((CORPUS / folder).iterdir())


@pytest.mark.parametrize("path", _cases("npz"), ids=lambda p: p.name)
def test_npz_corpus(path: Path) -> None:
    with pytest.raises(DataError):
        _bounded(lambda: load_npz(path), ())  # type: ignore[arg-type]


@pytest.mark.parametrize("path", _cases("images"), ids=lambda p: p.name)
def test_image_corpus(path: Path) -> None:
    with pytest.raises(ImageReadError):
        _bounded(lambda: decode_image(path), ())  # type: ignore[arg-type]


@pytest.mark.parametrize("path", _cases("record"), ids=lambda p: p.name)
def test_record_corpus(path: Path) -> None:
    if path.name == "valid":
        assert isinstance(_bounded(lambda: read_record(path), RunError), RunRecord)
        return
    with pytest.raises(RunError) as e:
        _bounded(lambda: read_record(path), ())  # type: ignore[arg-type]
    assert str(path / "model.json") in str(e.value)


@pytest.mark.parametrize("path", _cases("checkpoint"), ids=lambda p: p.name)
def test_checkpoint_corpus(path: Path) -> None:
    model = build_model(ModelConfig(width=2, num_classes=3, image_size=(16, 16)))
    with pytest.raises(RunError):
        _bounded(lambda: load_checkpoint(path, model), ())  # type: ignore[arg-type]


@pytest.mark.parametrize("path", _cases("imglist"), ids=lambda p: p.name)
def test_imglist_corpus(path: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError):
        _bounded(lambda: load_imglist(path, tmp_path), ())  # type: ignore[arg-type]


@pytest.mark.parametrize("path", _cases("cifar"), ids=lambda p: p.name)
def test_cifar_corpus(path: Path) -> None:
    with pytest.raises(DataError):
        _bounded(lambda: load_dataset("cifar10", "test", root=path, download=False), ())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ fuzzing

def _valid_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3), labels=np.array([0, 1]))
    return buf.getvalue()


@FUZZ
@given(st.data())
def test_fuzzed_npz(tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(_valid_npz())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    p = tmp_path / "f.npz"
    p.write_bytes(bytes(raw[:cut]))
    try:
        ds = _bounded(lambda: load_npz(p), DataError)
    except L2oodError:
        return
    if ds is not None:  # a mutation that kept the pack valid: then it must be a sane set
        assert ds.images.dtype.is_floating_point is False and ds.images.ndim == 4  # type: ignore[attr-defined]


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzzed_image_bytes(tmp_path: Path, blob: bytes) -> None:
    with pytest.raises(ImageReadError) if blob[:4] not in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"GIF8", b"BM") \
            else _maybe_raises(ImageReadError):
        _bounded(lambda: decode_image(blob), ())  # type: ignore[arg-type]


class _maybe_raises:  # reads like pytest.raises
    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: object, ev: object, tb: object) -> bool:
        return et is None or (isinstance(et, type) and issubclass(et, self.exc))


def _base_record() -> dict[str, object]:
    return json.loads((CORPUS / "record" / "valid" / "model.json").read_text())


_json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                            | st.text(max_size=20), lambda c: st.lists(c, max_size=4)
                            | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=10)


@FUZZ
@given(st.data())
def test_fuzzed_records(data: st.DataObject) -> None:
    rec = _base_record()
    for _ in range(data.draw(st.integers(1, 4))):
        node: dict[str, object] = rec
        while True:  # walk to a random key
            key = data.draw(st.sampled_from(sorted(node)))
            child = node[key]
            if isinstance(child, dict) and child and data.draw(st.booleans()):
                node = child
                continue
            break
        if data.draw(st.booleans()):
            del node[key]
        else:
            node[key] = data.draw(_json_values)
    try:
        out = _bounded(lambda: validate_record(rec, "fuzzed/model.json"), RunError)
    except RunError:
        return
    if out is not None:
        assert isinstance(out, RunRecord)


@FUZZ
@given(st.data())
def test_fuzzed_checkpoint_records(tmp_path: Path, data: st.DataObject) -> None:
    base = json.loads((CORPUS / "checkpoint" / "missing_tensor_file" / "checkpoint.json").read_text())
    key = data.draw(st.sampled_from(sorted(base)))
    base[key] = data.draw(_json_values)
    (tmp_path / "checkpoint.json").write_text(json.dumps(base))
    _bounded(lambda: read_checkpoint_record(tmp_path), RunError)


@FUZZ
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), max_size=8))
def test_fuzzed_image_lists(tmp_path: Path, lines: list[str]) -> None:
    p = tmp_path / "list.txt"
    p.write_text("\n".join(lines), encoding="utf-8")
    try:
        _bounded(lambda: load_imglist(p, tmp_path), ())  # type: ignore[arg-type]
    except DataError:
        pass


def test_idx_readers_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from l2ood.data import idx as idx_mod

    good = tmp_path / "ok-idx1-ubyte"
    idx_mod.write_idx(good, np.arange(10, dtype=np.uint8))
    cases = {"bad_magic": b"\x01\x02\x08\x01" + bytes(8), "truncated_header": b"\x00\x00\x08\x03\x00",
             "size_mismatch": b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(3),
             "not_gzip": b"\x1f\x8b" + bytes(20), "float_type": b"\x00\x00\x0d\x01\x00\x00\x00\x01" + bytes(4)}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataError):
            _bounded(lambda name=name: idx_mod.read_idx(tmp_path / name), ())  # type: ignore[arg-type]
    # a gzip bomb stops at the limit (lowered here so the test stays small)
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x01\x00\x00" + bytes(65536)))
    monkeypatch.setattr(idx_mod, "MAX_IDX_BYTES", 4096)
    with pytest.raises(DataError, match="decompresses to more than 4096"):
        idx_mod.read_idx(tmp_path / "bomb.gz")
    assert idx_mod.read_idx(good).tolist() == list(range(10))
