"""Reliability cases: fitted statistics and the checks that must refuse (issue 24), for benchmarks/reliability.py.

Every case copies the benchmark's trained run first; kinds are named by their surface.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def _tamper(run: Path, key: str, change: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Edit RUN/detectors/<key> and record the new digest everywhere it is named (what an editing user does)."""
    from safetensors import safe_open
    from safetensors.torch import save as st_save

    from l2ood.record import file_sha256, fitted_file

    path = run / fitted_file(key)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: change(k, f.get_tensor(k)) for k in f.keys()}
    path.write_bytes(st_save(tensors, metadata=meta))
    digest = file_sha256(path)
    rec = json.loads((run / "model.json").read_text())
    rec["detectors"][key]["sha256"] = digest
    for cal in rec["calibrations"].values():
        if key in (cal.get("fitted") or {}):
            cal["fitted"][key] = digest
    (run / "model.json").write_text(json.dumps(rec))


def cases(ctx: dict[str, Any]) -> None:
    tmp, data, run0 = ctx["tmp"], ctx["data"], ctx["run"]
    cli, classify, add = ctx["cli"], ctx["classify"], ctx["add"]
    imgs = tmp / "rel-fitted-imgs"
    imgs.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(imgs / f"{i}.png")

    def fresh(name: str) -> Path:
        dst = tmp / f"rel-fitted-{name}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(run0, dst, ignore=shutil.ignore_patterns(".l2ood.lock"))
        return dst

    def screen_outcome(run: Path) -> str:
        out = tmp / "rel-fitted.jsonl"
        out.unlink(missing_ok=True)
        rc, _, err = cli("screen", str(run), str(imgs), "--format", "jsonl", "-o", str(out), "--no-progress")
        recs = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        return classify(rc, err, extra="fail-open" if any(r.get("verdict") == "in" for r in recs) else None)

    edits: list[tuple[str, Callable[[str, torch.Tensor], torch.Tensor]]] = [
        ("NaN bank", lambda _k, t: torch.full_like(t, float("nan")) if t.is_floating_point() else t),
        ("infinite bank", lambda _k, t: torch.full_like(t, float("inf")) if t.is_floating_point() and t.ndim else t),
        ("float16 bank", lambda _k, t: t.half() if t.is_floating_point() else t),
        ("int8 bank", lambda _k, t: t.to(torch.int8) if t.is_floating_point() else t),
        ("bank of another width", lambda _k, t: torch.nn.functional.normalize(torch.cat([t, t], dim=1))
         if t.ndim == 2 else t),
        ("unnormalized bank", lambda _k, t: t * 3),
        ("all-zero bank", lambda _k, t: torch.zeros_like(t)),
    ]
    for case, change in edits:
        run = fresh("edit")
        assert cli("calibrate", str(run), "--detector", "knn", "--data-root", str(data), "--no-progress")[0] == 0
        _tamper(run, "knn", change)
        add("fitted statistics: edited, digest re-recorded", f"{case} (screen)", screen_outcome(run))
    # two first fits at once: both calibrations succeed and stay usable
    run = fresh("two")
    procs = [subprocess.Popen([sys.executable, "-m", "l2ood", "calibrate", str(run), "--detector", "mahalanobis",
                               "--name", n, "--data-root", str(data), "--no-progress"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for n in ("a", "b")]
    codes = [p.wait(timeout=120) for p in procs]
    usable = all(cli("screen", str(run), str(imgs), "--calibration", n, "--no-progress")[0] in (0, 1)
                 for n, c in zip("ab", codes, strict=True) if c == 0)
    add("fitted statistics: concurrent first fits", "two calibrations of one run at once",
        "valid" if codes == [0, 0] and usable else ("clear error" if 0 in codes and usable else "data loss"))
    # checks that must refuse
    run = fresh("tpr")
    for tpr in ("1e-9", "1e-300", "5e-324"):
        rc, _, err = cli("calibrate", str(run), "--tpr", tpr, "--data-root", str(data), "--no-progress")
        add("checks: vanishing --tpr", f"--tpr {tpr}", classify(rc, err, extra="fail-open" if rc == 0 else None))
    same = tmp / "rel-same.npz"
    np.savez(same, images=np.full((40, 28, 28), 90, np.uint8))
    rc, _, err = cli("calibrate", str(run), "--calibration-data", f"npz:{same}", "--no-progress")
    add("checks: constant scores", "calibration images all alike", classify(rc, err,
                                                                            extra="fail-open" if rc == 0 else None))
    rc, _, err = cli("calibrate", str(run), "--detector", "feature_norm,knn", "--alpha", "0.2",
                     "--calibration-data", f"npz:{same}", "--no-progress")
    add("checks: constant scores", "combination, every member constant", classify(
        rc, err, extra="fail-open" if rc == 0 else None))
    run = fresh("weights")
    rec = json.loads((run / "model.json").read_text())
    rec["calibrations"]["default"]["weights_sha256"] = "f" * 64
    (run / "model.json").write_text(json.dumps(rec))
    add("checks: calibration of other weights", "calibration names other weights (screen)", screen_outcome(run))
    run = fresh("valood")
    for spec in ("fashion-mnist", f"npz:{same}"):
        rc, _, err = cli("evaluate", str(run), "--ood", "noise", "--n-ood", "20", "--val-ood", spec, "--detectors",
                         "knn", "--data-root", str(data), "--no-progress", "--out", str(tmp / "rel-valood"))
        expect = "clear error" if spec == "fashion-mnist" else "valid"
        got = classify(rc, err, valid_codes=(0,))
        add("checks: validation OoD set", f"--val-ood {spec.split(':')[0]}",
            got if got != "valid" or expect == "valid" else "fail-open")
    run = fresh("init")
    from safetensors.torch import load_file, save_file

    t = load_file(str(run / "model.safetensors"))
    k = next(n for n in t if n.startswith("backbone.") and t[n].is_floating_point())
    t[k] = t[k] + 1
    save_file(t, str(run / "model.safetensors"))
    rc, _, err = cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60",
                     "--init-from", str(run), "--out", str(tmp / "rel-ft"), "--no-progress")
    add("checks: --init-from", "weights replaced after training", classify(rc, err))
    t[k] = torch.full_like(t[k], float("nan"))
    save_file(t, str(tmp / "rel-nan.safetensors"))
    rc, _, err = cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60",
                     "--init-from", str(tmp / "rel-nan.safetensors"), "--out", str(tmp / "rel-ft2"), "--no-progress")
    add("checks: --init-from", "NaN weights file", classify(rc, err))
