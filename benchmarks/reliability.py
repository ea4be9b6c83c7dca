"""Hostile inputs and faults through the real command line; writes docs/RELIABILITY.md.

    python benchmarks/reliability.py [--out docs/RELIABILITY.md]

Every case runs ``python -m l2ood ...`` in a subprocess (60 s timeout) and is classified:

* **clear error** — exit 2 (or 1 for ``screen``, with an error record per bad input), one message, no traceback;
* **valid** — the command succeeded on an input that is in fact usable (for kills: everything written before is
  intact and the command can be run again);
* **traceback** — a Python traceback on stderr, or exit 3 (internal error);
* **hang** — the timeout expired; **crash** — killed by a signal;
* **fail-open** — a bad input or a broken model got the verdict "in", or a non-standard JSON token was written;
* **data loss** — a file that existed before the command changed or disappeared.

Inputs: the committed corpus (tests/corpus, see make_corpus.py) through the parser that reads each kind, plus
fault scenarios (full disk, read-only run folder, a second writer, SIGKILL during calibrate, FIFOs and devices,
a model that outputs NaN, non-finite thresholds, training into occupied folders).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
sys.path.insert(0, str(ROOT))
OUTCOMES = ("clear error", "valid", "traceback", "hang", "crash", "fail-open", "data loss")


def cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    try:
        p = subprocess.run([sys.executable, "-m", "l2ood", *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", ""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".l2ood.lock" and "cache" not in p.parts and "eval" not in p.parts}


def classify(rc: int | None, err: str, ok_codes: tuple[int, ...] = (2,), valid_codes: tuple[int, ...] = (),
             extra: str | None = None) -> str:
    if rc is None:
        return "hang"
    if rc < 0:
        return "crash"
    if "Traceback" in err or rc == 3:
        return "traceback"
    if extra:
        return extra
    if rc in valid_codes:
        return "valid"
    if rc in ok_codes:
        return "clear error"
    return "traceback"


def jsonl_records(path: Path) -> list[dict[str, object]]:
    def refuse(tok: str) -> float:
        raise ValueError(tok)

    return [json.loads(x, parse_constant=refuse) for x in path.read_text().splitlines() if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "docs" / "RELIABILITY.md"))
    args = ap.parse_args()
    from tests.conftest import mounted, write_idx_dataset

    rows: list[tuple[str, str, str]] = []  # (class, case, outcome)
    tmp = Path(tempfile.mkdtemp(prefix="l2ood-reliability-"))
    env = {"L2OOD_CACHE": str(tmp / "cache"), "L2OOD_LOG_DIR": str(tmp / "logs")}
    os.environ.update(env)
    data = tmp / "data"
    write_idx_dataset(data / "fashion-mnist", 300, 100, "bars", seed=10)
    run = tmp / "run"
    t0 = time.perf_counter()
    assert cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60", "--out",
               str(run), "--no-progress", "--precision", "fp32")[0] == 0
    assert cli("calibrate", str(run), "--data-root", str(data), "--no-progress")[0] == 0
    ok_img = tmp / "ok.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(ok_img)

    def add(kind: str, case: str, outcome: str) -> None:
        rows.append((kind, case, outcome))
        print(f"{kind:28s} {case:40s} {outcome}", flush=True)

    def screen_case(kind: str, case: str, inputs: list[str], bad: set[str]) -> None:
        out = tmp / "screen.jsonl"
        out.unlink(missing_ok=True)
        before = snapshot(run)
        rc, _, err = cli("screen", str(run), *inputs, "--format", "jsonl", "-o", str(out), "--no-progress")
        extra = None
        try:
            recs = jsonl_records(out) if out.exists() else []
        except ValueError:
            extra = "fail-open"
            recs = []
        if any(r.get("verdict") == "in" and Path(str(r["path"])).name in bad for r in recs):
            extra = "fail-open"
        if snapshot(run) != before:
            extra = "data loss"
        add(kind, case, classify(rc, err, ok_codes=(1,), extra=extra))

    # --- corpus through the parsers that read each kind of file --------------------------------------------
    for f in sorted((CORPUS / "images").iterdir()):
        screen_case("image file (screen)", f.name, [str(f)], {f.name})
    for f in sorted((CORPUS / "npz").iterdir()):
        screen_case("npz pack (screen)", f.name, [str(f)], {f.name})
        rc, _, err = cli("evaluate", str(run), "--ood", f"npz:{f}", "--no-progress", "--out", str(tmp / "ev"))
        add("npz pack (evaluate --ood)", f.name, classify(rc, err))
    for d in sorted((CORPUS / "record").iterdir()):
        case = tmp / "records" / d.name
        shutil.copytree(d, case)
        shutil.copy(run / "model.safetensors", case / "model.safetensors")
        before = snapshot(case)
        rc, _, err = cli("screen", str(case), str(ok_img), "--no-progress")
        add("run record (screen)", d.name, classify(rc, err, extra="data loss" if snapshot(case) != before else None))
        rc, _, err = cli("calibrate", str(case), "--data-root", str(data), "--no-progress")
        add("run record (calibrate)", d.name,
            classify(rc, err, extra="data loss" if snapshot(case) != before else None))
    for d in sorted((CORPUS / "checkpoint").iterdir()):
        case = tmp / "ckpts" / d.name
        shutil.copytree(d, case)
        before = snapshot(case)
        rc, _, err = cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60",
                         "--out", str(case), "--resume", "--no-progress")
        add("checkpoint (train --resume)", d.name,
            classify(rc, err, extra="data loss" if snapshot(case) != before else None))
    for f in sorted((CORPUS / "imglist").iterdir()):
        rc, _, err = cli("evaluate", str(run), "--ood", f"imglist:{f}@{tmp}", "--no-progress", "--out",
                         str(tmp / "ev"))
        add("image list (evaluate --ood)", f.name, classify(rc, err))
    for d in sorted((CORPUS / "cifar").iterdir()):
        rc, _, err = cli("evaluate", str(run), "--ood", "cifar10", "--data-root", str(d), "--no-progress",
                         "--out", str(tmp / "ev"), env={"L2OOD_CACHE": str(tmp / "nocache")})
        add("CIFAR batch (evaluate --ood)", d.name, classify(rc, err))

    # --- fault scenarios ------------------------------------------------------------------------------------
    import torch

    from l2ood import record as rec_mod
    from l2ood.run import Run
    from l2ood.train.artifact import save_weights

    nan_run = tmp / "nan_run"
    shutil.copytree(run, nan_run)
    model = Run.load(nan_run).model
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_weights(nan_run, model)
    nan_digest = rec_mod.file_sha256(nan_run / "model.safetensors")
    rec_mod.update_record(nan_run, lambda r: r.model_copy(update={  # the calibration re-tied to the NaN weights too
        "weights_sha256": nan_digest, "calibrations": {n: dataclasses.replace(c, weights_sha256=nan_digest)
                                                       for n, c in r.calibrations.items()}}))
    out = tmp / "nan.jsonl"
    rc, _, err = cli("screen", str(nan_run), str(ok_img), "--format", "jsonl", "-o", str(out), "--no-progress")
    recs = jsonl_records(out)
    add("model gives NaN scores", "screen (calibrated)",
        classify(rc, err, ok_codes=(1,), extra="fail-open" if any(r["verdict"] == "in" for r in recs) else None))
    for bad in ("nan", "inf", "-inf"):
        rc, _, err = cli("screen", str(run), str(ok_img), f"--threshold={bad}", "--no-progress")
        add("non-finite threshold", bad, classify(rc, err))

    fifo_dir = tmp / "fifos"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "pipe.png")
    os.mkfifo(fifo_dir / "pipe.npz")
    screen_case("special files", "FIFOs named .png/.npz in a folder", [str(fifo_dir)], {"pipe.png", "pipe.npz"})
    screen_case("special files", "/dev/zero named explicitly", ["/dev/zero"], {"zero"})
    screen_case("special files", "/dev/null named explicitly", ["/dev/null"], {"null"})

    occupied = tmp / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("years of work")
    before = snapshot(occupied)
    rc, _, err = cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60",
                     "--out", str(occupied), "--no-progress")
    add("training into an occupied folder", "foreign file, no flag",
        classify(rc, err, extra="data loss" if snapshot(occupied) != before else None))
    rc, _, err = cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60",
                     "--out", str(occupied), "--no-progress", "--overwrite")
    add("training into an occupied folder", "foreign file, --overwrite",
        classify(rc, err, valid_codes=(0,),
                 extra="data loss" if (occupied / "thesis.tex").read_text() != "years of work" else None))
    before = snapshot(run)
    rc, _, err = cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60",
                     "--out", str(run), "--no-progress")
    add("training into an occupied folder", "finished run, no --resume",
        classify(rc, err, extra="data loss" if snapshot(run) != before else None))
    for target in ("model.json", "model.safetensors"):
        rc, _, err = cli("screen", str(run), str(ok_img), "-o", str(run / target), "--no-progress")
        add("output over a run file", f"screen -o RUN/{target}",
            classify(rc, err, extra="data loss" if snapshot(run) != before else None))

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom l2ood.runfolder import run_lock\n"
                               f"with run_lock({str(run)!r}, 'holder'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    rc, _, err = cli("calibrate", str(run), "--data-root", str(data), "--no-progress", "--name", "second")
    add("two writers", "calibrate while another process holds the run",
        classify(rc, err, extra="data loss" if snapshot(run) != before else None))
    rc, _, err = cli("train", "--data-root", str(data), "--epochs", "2", "--width", "2", "--holdout", "60",
                     "--out", str(run), "--resume", "--no-progress")
    add("two writers", "train --resume while another process holds the run",
        classify(rc, err, extra="data loss" if snapshot(run) != before else None))
    holder.kill()
    holder.wait()

    with mounted(["-t", "tmpfs", "-o", "size=8m", "tmpfs"], tmp / "disk") as ok:
        if ok:
            drun = tmp / "disk" / "run"
            shutil.copytree(run, drun, ignore=shutil.ignore_patterns("cache", "eval"))
            dbefore = snapshot(drun)
            with contextlib.suppress(OSError), open(tmp / "disk" / "filler", "wb", buffering=0) as f:
                while True:
                    f.write(bytes(65536))
            rc, _, err = cli("calibrate", str(drun), "--data-root", str(data), "--no-progress", "--name", "x")
            add("full disk", "calibrate", classify(rc, err, extra="data loss" if snapshot(drun) != dbefore else None))
            rc, _, err = cli("train", "--data-root", str(data), "--epochs", "1", "--width", "2", "--holdout", "60",
                             "--out", str(tmp / "disk" / "new"), "--no-progress")
            add("full disk", "train (first checkpoint cannot be written)",
                classify(rc, err, extra="data loss" if snapshot(drun) != dbefore else None))
            rc, _, err = cli("evaluate", str(drun), "--ood", "noise", "--n-ood", "16", "--no-progress")
            add("full disk", "evaluate (cache and report cannot be written)",
                classify(rc, err, extra="data loss" if snapshot(drun) != dbefore else None))
    with mounted(["--bind", "-o", "ro", str(run)], tmp / "ro") as ok:
        if ok:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(tmp / "ro")], capture_output=True)
            rbefore = snapshot(run)
            rc, _, err = cli("calibrate", str(tmp / "ro"), "--data-root", str(data), "--no-progress", "--name", "x")
            add("read-only run folder", "calibrate",
                classify(rc, err, extra="data loss" if snapshot(run) != rbefore else None))
            rc, _, err = cli("evaluate", str(tmp / "ro"), "--ood", "noise", "--n-ood", "16", "--no-progress",
                             "--out", str(tmp / "ro-report"))
            add("read-only run folder", "evaluate --out elsewhere", classify(rc, err, valid_codes=(0,)))

    rng = np.random.default_rng(0)
    for i, delay in enumerate(rng.uniform(0.5, 3.5, size=8)):
        p = subprocess.Popen([sys.executable, "-m", "l2ood", "calibrate", str(run), "--data-root", str(data),
                              "--no-progress", "--name", "k"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(delay))
        p.send_signal(signal.SIGKILL)
        p.wait()
        try:
            rec = rec_mod.read_record(run)
            outcome = "valid" if "default" in rec.calibrations else "data loss"  # record intact
        except Exception:
            outcome = "data loss"
        add("SIGKILL during calibrate", f"kill #{i + 1} after {delay:.2f} s", outcome)
    for i, steps in enumerate((1, 3, 7)):
        kr = tmp / f"kill-train-{i}"
        p = subprocess.Popen([sys.executable, "-m", "l2ood", "train", "--data-root", str(data), "--epochs", "3",
                              "--width", "2", "--holdout", "60", "--out", str(kr), "--no-progress",
                              "--checkpoint-every-steps", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0 + steps * 0.4)
        p.send_signal(signal.SIGKILL)
        p.wait()
        rc, _, err = cli("train", "--data-root", str(data), "--epochs", "3", "--width", "2", "--holdout", "60",
                         "--out", str(kr), "--no-progress", "--resume")
        add("SIGKILL during training", f"kill #{i + 1}, then --resume", classify(rc, err, valid_codes=(0,)))

    # the newer surfaces: one module each (benchmarks/_rel_*.py), given this run, its data and the helpers above
    import importlib

    ctx = {"tmp": tmp, "data": data, "run": run, "cli": cli, "classify": classify, "snapshot": snapshot,
           "jsonl_records": jsonl_records, "add": add}
    for name in sorted(p.stem for p in (ROOT / "benchmarks").glob("_rel_*.py")):
        importlib.import_module(f"benchmarks.{name}").cases(ctx)

    seconds = time.perf_counter() - t0
    write_doc(Path(args.out), rows, seconds)
    shutil.rmtree(tmp, ignore_errors=True)


#: the surface of each older class of cases (newer classes name theirs before a colon: "service: body framing")
SURFACES = {
    "image file (screen)": "data path", "npz pack (screen)": "data path", "npz pack (evaluate --ood)": "data path",
    "image list (evaluate --ood)": "data path", "CIFAR batch (evaluate --ood)": "data path",
    "special files": "data path", "run record (screen)": "run record", "run record (calibrate)": "run record",
    "checkpoint (train --resume)": "run record", "model gives NaN scores": "calibration edges",
    "non-finite threshold": "calibration edges", "training into an occupied folder": "outputs",
    "output over a run file": "outputs", "two writers": "faults", "full disk": "faults",
    "read-only run folder": "faults", "SIGKILL during calibrate": "faults", "SIGKILL during training": "faults",
}


def surface(kind: str) -> str:
    """The surface a class of cases belongs to (service, fitted statistics, data path, export, ...)."""
    if ":" in kind:
        return kind.split(":", 1)[0].strip()
    if kind.startswith("decode budget"):
        return "decode budget"
    return SURFACES.get(kind, "other")


def native_crash_section(path: Path) -> list[str]:
    """The native-crash part: what benchmarks/native_crash.py measured (docs/results/native_crash.json)."""
    lines = ["", "## Native crashes in training", "",
             "A crash inside a compiled kernel (SIGSEGV, or SIGABRT from a heap check such as \"double free or "
             "corruption\") cannot be caught by Python. Reported: CIFAR ResNet18 at width 8 on 224 or 128 px inputs "
             "with CPU bf16 autocast + channels_last aborted in `loss.backward()` (fp32, width 16 and 64 px did not), "
             "and width 4/8 models on odd batch sizes. What l2ood does about it:", "",
             "- training checkpoints every 500 steps by default (`--checkpoint-every-steps`), so a native crash "
             "loses at most the steps since the last checkpoint, and `--resume` continues bit for bit "
             "(tests/test_resume_kill.py: SIGABRT and SIGSEGV mid-epoch, then `--resume`, equal weights);",
             "- Python's fault handler is on during training: a crash prints the Python stack it happened in.", "",
             "`benchmarks/native_crash.py` is a torch-only reproducer (a plain-torch CIFAR ResNet18 with the L2 head, "
             "each configuration in its own process)."]
    if not path.is_file():
        return [*lines, "", "It has not been run yet on this checkout."]
    res = json.loads(path.read_text())
    env = res["env"]
    lines += ["", f"Measured on {env['cpu']} ({env['isa']}; oneDNN native bf16: {env['onednn_native_bf16']}), torch "
              f"{env['torch']}, {res['steps']} steps each:", "",
              "| width | side | batch | precision | memory format | outcome |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['side']} | {r['batch']} | {r['precision']} | {r['format']} | {r['outcome']} |"
              for r in res["rows"]]
    if not env["onednn_native_bf16"]:
        lines += ["", "This CPU has no native bf16 kernels, so bf16 autocast runs other code there and l2ood's "
                      "default precision on it is fp32: the crash cannot occur on it. Where the crash is reproduced "
                      "(a CPU with AVX-512-BF16 or AMX), the failing op and shapes decide which layers to keep in "
                      "fp32 or contiguous format; that decision is still to be made."]
    return lines


def write_doc(out: Path, rows: list[tuple[str, str, str]], seconds: float) -> None:
    from l2ood.provenance import code_version_line

    kinds = list(dict.fromkeys(k for k, _, _ in rows))
    total = Counter(o for _, _, o in rows)
    lines = ["# Reliability: hostile inputs and faults", "",
             f"`python benchmarks/reliability.py` — {len(rows)} cases through the real command line (each a "
             f"subprocess, 60 s timeout), {seconds:.0f} s on this machine; {code_version_line()}.", "",
             "Outcome classes: **clear error** (exit 2, or exit 1 with an error record per bad input for `screen`; "
             "one message, no traceback), **valid** (the input was usable and the command succeeded; for kills: "
             "everything written before was intact and the rerun succeeded), **traceback**, "
             "**hang**, **crash**, **fail-open** (a bad input or broken model judged \"in\", or non-standard JSON), "
             "**data loss** (a file that existed before changed or vanished).", "",
             "| totals | " + " | ".join(OUTCOMES) + " |", "|---|" + "---|" * len(OUTCOMES),
             f"| all {len(rows)} cases | " + " | ".join(str(total.get(o, 0)) for o in OUTCOMES) + " |", "",
             "| surface | cases | " + " | ".join(OUTCOMES) + " |", "|---|---|" + "---|" * len(OUTCOMES)]
    for sf in dict.fromkeys(surface(k) for k in kinds):
        c = Counter(o for kk, _, o in rows if surface(kk) == sf)
        lines.append(f"| {sf} | {sum(c.values())} | " + " | ".join(str(c.get(o, 0)) for o in OUTCOMES) + " |")
    lines += ["", "| class of input or fault | cases | " + " | ".join(OUTCOMES) + " |",
             "|---|---|" + "---|" * len(OUTCOMES)]
    for k in kinds:
        c = Counter(o for kk, _, o in rows if kk == k)
        lines.append(f"| {k} | {sum(c.values())} | " + " | ".join(str(c.get(o, 0)) for o in OUTCOMES) + " |")
    lines += ["", "Goal: 0 tracebacks, 0 hangs, 0 crashes, 0 fail-open, 0 data loss.", "", "## Every case", "",
              "| class | case | outcome |", "|---|---|---|"]
    lines += [f"| {k} | `{c}` | {o} |" for k, c, o in rows]
    lines += ["", "The same inputs are checked in the test suite: tests/test_corpus.py (each parser, plus hypothesis "
              "fuzzing, bounded time and memory) and tests/test_faults.py (the fault scenarios)."]
    lines += native_crash_section(ROOT / "docs" / "results" / "native_crash.json")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
