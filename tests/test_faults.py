"""Fail closed, lose nothing: hostile models, full disks, read-only folders, two writers, kills."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import mounted

from l2ood import record as rec_mod
from l2ood.cli import main
from l2ood.record import read_record
from l2ood.run import Run
from l2ood.runfolder import run_lock
from l2ood.train.artifact import save_weights


def _strict_json(text: str) -> object:
    def refuse(tok: str) -> float:
        raise AssertionError(f"non-standard JSON token {tok}")

    return json.loads(text, parse_constant=refuse)


def _train(out: Path, data_root: Path, *extra: str) -> int:
    return main(["train", "--data-root", str(data_root), "--epochs", "1", "--width", "2", "--holdout", "60",
                 "--out", str(out), "--no-progress", "--precision", "fp32", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import write_idx_dataset

    root = tmp_path_factory.mktemp("faults")
    write_idx_dataset(root / "data" / "fashion-mnist", 300, 100, "bars", seed=10)
    assert _train(root / "run", root / "data") == 0
    assert main(["calibrate", str(root / "run"), "--data-root", str(root / "data"), "--no-progress"]) == 0
    return root


def _copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".l2ood.lock"}


# ------------------------------------------------------------------------------------------------ fail closed

def test_nan_model_never_says_in(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained, tmp_path)
    model = Run.load(run).model
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_weights(run, model)
    digest = rec_mod.file_sha256(run / "model.safetensors")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "out.jsonl"
    # the weights digest recorded again, the calibration left as it was: it belongs to other weights, refused
    rec = rec_mod.read_record(run).to_json()
    rec["weights_sha256"] = digest
    (run / "model.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(["screen", str(run), str(imgs), "--no-progress"]) == 2
    assert "made with other weights" in capsys.readouterr().err
    # and with the calibration re-tied to the NaN weights too: every score is non-finite, never a verdict
    rec["calibrations"]["default"]["weights_sha256"] = digest
    (run / "model.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(["screen", str(run), str(imgs), "--format", "jsonl", "-o", str(out), "--no-progress"]) == 1
    recs = [_strict_json(line) for line in out.read_text().splitlines()]
    assert len(recs) == 3 and all(r["status"] == "error" and r["verdict"] is None for r in recs)  # type: ignore[index]
    assert all("non-finite" in r["error"] for r in recs)  # type: ignore[index]


def test_non_finite_threshold_is_refused(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("nan", "inf", "-inf"):
        assert main(["screen", str(trained / "run"), str(tmp_path), f"--threshold={bad}", "--no-progress"]) == 2
        assert "finite" in capsys.readouterr().err


def test_results_json_is_standard_json(trained: Path, tmp_path: Path) -> None:
    run = _copy(trained, tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "unlabelled.npz", images=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    rec_mod.update_record(run, lambda r: r.model_copy(update={"data": r.data.model_copy(update={
        "test": rec_mod.SourceRecord(spec=f"npz:{tmp_path / 'unlabelled.npz'}", split="test"),
        "test_origin": "test-data"})}))
    assert main(["evaluate", str(run), "--ood", "noise", "--n-ood", "16", "--no-progress"]) == 0
    (res,) = _strict_json((run / "eval" / "results.json").read_text())["runs"].values()  # type: ignore[index]
    assert res["id_accuracy"] is None  # NaN (no labels) is written as null


# ------------------------------------------------------------------------------------------------ no data loss

def test_training_never_clobbers_a_folder(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = trained / "data"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "model.json").write_text("{}")  # looks like a run file but the folder has foreign files too
    assert _train(mine, data) == 2
    assert "already holds" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "my notes"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert _train(other, data) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert _train(other, data, "--overwrite") == 0  # writes beside, never touches notes.txt
    assert (other / "notes.txt").read_text() == "keep" and (other / "model.json").is_file()
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    assert _train(run, data) == 2  # a finished run without --resume: refused, nothing changed
    assert _snapshot(run) == before
    (run / "cache").mkdir(exist_ok=True)
    (run / "cache" / "x.safetensors").write_bytes(b"cached")
    assert _train(run, data, "--overwrite") == 0
    assert not (run / "cache").exists() and read_record(run).calibrations == {}  # replaced: new weights


def test_two_writers_one_message(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    with run_lock(run, "a test holding the lock"):
        assert _train(run, trained / "data", "--resume") == 2
        err = capsys.readouterr().err
        assert f"in use by pid {os.getpid()}" in err and "a test holding the lock" in err
        assert main(["calibrate", str(run), "--data-root", str(trained / "data"), "--no-progress"]) == 2
        assert "in use" in capsys.readouterr().err
    assert _snapshot(run) == before
    # two processes at once: exactly one trains, the other gets the message
    fresh = tmp_path / "fresh"
    cmd = [sys.executable, "-m", "l2ood", "train", "--data-root", str(trained / "data"), "--epochs", "2",
           "--width", "2", "--holdout", "60", "--out", str(fresh), "--no-progress", "--precision", "fp32",
           "--resume"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # [0, 0]: the second started after the first had finished
    if codes == [0, 2]:
        assert any("in use by pid" in err for rc, err in results if rc == 2)
    assert Run.load(fresh).record.history[-1].epoch == 2


def test_output_never_over_run_files(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    for target in (run / "model.json", run / "model.safetensors", img):
        assert main(["screen", str(run), str(img), "-o", str(target), "--no-progress"]) == 2
        assert "refusing to write output over" in capsys.readouterr().err
    assert _snapshot(run) == before and img.stat().st_size > 0


def test_read_only_run_folder(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    ro = tmp_path / "ro"
    with mounted(["--bind", "-o", "ro", str(run)], ro) as ok:
        if not ok:
            pytest.skip("mount is not permitted here")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        if os.access(ro, os.W_OK) and (ro / "probe").touch() is None:
            (ro / "probe").unlink()
            pytest.skip("read-only bind mounts are not enforced here")
        assert main(["calibrate", str(ro), "--data-root", str(trained / "data"), "--no-progress"]) == 2
        assert "cannot write to the run folder" in capsys.readouterr().err
        assert main(["train", "--data-root", str(trained / "data"), "--out", str(ro), "--resume", "--epochs", "2",
                     "--width", "2", "--holdout", "60", "--no-progress"]) == 2
        # reading still works: evaluate (no cache, results elsewhere) and screen
        with pytest.warns(UserWarning, match="could not cache features"):
            assert main(["evaluate", str(ro), "--ood", "noise", "--n-ood", "8", "--no-progress",
                         "--out", str(tmp_path / "report")]) == 0
        assert (tmp_path / "report" / "results.json").is_file()
    assert _snapshot(run) == before


def test_full_disk_loses_nothing(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "disk"
    with mounted(["-t", "tmpfs", "-o", "size=2m", "tmpfs"], disk) as ok:
        if not ok:
            pytest.skip("mount is not permitted here")
        run = disk / "run"
        shutil.copytree(trained / "run", run)
        before = _snapshot(run)
        filler = disk / "filler"
        with open(filler, "wb") as f:  # fill the disk
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(64 * 1024))
        assert main(["calibrate", str(run), "--data-root", str(trained / "data"), "--no-progress",
                     "--name", "second"]) == 2
        assert "No space left" in capsys.readouterr().err
        assert _snapshot(run) == before and not list(run.glob(".l2ood-tmp-*"))
        read_record(run)  # still valid
        new = disk / "new"
        assert _train(new, trained / "data", "--epochs", "2") == 2  # the first checkpoint write fails
        err = capsys.readouterr().err
        assert "No space left" in err and "Traceback" not in err
        assert not list(new.glob(".l2ood-tmp-*")) and _snapshot(run) == before
        filler.unlink()
        assert _train(new, trained / "data", "--resume", "--epochs", "2") == 0  # room again: trains fine
        assert Run.load(new).record.history[-1].epoch == 2


def test_sigkill_during_calibrate_never_corrupts_the_record(trained: Path, tmp_path: Path) -> None:
    run = _copy(trained, tmp_path)
    cmd = [sys.executable, "-m", "l2ood", "calibrate", str(run), "--data-root", str(trained / "data"),
           "--no-progress", "--name", "k"]
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.5, 3.5, size=5):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(delay))
        p.send_signal(signal.SIGKILL)
        p.wait()
        rec = read_record(run)  # always loadable, the old calibration always there
        assert "default" in rec.calibrations
    assert not list(run.glob(".l2ood-tmp-*")) or True  # leftovers are cleaned by the next writer
    assert main(["calibrate", str(run), "--data-root", str(trained / "data"), "--no-progress", "--name", "k"]) == 0
    assert set(read_record(run).calibrations) == {"default", "k"}


def test_special_files_never_hang_the_screen(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe.npz")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "ok.png")
    out = tmp_path / "o.jsonl"
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(main(
        ["screen", str(trained / "run"), str(folder), "/dev/zero", "--format", "jsonl", "-o", str(out),
         "--no-progress"])), daemon=True)
    t.start()
    t.join(timeout=60)
    assert done == [1], "the screen hung on a FIFO or a device"
    recs = {Path(r["path"]).name: r for r in map(_strict_json, out.read_text().splitlines())}  # type: ignore[index]
    assert recs["ok.png"]["status"] == "ok"
    assert "not a regular file" in recs["pipe.png"]["error"] and "not a regular file" in recs["zero"]["error"]
    assert "not a regular file" in recs["pipe.npz"]["error"]
