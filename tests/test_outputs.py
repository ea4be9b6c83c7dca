"""Outputs never destroy inputs (issue 24): every output path is resolved and refused when it is a run's own file
or one of the command's inputs; the ONNX export is verified before it is written and written atomically; a model
with non-finite outputs is never "verified"; non-UTF-8 file names are written, not crashed on."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l2ood import runfolder as rf
from l2ood.cli import main
from l2ood.errors import RunError
from l2ood.screen.screener import printable, screen_to_file, serializable_record

SCREEN_READS = frozenset({".png", ".jpg", ".npz"})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (the lock and caches left out) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != rf.LOCK and "cache" not in p.parts}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained and calibrated run (``ROOT/run``), its data (``ROOT/data``) and images (``ROOT/imgs``)."""
    from tests.conftest import write_idx_dataset

    root = tmp_path_factory.mktemp("outputs")
    write_idx_dataset(root / "data" / "fashion-mnist", 300, 100, "bars", seed=10)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("L2OOD_CACHE", str(root / "cache"))
        assert main(["train", "--data-root", str(root / "data"), "--epochs", "1", "--width", "2", "--holdout", "60",
                     "--out", str(root / "run"), "--no-progress", "--precision", "fp32"]) == 0
        assert main(["calibrate", str(root / "run"), "--data-root", str(root / "data"), "--no-progress"]) == 0
    (root / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(root / "imgs" / f"img{i}.png")
    return root


# ------------------------------------------------------------------------------------------------ refuse_run_file

def _fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in (rf.META, rf.WEIGHTS, rf.CHECKPOINT, rf.checkpoint_tensors(7), rf.TRAIN_LOG):
        (folder / name).write_text(name)
    for sub in (rf.DETECTOR_DIR, rf.TRACK_DIR, rf.CACHE_DIR, rf.EVAL_DIR):
        (folder / sub).mkdir()
    (folder / rf.DETECTOR_DIR / "knn.safetensors").write_text("knn")
    return folder


def test_run_files_are_refused_through_any_path(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    (tmp_path / "link.csv").symlink_to(run / rf.META)
    (tmp_path / "dangling.csv").symlink_to(run / "checkpoint-000000009.safetensors")  # not there yet
    (tmp_path / "runlink").symlink_to(run, target_is_directory=True)
    refused = [run / rf.META, run / rf.WEIGHTS, run / rf.checkpoint_tensors(7),
               run / "checkpoint-000000001.safetensors", run / rf.DETECTOR_DIR / "knn.safetensors",
               run / rf.DETECTOR_DIR / "new.safetensors",
               run / rf.TRACK_DIR / "x.npz", run / rf.CACHE_DIR / "feat.npz", run / rf.DETECTOR_DIR,
               tmp_path / "link.csv", tmp_path / "dangling.csv", tmp_path / "runlink" / rf.WEIGHTS,
               run / "eval" / ".." / rf.META, tmp_path / "runlink" / rf.DETECTOR_DIR / "knn.safetensors"]
    for path in refused:
        with pytest.raises(RunError, match="over a file of the run"):
            rf.refuse_run_file(path)
        assert rf.run_file_owner(path) == run.resolve()
    for path in (run / "report.html", run / "model.onnx", run / rf.EVAL_DIR / "results.json", tmp_path / rf.META):
        rf.refuse_run_file(path)  # not the run's own files: allowed
        assert rf.run_file_owner(path) is None


def test_inputs_are_refused_through_links_and_folders(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "sub" / "a.png").write_bytes(b"a")
    (photos / "notes.csv").write_text("old results")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"o")
    (photos / "linked.png").symlink_to(outside)
    os.link(photos / "sub" / "a.png", tmp_path / "hard.png")
    inputs = [str(photos)]
    for path, why in [(photos / "sub" / "a.png", "input folder"), (photos / "new.png", "input folder"),
                      (photos / "sub" / "NEW.NPZ", "input folder"), (outside, "over an input file"),
                      (tmp_path / "hard.png", "over an input file")]:
        with pytest.raises(RunError, match=why):
            rf.refuse_run_file(path, inputs, folder_reads=SCREEN_READS)
    rf.refuse_run_file(photos / "notes.csv", inputs, folder_reads=SCREEN_READS)  # not read by the command
    rf.refuse_run_file(photos / "review.html", inputs, folder_reads=SCREEN_READS)
    rf.refuse_run_file(tmp_path / "results.csv", inputs, folder_reads=SCREEN_READS)
    with pytest.raises(RunError, match="input folder"):  # without folder_reads every file of the folder counts
        rf.refuse_run_file(photos / "notes.csv", inputs)
    with pytest.raises(RunError, match="over an input file"):
        rf.refuse_run_file(tmp_path / "hard.png", [str(photos / "sub" / "a.png")])


def test_refuse_output_files_checks_each_name(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    rep = tmp_path / "report"
    rep.mkdir()
    (rep / "results.json").symlink_to(run / rf.META)
    with pytest.raises(RunError, match="over a file of the run"):
        rf.refuse_output_files(rep, ["report.md", "results.json"])
    with pytest.raises(RunError, match="over a file of the run"):
        rf.refuse_output_files(run / rf.DETECTOR_DIR, ["report.md"])
    rf.refuse_output_files(run / rf.EVAL_DIR, ["report.md", "results.json"])  # evaluate's default


# ------------------------------------------------------------------------------------------------ through the CLI

def test_screen_outputs_over_run_files_or_inputs_exit_2(trained: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run, imgs = trained / "run", trained / "imgs"
    (tmp_path / "to-weights.csv").symlink_to(run / rf.WEIGHTS)
    os.link(imgs / "img1.png", tmp_path / "hard.png")
    before_run, before_imgs = snapshot(run), snapshot(imgs)
    cases = [["-o", str(run / rf.META)], ["-o", str(tmp_path / "to-weights.csv")], ["-o", str(imgs / "img0.png")],
             ["-o", str(imgs / "new.png")], ["-o", str(tmp_path / "hard.png")], ["--html", str(imgs / "img2.png")],
             ["-o", str(run / rf.CHECKPOINT)]]
    for extra in cases:
        assert main(["screen", str(run), str(imgs), *extra, "--no-progress"]) == 2, extra
        err = capsys.readouterr().err
        assert "refusing to write output" in err and "Traceback" not in err
    assert snapshot(run) == before_run and snapshot(imgs) == before_imgs
    assert not (imgs / "new.png").exists()
    assert main(["screen", str(run), str(imgs), "-o", str(imgs / "screen.csv"), "--no-progress"]) == 0
    assert (imgs / "screen.csv").read_text().count("\n") == 4  # header + 3 images; not an input: allowed


def test_export_and_report_outputs_over_run_files_exit_2(trained: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = trained / "run"
    before = snapshot(run)
    (tmp_path / "m.onnx").symlink_to(run / rf.WEIGHTS)
    for out in (run / rf.META, tmp_path / "m.onnx", run / rf.DETECTOR_DIR / "x.onnx"):
        assert main(["export", str(run), "-o", str(out), "--verify-n", "0"]) == 2
        assert "refusing to write output" in capsys.readouterr().err
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "results.json").symlink_to(run / rf.META)
    assert main(["evaluate", str(run), "--ood", "noise", "--n-ood", "8", "--out", str(rep), "--no-progress",
                 "--data-root", str(trained / "data")]) == 2
    assert "refusing to write output" in capsys.readouterr().err
    pack = tmp_path / "ood.npz"
    np.savez(pack, images=np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "rep2").mkdir()
    (tmp_path / "rep2" / "report.md").symlink_to(pack)
    assert main(["evaluate", str(run), "--ood", f"npz:{pack}", "--out", str(tmp_path / "rep2"), "--no-progress",
                 "--data-root", str(trained / "data")]) == 2
    assert "over an input file" in capsys.readouterr().err
    assert main(["analyze", str(run), "--out", str(run / rf.TRACK_DIR)]) == 2
    assert snapshot(run) == before and pack.stat().st_size > 0


# ------------------------------------------------------------------------------------------------ non-UTF-8 names

def test_printable_names() -> None:
    name = os.fsdecode(b"dir/\xff\xfe.png")
    assert printable(name) == "dir/\\xff\\xfe.png"
    assert printable("caf\u00e9.png") == "caf\u00e9.png"
    assert printable("caf\u00e9.png", "ascii") == "caf\\xe9.png"
    assert printable("\ud800x") == "\\ud800x"  # a surrogate that is not an escaped byte
    rec = serializable_record({"path": name, "index": None, "score": 1.5, "error": name})
    assert rec == {"path": "dir/\\xff\\xfe.png", "index": None, "score": 1.5, "error": "dir/\\xff\\xfe.png"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_screen_writes_non_utf8_file_names(trained: Path, tmp_path: Path, fmt: str) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [b"\xff\xfe.png", "\u00e9t\u00e9.png".encode(), b"plain.png", b"broken\xe9.png"]
    for raw in names[:3]:
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(os.fsdecode(os.path.join(os.fsencode(photos), raw)),
                                                           format="PNG")
    Path(os.fsdecode(os.path.join(os.fsencode(photos), names[3]))).write_bytes(b"not an image")
    out = tmp_path / f"out.{fmt}"
    rc = main(["screen", str(trained / "run"), str(photos), "--format", fmt, "-o", str(out), "--no-progress",
               "--html", str(tmp_path / "review.html")])
    assert rc == 1  # the broken file is an error record, the others are screened
    text = out.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = [json.loads(line) for line in text.splitlines()]
    paths = {Path(r["path"]).name: r["status"] for r in rows}
    assert paths == {"\\xff\\xfe.png": "ok", "\u00e9t\u00e9.png": "ok", "plain.png": "ok", "broken\\xe9.png": "error"}
    assert "broken\\xe9.png" in (tmp_path / "review.html").read_text(encoding="utf-8")


def test_screen_to_a_stream_that_cannot_hold_the_name(trained: Path, tmp_path: Path) -> None:
    from l2ood.screen import Screener

    photo = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xc3\xa9\xff.png")))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(photo, format="PNG")
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", newline="")
    counts = screen_to_file(Screener.from_run(trained / "run", device="cpu", precision="fp32"), [str(photo)], stream)
    stream.flush()
    assert counts["ok"] == 1
    assert "caf\\xe9\\xff.png" in raw.getvalue().decode("ascii")


# ------------------------------------------------------------------------------------------------ ONNX export

@pytest.fixture(scope="module")
def onnx_ok(trained: Path) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = trained / "good.onnx"
    assert main(["export", str(trained / "run"), "-o", str(path), "--verify-n", "40",
                 "--data-root", str(trained / "data")]) == 0
    return path


def _nan_run(trained: Path, dest: Path) -> Path:
    from l2ood import record as rec_mod
    from l2ood.run import Run
    from l2ood.train.artifact import save_weights

    shutil.copytree(trained / "run", dest, ignore=shutil.ignore_patterns("cache", rf.LOCK))
    model = Run.load(dest, device="cpu", precision="fp32").model
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_weights(dest, model)
    digest = rec_mod.file_sha256(dest / rf.WEIGHTS)  # calibrations belong to the old weights: dropped
    rec_mod.update_record(dest, lambda r: r.model_copy(update={"weights_sha256": digest, "calibrations": {}}))
    return dest


def test_nan_model_is_never_exported_or_verified(trained: Path, onnx_ok: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from l2ood.deploy.export import ExportError, verify_onnx
    from l2ood.run import Run

    nan_run = _nan_run(trained, tmp_path / "nan_run")
    previous = tmp_path / "prev.onnx"
    shutil.copy(onnx_ok, previous)
    before = previous.read_bytes()
    for out, exists in ((previous, True), (tmp_path / "new.onnx", False)):
        assert main(["export", str(nan_run), "-o", str(out), "--data-root", str(trained / "data"),
                     "--verify-n", "20"]) == 2
        err = capsys.readouterr().err
        assert "not finite" in err and "Traceback" not in err
        assert out.exists() == exists
    assert previous.read_bytes() == before
    assert not (nan_run / "model.onnx").exists()
    # the verification itself: a good export compared with a NaN model, never "verified"
    run = Run.load(nan_run, device="cpu", precision="fp32")
    imgs = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ExportError, match="not finite"):
        verify_onnx(run, onnx_ok, imgs)
    with pytest.raises(ExportError, match="not finite"):
        verify_onnx(run, onnx_ok.read_bytes(), imgs)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(rf.TMP_PREFIX)) == []


def test_failed_export_leaves_the_previous_file_byte_identical(trained: Path, onnx_ok: Path, tmp_path: Path) -> None:
    import onnx

    from l2ood.deploy import export as ex
    from l2ood.run import Run

    out = tmp_path / "model.onnx"
    shutil.copy(onnx_ok, out)
    before = out.read_bytes()
    run = Run.load(trained / "run", device="cpu", precision="fp32")
    imgs = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)

    def boom(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    def disagree(v: dict[str, float], *_: object) -> None:
        raise ex.ExportError(f"verification failed: made to disagree ({v['n']:.0f} images)")

    failures: list[tuple[object, str, object, type[Exception]]] = [
        (os, "replace", boom, OSError), (os, "fsync", boom, OSError), (onnx.checker, "check_model", boom, OSError),
        (ex, "check_agreement", disagree, ex.ExportError)]
    for owner, name, fake, err in failures:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(owner, name, fake)
            with pytest.raises(err):
                ex.export_verified(run, out, images=imgs)
        assert out.read_bytes() == before, name
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(rf.TMP_PREFIX)] == [], name
    path, v = ex.export_verified(run, out, images=imgs)  # and a good export replaces it
    assert v is not None and v["n"] == 4 and path.read_bytes() != b""
    assert ex.onnx_metadata(path)["l2ood.model"]["head"] == "l2"


def test_check_agreement_fails_on_disagreement() -> None:
    from l2ood.deploy.export import ExportError, check_agreement

    ok = {"max_rel_score_diff": 1e-6, "max_abs_logit_diff": 1e-6, "max_rel_logit_diff": 1e-7}
    check_agreement(ok)
    for bad in ({**ok, "max_rel_score_diff": 0.5}, {**ok, "max_rel_logit_diff": 0.1},
                {**ok, "max_rel_score_diff": float("nan")}):
        with pytest.raises(ExportError, match="verification failed"):
            check_agreement(bad)
