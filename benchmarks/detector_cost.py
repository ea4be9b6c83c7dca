"""Benchmark: fit + score time and peak memory of every feature/logit detector at CIFAR scale.

50 000 × 512 ID training features (the size of ResNet18 features on CIFAR-10's training set),
10 000 × 512 test features, 10 classes; synthetic class-conditional Gaussians (seeded). Each
detector runs in a fresh subprocess; peak memory = the process's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` after the inputs were created) during fit + score minus the RSS at that point, so
the inputs themselves are not counted.
ODIN is not included (it needs images and the model: its cost is ≈ 3 forward passes per image).

    python benchmarks/detector_cost.py            # writes its section of docs/DETECTOR_COST.md

The document also holds the section of ``benchmarks/vs_pytorch_ood.py``; each script replaces only its own
section (between its markers, :mod:`_docsection`).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docsection import replace_section  # noqa: E402
from _measure import add_shape_args, lifetime_peak_mib, peak_extra_mib, reset_peak  # noqa: E402

BEGIN, END = "<!-- detector-cost:begin -->", "<!-- detector-cost:end -->"
TITLE = "Detector cost: fit + score time and peak memory"


def child(name: str, n_train: int, n_test: int, dim: int, classes: int) -> None:
    import torch

    from l2ood.detectors import Extraction, Head, make_detector

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(classes, dim, generator=g) * 2
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    ztr = (means[ytr] + torch.randn(n_train, dim, generator=g)).relu_()
    yte = torch.randint(0, classes, (n_test,), generator=g)
    zte = (means[yte] + torch.randn(n_test, dim, generator=g)).relu_()
    w, b = torch.randn(classes, dim, generator=g) / dim**0.5, torch.zeros(classes)
    head = Head(w, b, mode="ce")
    train = Extraction(ztr, head.logits(ztr), ytr)
    test = Extraction(zte, head.logits(zte), yte)
    gc.collect()
    base, lifetime0 = reset_peak(), lifetime_peak_mib()  # the second: where the counter cannot be reset
    det = make_detector(name)
    t0 = time.perf_counter()
    if det.needs_fit:
        det.fit(train, head)
    t1 = time.perf_counter()
    s = det.score(test, head)
    t2 = time.perf_counter()
    peak = peak_extra_mib(base)
    assert s.shape == (n_test,) and torch.isfinite(s).all()
    print(json.dumps({"detector": name, "fit_s": t1 - t0, "score_s": t2 - t1,
                      "peak_extra_mib": peak if peak is not None else lifetime_peak_mib() - lifetime0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "docs" / "DETECTOR_COST.md"))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n_train, args.n_test, args.dim, args.classes)
        return
    from l2ood.detectors import DETECTORS
    from l2ood.provenance import cpu_name

    rows = []
    for name, cls in DETECTORS.items():
        if cls.needs_model:
            continue
        cmd = [sys.executable, __file__, "--child", name, "--n-train", str(args.n_train),
               "--n-test", str(args.n_test), "--dim", str(args.dim), "--classes", str(args.classes)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(r, flush=True)
        rows.append(r)
    nn_bytes = args.n_test * args.n_train * 4 / 2**20
    bank = args.n_train * args.dim * 4 / 2**20
    lines = [
        BEGIN,
        f"`python benchmarks/detector_cost.py` — {args.n_train} × {args.dim} training features, "
        f"{args.n_test} test features, {args.classes} classes (synthetic, seeded); each detector in a fresh "
        f"process; torch {__import__('torch').__version__}, 2 threads, {cpu_name()}. Peak extra "
        "memory = peak RSS during fit + score (peak counter reset via /proc/self/clear_refs) minus RSS after "
        "the inputs exist (inputs: "
        f"{(args.n_train + args.n_test) * (args.dim + args.classes) * 4 / 2**20:.0f} MiB, not counted).",
        "",
        "| detector | fit (s) | score (s) | peak extra memory (MiB) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['detector']} | {r['fit_s']:.2f} | {r['score_s']:.2f} | {r['peak_extra_mib']:.0f} |"
              for r in rows]
    lines += [
        "",
        "## Memory budgets",
        "",
        f"- A dense test × train distance matrix would need {nn_bytes:.0f} MiB in fp32; no detector "
        "allocates one.",
        f"- KNN keeps its normalized bank ({bank:.0f} MiB here, N·D·4 bytes) plus per query chunk a "
        "similarity block and running top-k of `4·q·(b + D) + 28·q·k` bytes (q = query_chunk 1024, b = bank_chunk "
        "16384, D = 512, k = 50: ≈ 67 MiB; see `l2ood.detectors.knn`).",
        "- Mahalanobis / RMDS / Mahalanobis++ / ViM stream the training features in blocks of ≤ 4 MiB "
        "(1024 rows at D = 512) and accumulate D × D moments in float64 (2 MiB for D = 512; one triangle of each "
        "block's product: BLAS `dsyrk` with one thread, torch products of the upper block triangle with more; ViM: "
        "float32 products summed in float64): extra memory O(block·D + D²), independent of N.",
        "- ReAct's percentile is exact and holds at most ~2**24 activations (64 MiB in fp32): a copy up to "
        "N·D = 2**24, above that a sampled bracket and the entries inside it: bounded whatever N.",
        END,
    ]
    replace_section(Path(args.out), BEGIN, END, "\n".join(lines), TITLE)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
