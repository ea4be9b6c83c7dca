"""Reliability cases: the data path and the outputs that could destroy inputs (issue 24), for
benchmarks/reliability.py.

Hostile tar shards (absurd header integers and labels), symbolic link loops in image folders, non-UTF-8 file names
in screen outputs, outputs aimed at run files or inputs (directly, through links, inside a screened folder), and
the ONNX export of a model that outputs NaN. Every case that could write works on its own copy of the benchmark's
run; the cases run four at a time (each is a subprocess) and are recorded in a fixed order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

Case = tuple[str, str, Callable[[], str]]  # (kind, case, run it → outcome)


def _nan_run(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose weights are all NaN (its digest recorded; calibrations, made with the old weights,
    dropped)."""
    from l2ood import record as rec_mod
    from l2ood.run import Run
    from l2ood.train.artifact import save_weights

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".l2ood.lock", "cache", "eval"))
    model = Run.load(dst, device="cpu", precision="fp32").model
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_weights(dst, model)
    digest = rec_mod.file_sha256(dst / "model.safetensors")
    rec_mod.update_record(dst, lambda r: r.model_copy(update={"weights_sha256": digest, "calibrations": {}}))
    return dst


def cases(ctx: dict[str, Any]) -> None:
    """Run the cases and record one row each through ``ctx["add"]``."""
    from tests.test_data_hostile import END, hostile_shards, member, png_bytes

    tmp, data, run0 = Path(ctx["tmp"]) / "rel-datapath", ctx["data"], ctx["run"]
    cli, classify, snapshot, add = ctx["cli"], ctx["classify"], ctx["snapshot"], ctx["add"]
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counter = iter(range(1000))

    def fresh() -> Path:
        dst = tmp / f"run-{next(counter)}"
        shutil.copytree(run0, dst, ignore=shutil.ignore_patterns(".l2ood.lock", "cache", "eval"))
        return dst

    quick = ("--n-id", "8", "--n-ood", "8", "--detectors", "feature_norm", "--no-progress", "--data-root", str(data))
    todo: list[Case] = []

    # --- tar shards with hostile headers and labels ----------------------------------------------------------
    shards = hostile_shards()
    for name in ("member size past end of file", "member size beyond any file (base-256 10**25)",
                 "negative member size (base-256 -512)", "label 10**30", "label -5",
                 "corrupt header after the first"):
        folder = tmp / "shards" / f"case-{len(todo)}"
        folder.mkdir(parents=True)
        good = b"".join(member(f"ok{i}.png", png_bytes(30 * i, 28)) for i in range(4)) + END
        (folder / "a.tar").write_bytes(good)
        (folder / "b.tar").write_bytes(shards[name][0])

        def evaluate_shards(folder: Path = folder) -> str:  # the report goes to the copy's eval/, not the input
            rc, _, err = cli("evaluate", str(fresh()), "--ood", f"wds:{folder}", *quick)
            return str(classify(rc, err, valid_codes=(0,)))

        todo.append(("shards: hostile headers", f"{name} (evaluate --ood wds:)", evaluate_shards))

    train_dir = tmp / "shards" / "train"
    train_dir.mkdir()
    (train_dir / "train-0.tar").write_bytes(shards["label 10**30"][0])

    def train_shards() -> str:
        rc, _, err = cli("train", "--dataset", f"wds:{train_dir}", "--data-path", "stream", "--epochs", "1",
                         "--width", "2", "--holdout", "1", "--workers", "0", "--out", str(tmp / "never"),
                         "--no-progress")
        return str(classify(rc, err))

    todo.append(("shards: hostile headers", "label 10**30 (train --data-path stream)", train_shards))

    fifo_dir = tmp / "shards" / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "s-0.tar")

    def fifo_shard() -> str:
        rc, _, err = cli("evaluate", str(fresh()), "--ood", f"wds:{fifo_dir}/s-{{0..1}}.tar", *quick)
        return str(classify(rc, err))

    todo.append(("shards: hostile headers", "a FIFO named like a shard", fifo_shard))

    # --- image folders with symbolic link loops ---------------------------------------------------------------
    def class_folders(root: Path) -> Path:
        for c in range(2):
            (root / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((28, 28), 50 * c + 10 * i, np.uint8)).save(root / f"c{c}" / f"{i}.png")
        return root

    back = class_folders(tmp / "loop-root")
    (back / "c9").symlink_to(back, target_is_directory=True)
    deep = class_folders(tmp / "loop-deep")
    (deep / "c1" / "sub").mkdir()
    (deep / "c1" / "sub" / "up").symlink_to("..", target_is_directory=True)
    diamond = class_folders(tmp / "diamond")
    level = diamond / "c0"
    for k in range(25):  # 2**25 paths, no loop: each folder must be read once
        nxt = tmp / "diamond-levels" / f"d{k}"
        nxt.mkdir(parents=True)
        (level / "a").symlink_to(nxt, target_is_directory=True)
        (level / "b").symlink_to(nxt, target_is_directory=True)
        level = nxt

    def evaluate_folder(root: Path) -> Callable[[], str]:
        def go() -> str:
            rc, _, err = cli("evaluate", str(fresh()), "--ood", f"imagefolder:{root}", *quick)
            return str(classify(rc, err, valid_codes=(0,)))
        return go

    def train_folder() -> str:
        rc, _, err = cli("train", "--dataset", f"imagefolder:{deep}", "--epochs", "1", "--width", "2", "--holdout",
                         "1", "--out", str(tmp / "never2"), "--no-progress")
        return str(classify(rc, err))

    todo += [("folders: symlink loop", "class folder linking back to the data root (evaluate --ood)",
              evaluate_folder(back)),
             ("folders: symlink loop", "link to its parent inside a class folder (train)", train_folder),
             ("folders: symlink loop", "25-level diamond of links, no loop (evaluate --ood)", evaluate_folder(diamond))]

    # --- screen outputs with non-UTF-8 file names -----------------------------------------------------------
    names = tmp / "names"
    names.mkdir()
    raws = [b"\xff\xfe.png", "\u00e9t\u00e9.png".encode(), b"caf\xc3\xa9\xff.png", b"plain.png"]
    for raw in raws:
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(os.fsdecode(os.path.join(os.fsencode(names), raw)),
                                                           format="PNG")

    def screen_names(fmt: str) -> Callable[[], str]:
        def go() -> str:
            out = tmp / f"names.{fmt}"
            rc, _, err = cli("screen", str(fresh()), str(names), "--format", fmt, "-o", str(out), "--html",
                             str(tmp / f"names-{fmt}.html"), "--no-progress")
            try:
                text = out.read_bytes().decode("utf-8") if out.exists() else ""
                rows = (text.count("\n") - 1 if fmt == "csv"
                        else len([json.loads(x) for x in text.splitlines() if x.strip()]))
            except ValueError:  # not UTF-8, or not JSON
                rows = -1
            complete = rc != 0 or rows == len(raws)
            return str(classify(rc, err, valid_codes=(0,), extra=None if complete else "fail-open"))
        return go

    todo += [("screen: non-UTF-8 file names", f"{fmt} output and review page", screen_names(fmt))
             for fmt in ("csv", "jsonl")]

    # --- outputs aimed at run files and inputs --------------------------------------------------------------
    photos = tmp / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 70 * i, np.uint8)).save(photos / f"p{i}.png")
    os.link(photos / "p1.png", tmp / "hard-p1.png")

    def guarded(args: Callable[[Path], list[str]], link: Callable[[Path], None] | None = None) -> Callable[[], str]:
        def go() -> str:
            run = fresh()
            if link is not None:
                link(run)
            before_run, before_photos = snapshot(run), snapshot(photos)
            rc, _, err = cli(*args(run))
            lost = snapshot(run) != before_run or snapshot(photos) != before_photos or (photos / "new.png").exists()
            return str(classify(rc, err, extra="data loss" if lost else None))
        return go

    def link_to(name: str, target: str) -> Callable[[Path], None]:
        def make(run: Path) -> None:
            p = tmp / f"{name}-{run.name}"
            p.symlink_to(run / target)
        return make

    def report_link(run: Path) -> None:
        (tmp / f"rep-{run.name}").mkdir()
        (tmp / f"rep-{run.name}" / "results.json").symlink_to(run / "model.json")

    screen = ("screen", "--no-progress")
    todo += [
        ("outputs: -o over a run file", "screen -o a symlink to RUN/model.json",
         guarded(lambda r: [*screen, str(r), str(photos), "-o", str(tmp / f"out.csv-{r.name}")],
                 link_to("out.csv", "model.json"))),
        ("outputs: -o over a run file", "export -o a symlink to RUN/model.safetensors",
         guarded(lambda r: ["export", str(r), "-o", str(tmp / f"m.onnx-{r.name}"), "--verify-n", "0"],
                 link_to("m.onnx", "model.safetensors"))),
        ("outputs: -o over a run file", "evaluate --out DIR whose results.json links to RUN/model.json",
         guarded(lambda r: ["evaluate", str(r), "--ood", "noise", "--out", str(tmp / f"rep-{r.name}"), *quick],
                 report_link)),
        ("outputs: -o over an input", "screen -o an image inside the screened folder",
         guarded(lambda r: [*screen, str(r), str(photos), "-o", str(photos / "p2.png")])),
        ("outputs: -o over an input", "screen -o a new .png inside the screened folder",
         guarded(lambda r: [*screen, str(r), str(photos), "-o", str(photos / "new.png")])),
        ("outputs: -o over an input", "screen -o a hard link to a screened image",
         guarded(lambda r: [*screen, str(r), str(photos), "-o", str(tmp / "hard-p1.png")])),
        ("outputs: -o over an input", "screen --html over a screened image",
         guarded(lambda r: [*screen, str(r), str(photos), "--html", str(photos / "p1.png")])),
    ]

    # --- the ONNX export of a model that outputs NaN ------------------------------------------------------
    nan_run = _nan_run(run0, tmp / "nan-run")
    previous = tmp / "previous.onnx"
    previous.write_bytes(b"the previous export, byte for byte")

    def export_nan(out: Path | None, verify: str) -> Callable[[], str]:
        def go() -> str:
            dest = out if out is not None else nan_run / "model.onnx"
            before = dest.read_bytes() if dest.exists() else None
            rc, _, err = cli("export", str(nan_run), *(["-o", str(out)] if out is not None else []), "--verify-n",
                             verify, "--data-root", str(data))
            after = dest.read_bytes() if dest.exists() else None
            if before is not None and after != before:
                extra: str | None = "data loss"
            elif rc == 0 or (before is None and after is not None):  # a NaN model exported (or "verified")
                extra = "fail-open"
            else:
                extra = None
            return str(classify(rc, err, extra=extra))
        return go

    todo += [("export: NaN model", "verified export over a previous file", export_nan(previous, "20")),
             ("export: NaN model", "--verify-n 0 to a new file", export_nan(tmp / "nan-new.onnx", "0")),
             ("export: NaN model", "default output RUN/model.onnx", export_nan(None, "20"))]

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda c: c[2](), todo))
    for (kind, case, _), outcome in zip(todo, outcomes, strict=True):
        add(kind, case, outcome)
