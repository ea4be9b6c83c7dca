"""What the run record costs: reading + validating model.json, rebuilding and fingerprint-checking the exact
training images, and the cached forward pass (first call vs cache hit).

    python benchmarks/run_record.py --data DATA [--out docs/PERFORMANCE.md]

Trains one throw-away width-4 ResNet18 for one epoch on CIFAR-10 (JPEG copy) minus a 5 000-image holdout so
that the run records a real 45 000-image data spec, calibrates it on the holdout (5 000 scores in the record),
then times each step (median of repeats). Writes a section of docs/PERFORMANCE.md between markers.

DATA is the data folder holding ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg`` (docs/PERFORMANCE.md, "Data
layout"); ``--data`` defaults to the environment variable ``L2OOD_DATA``. The page shows it as ``DATA``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _docsection import replace_section
from l2ood.data import load_dataset
from l2ood.data.imageset import pixel_fingerprint
from l2ood.models import ModelConfig
from l2ood.pipeline import training_data
from l2ood.provenance import code_version_line
from l2ood.record import read_record
from l2ood.run import Run
from l2ood.runtime import cpu_supports_bf16
from l2ood.screen import calibrate_run
from l2ood.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- run-record:begin -->", "<!-- run-record:end -->"


def _median(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "CPU")
    return f"{name} ({'AVX-512-BF16' if 'avx512_bf16' in info else 'no AVX-512-BF16'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=os.environ.get("L2OOD_DATA") or None,
                    help="the data folder DATA/ with cifar10-jpeg/{train,test} (default: $L2OOD_DATA)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    args = ap.parse_args()
    if not args.data:
        ap.error("no data folder: pass --data DATA or set L2OOD_DATA (the layout is in docs/PERFORMANCE.md, "
                 "'Data layout')")
    spec = f"imagefolder:{args.data}/cifar10-jpeg/train"
    t0 = time.perf_counter()
    train_set, _ = training_data(spec, holdout=5000)
    first_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train(train_set, ModelConfig(width=4), TrainConfig(epochs=1, batch_size=256, pad=4), run_dir,
              test_data=f"imagefolder:{args.data}/cifar10-jpeg/test", progress=False, log=None)
        calibrate_run(run_dir)
        size_kib = (run_dir / "model.json").stat().st_size / 1024
        t_fp = _median(lambda: pixel_fingerprint(train_set.images), 5)
        t_read = _median(lambda: read_record(run_dir), 20)
        t_load = _median(lambda: Run.load(run_dir), 20)
        t_split = _median(lambda: Run.load(run_dir).train_split(), 3)
        run = Run.load(run_dir)
        test = load_dataset(f"imagefolder:{args.data}/cifar10-jpeg/test", "test")
        t_first = _median(lambda: run.forward(test, cache=False), 3)
        run.forward(test)  # fill the cache
        t_cached = _median(lambda: run.forward(test), 5)
    rt = "bf16 + channels_last" if cpu_supports_bf16() else "fp32"
    rows = [
        ("decode CIFAR-10 (JPEG copy) train split, first load of this process (decode cache may be warm)",
         f"{first_load:.2f} s"),
        (f"SHA-1 fingerprint of the {len(train_set)} training images ({train_set.images.numel() / 2**20:.0f} MiB)",
         f"{t_fp:.3f} s"),
        (f"read + validate model.json ({size_kib:.0f} KiB, 5 000 calibration scores)", f"{1000 * t_read:.1f} ms"),
        ("`Run.load` (the above + SHA-256 of the weights)", f"{1000 * t_load:.1f} ms"),
        ("`Run.train_split()`: rebuild the exact 45 000 images from the record + fingerprint check",
         f"{t_split:.2f} s"),
        (f"`Run.forward` on 10 000 test images, width-4 ResNet18 ({rt}), no cache", f"{t_first:.2f} s"),
        ("`Run.forward`, same images, cache hit", f"{1000 * t_cached:.1f} ms"),
    ]
    text = "\n".join([
        BEGIN,
        "## Run record overhead (cpu)",
        "",
        f"`python benchmarks/run_record.py --data DATA` on {_cpu()} (2 cores, {torch.get_num_threads()} torch "
        f"threads), {code_version_line()}; medians of repeats. CIFAR-10 (JPEG copy) from `DATA/cifar10-jpeg` "
        "(see Data layout).",
        "",
        "| step | time |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "Reading and validating a record is milliseconds; the checks that make a run trustworthy (weights digest, "
        "data fingerprint) cost well under a second at CIFAR scale; a repeated forward pass over a data set is "
        "served from `RUN/cache/`.",
        END,
    ])
    print(text)
    out = Path(args.out)
    replace_section(out, BEGIN, END, text, "Performance")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
