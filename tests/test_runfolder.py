"""The run folder (l2ood.runfolder): layout names, atomic writes, ownership, the writer lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2ood import jsonio
from l2ood import runfolder as rf
from l2ood.errors import RunError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------ layout

def test_layout_names() -> None:
    assert (rf.META, rf.WEIGHTS, rf.CHECKPOINT) == ("model.json", "model.safetensors", "checkpoint.json")
    assert (rf.TRAIN_LOG, rf.TRACK_LOG, rf.LOCK) == ("train_log.jsonl", "track.jsonl", ".l2ood.lock")
    assert (rf.CACHE_DIR, rf.EVAL_DIR, rf.DETECTOR_DIR, rf.TRACK_DIR) == ("cache", "eval", "detectors", "track")
    assert rf.fitted_file("vim:raw") == "detectors/vim.raw.safetensors"
    assert rf.fitted_file("knn") == "detectors/knn.safetensors"
    assert rf.fitted_file("mahalanobis_pp") == f"{rf.DETECTOR_DIR}/mahalanobis_pp.safetensors"
    assert rf.checkpoint_tensors(42) == "checkpoint-000000042.safetensors"
    assert rf.is_checkpoint_tensors(rf.checkpoint_tensors(10**8))
    assert not rf.is_checkpoint_tensors("checkpoint-42.safetensors")
    assert fnmatch(rf.checkpoint_tensors(7), rf.CHECKPOINT_TENSORS_GLOB)


def test_the_record_module_uses_the_same_layout() -> None:
    from l2ood import record

    assert record.META == rf.META and record.WEIGHTS == rf.WEIGHTS and record.fitted_file is rf.fitted_file


@pytest.mark.parametrize("name", [rf.META, rf.WEIGHTS, rf.CHECKPOINT, rf.TRAIN_LOG, rf.TRACK_LOG, rf.LOCK,
                                  rf.CACHE_DIR, rf.EVAL_DIR, rf.DETECTOR_DIR, rf.TRACK_DIR,
                                  rf.checkpoint_tensors(3), rf.temp_path(Path("model.json")).name])
def test_every_layout_name_is_owned(name: str) -> None:
    assert rf.is_owned(name)


@pytest.mark.parametrize("name", ["notes.txt", "model.json.bak", "checkpoint-3.safetensors", "Model.json",
                                  rf.TMP_PREFIX, "data", "results.json"])
def test_other_names_are_foreign(name: str) -> None:
    assert not rf.is_owned(name)


def test_temp_paths_are_unique_and_beside_the_target(tmp_path: Path) -> None:
    a, b = rf.temp_path(tmp_path / "x.json"), rf.temp_path(tmp_path / "x.json")
    assert a != b and a.parent == tmp_path and a.name.startswith(rf.TMP_PREFIX + "x.json.")


# ------------------------------------------------------------------------------------------------ atomic writes

def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    rf.atomic_write_bytes(path, b"old")
    rf.atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content" and _names(tmp_path) == ["f.bin"]


def test_atomic_write_json_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    rf.atomic_write_json(path, {"a": 1})
    rf.atomic_write_json(str(path), {"b": [1.5, None], "a": "x"})
    assert json.loads(path.read_text()) == {"a": "x", "b": [1.5, None]}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')  # sorted keys: equal objects, equal files
    assert _names(tmp_path) == ["r.json"]


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": float("nan")}, {"x": float("inf")}])
def test_a_value_json_cannot_hold_leaves_the_old_file(tmp_path: Path, bad: dict[str, object]) -> None:
    path = tmp_path / "r.json"
    rf.atomic_write_json(path, {"kept": True})
    with pytest.raises((TypeError, ValueError)):
        rf.atomic_write_json(path, bad)
    assert json.loads(path.read_text()) == {"kept": True} and _names(tmp_path) == ["r.json"]


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        fail: str) -> None:
    path = tmp_path / "r.json"
    rf.atomic_write_json(path, {"kept": True})

    def boom(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rf.os, fail, boom)
    with pytest.raises(OSError, match="No space left"):
        rf.atomic_write_json(path, {"kept": False})
    with pytest.raises(OSError, match="No space left"):
        rf.atomic_write_bytes(tmp_path / "new.bin", b"data")
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"kept": True} and _names(tmp_path) == ["r.json"]


def test_atomic_save_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.safetensors"
    w = torch.arange(12.0).reshape(3, 4)
    rf.atomic_save_safetensors(path, {"w": w.t(), "b": torch.ones(2)}, metadata={"format": "l2ood"})
    back = load_file(str(path))
    assert torch.equal(back["w"], w.t()) and torch.equal(back["b"], torch.ones(2))
    before = path.read_bytes()
    monkeypatch.setattr(rf.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    with pytest.raises(OSError, match="Read-only"):
        rf.atomic_save_safetensors(path, {"w": torch.zeros(1)})
    assert path.read_bytes() == before and _names(tmp_path) == ["t.safetensors"]


def test_jsonio_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    assert jsonio.write(path, {"auroc": float("nan"), "n": 3}) == path
    assert json.loads(path.read_text()) == {"auroc": None, "n": 3} and path.read_text().endswith("\n")
    monkeypatch.setattr(rf.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        jsonio.write(path, {"n": 4})
    with pytest.raises(TypeError):
        jsonio.write(path, {"n": object()})
    assert json.loads(path.read_text()) == {"auroc": None, "n": 3} and _names(tmp_path) == ["results.json"]


# ------------------------------------------------------------------------------------------------ ownership

def _run_folder(path: Path) -> Path:
    path.mkdir()
    for name in (rf.META, rf.WEIGHTS, rf.TRAIN_LOG, rf.checkpoint_tensors(5)):
        (path / name).write_text("x")
    (path / rf.DETECTOR_DIR).mkdir()
    (path / rf.fitted_file("knn")).write_text("x")
    (path / rf.temp_path(path / rf.META).name).write_text("half")
    return path


def test_ownership_and_overwrite(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run")
    assert rf.holds_run(run) and not rf.holds_run(tmp_path) and rf.foreign_files(run) == []
    assert rf.foreign_files(tmp_path / "missing") == []
    with pytest.raises(RunError, match="already holds a trained model"):
        rf.check_target(run)
    rf.check_target(run, resume=True)
    (run / "notes.txt").write_text("mine")
    (run / "mine").mkdir()
    assert rf.foreign_files(run) == ["mine", "notes.txt"]
    with pytest.raises(RunError, match="did not write"):
        rf.check_target(run, resume=True)
    rf.check_target(run, overwrite=True)
    rf.clean_temp(run)
    assert not list(run.glob(rf.TMP_PREFIX + "*")) and (run / rf.META).is_file()
    (run / rf.LOCK).write_text("")
    removed = rf.remove_owned(run)
    assert set(removed) == {rf.META, rf.WEIGHTS, rf.TRAIN_LOG, rf.checkpoint_tensors(5), rf.DETECTOR_DIR}
    assert _names(run) == sorted([rf.LOCK, "mine", "notes.txt"]) and (run / "notes.txt").read_text() == "mine"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / rf.CHECKPOINT).write_text("{}")
    with pytest.raises(RunError, match="an unfinished training"):
        rf.check_target(unfinished)


def test_refuse_run_file(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run")
    for name in (rf.META, rf.WEIGHTS, rf.TRAIN_LOG):
        with pytest.raises(RunError, match="over a file of the run"):
            rf.refuse_run_file(run / name)
    rf.refuse_run_file(run / "report.html")
    rf.refuse_run_file(tmp_path / rf.META)  # not a run folder
    with pytest.raises(RunError, match="over an input file"):
        rf.refuse_run_file(tmp_path / "in.png", [str(tmp_path / "other.png"), str(tmp_path / "in.png")])


# ------------------------------------------------------------------------------------------------ the lock

def test_run_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    run = tmp_path / "new" / "run"
    with rf.run_lock(run, "the first writer", shared=True):
        assert (run / rf.LOCK).is_file()
        holder = json.loads((run / rf.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "the first writer"
        errors: list[Exception] = []

        def second() -> None:
            try:
                with rf.run_lock(run, "the second writer"):
                    errors.append(AssertionError("two writers held the lock"))
            except RunError as e:
                errors.append(e)

        t = threading.Thread(target=second)
        t.start()
        t.join()
        assert len(errors) == 1 and isinstance(errors[0], RunError)
        assert re.search(f"in use by pid {os.getpid()} .*the first writer", str(errors[0]))
        with rf.run_lock(run, "nested"):  # the same thread under a shared holder: runs, the holder keeps the lock
            assert json.loads((run / rf.LOCK).read_text())["command"] == "the first writer"
    with rf.run_lock(run, "a holder that does not share"), pytest.raises(RunError, match="in use"):
        with rf.run_lock(run, "nested"):
            pytest.fail("a nested writer ran under a holder that did not share")
    with rf.run_lock(run):  # released: the next writer gets it
        pass
    assert (run / rf.LOCK).read_text() == ""


def test_run_lock_dies_with_its_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = ("import sys, time\nfrom l2ood.runfolder import run_lock\n"
            f"with run_lock({str(run)!r}, 'holder'):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"in use by pid {holder.pid}"):
            with rf.run_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with rf.run_lock(run):  # SIGKILL left no stale lock
        pass


def test_run_lock_on_an_unwritable_place(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="cannot write to the run folder"):
        with rf.run_lock(tmp_path / "file" / "run"):
            pass
