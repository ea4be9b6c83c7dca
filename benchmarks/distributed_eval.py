"""Distributed evaluation (issue 26): wall time of `l2ood evaluate` on 1 vs 2 ranks, and the memory per rank of the
Mahalanobis and KNN fits at ImageNet scale.

Run alone (it uses every core and, at the default N, tens of GB of memory):

    python benchmarks/distributed_eval.py                      # writes docs/results/distributed_eval.json and the
                                                               # "Distributed evaluation" section of PERFORMANCE.md
    python benchmarks/distributed_eval.py --n-fit 20000 --n-train 600 --n-test 300 --repeats 1 \\
        --json /tmp/de.json --doc /tmp/de.md                   # a smoke test in about a minute

1. **Wall time** (CPU, gloo): a small run is trained once on generated Fashion-MNIST-like IDX files (class-k
   gratings) in ``--work``; then, alternating, ``l2ood evaluate`` of a fresh copy of it (no cache, no fitted
   detector) vs generated MNIST-like OoD images, in one process with ``T`` threads and under
   ``torchrun --standalone --nproc_per_node 2`` with ``T/2`` threads per rank (``T`` = the cores), each command
   timed whole (start-up included); the median of ``--repeats`` pairs. The two runs' metrics are compared.
2. **Memory per rank** of fitting ``mahalanobis`` and ``knn`` on ``N × D`` simulated features (float32, default
   ``N = 1 281 167``, ImageNet-1k's training set, ``D = 2048``, ResNet50's features: 10.5 GB) with ``C`` logits
   (default 1000, another 5.1 GB) and labels, on 1 and on 2 ranks (gloo, this machine). Each rank holds only its
   shard of the rows, as ``Run.forward(gather=False)`` leaves it; the fit goes through
   :class:`l2ood.columns.Column` as in an evaluation: the Gaussian fit all-reduces per-rank sufficient statistics,
   KNN keeps its shard's rows as its bank (then gathers them to rank 0 alone, as saving the fit does). Peak resident
   memory per rank (``VmHWM``, reset through ``/proc/self/clear_refs`` once the shard is built, so the peak covers
   the fit with the shard held) and the resident memory before the fit.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docsection import replace_section  # noqa: E402
from _measure import peak_extra_mib, reset_peak, status_kib  # noqa: E402

BEGIN, END = "<!-- distributed-eval:begin -->", "<!-- distributed-eval:end -->"
GIB = 2**30


# ------------------------------------------------------------------------------------------------ data and run

def _gratings(n: int, seed: int, vertical: bool) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28×28 uint8 images: class k is a grating of k+1 periods (random phase) plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    pos = np.arange(28) / 28
    wave = np.sin(2 * np.pi * (y[:, None] + 1) * pos[None, :] + rng.uniform(0, 2 * np.pi, n)[:, None])
    img = np.broadcast_to(wave[:, None, :] if vertical else wave[:, :, None], (n, 28, 28))
    x = np.clip(128 + 90 * img + rng.normal(0, 10, (n, 28, 28)), 0, 255).astype(np.uint8)
    return x, y.astype(np.uint8)


def _data(root: Path, n_train: int, n_test: int) -> None:
    from l2ood.data.idx import write_idx

    for name, vertical, seed in (("fashion-mnist", False, 10), ("mnist", True, 20)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
            x, y = _gratings(n, s, vertical)
            write_idx(folder / f"{split}-images-idx3-ubyte.gz", x)
            write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y)


def _env(threads: int, work: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "L2OOD_CACHE": str(work / "cache")}


def wall(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work) / f"n{args.n_train}-t{args.n_test}-w{args.width}"  # one run per size
    data, run = work / "data", work / "run"
    cores = os.cpu_count() or 2
    if not (run / "model.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        _data(data, args.n_train, args.n_test)
        p = subprocess.run([sys.executable, "-m", "l2ood", "train", "--data-root", str(data), "--epochs", "1",
                            "--width", str(args.width), "--holdout", "0", "--out", str(run), "--precision", "fp32",
                            "--device", "cpu", "--no-progress"], capture_output=True, text=True,
                           env=_env(cores, work))
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
    common = ["--ood", "mnist", "--detectors", args.detectors, "--data-root", str(data), "--device", "cpu",
              "--precision", "fp32", "--no-progress"]
    times: dict[int, list[float]] = {1: [], 2: []}
    results: dict[int, Any] = {}
    for rep in range(args.repeats):
        for world in (1, 2):
            copy = work / f"eval-{world}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cache", "detectors", "eval"))
            launch = [sys.executable, "-m", "l2ood"] if world == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", "-m",
                "l2ood"]
            t0 = time.perf_counter()
            p = subprocess.run([*launch, "evaluate", str(copy), *common, "--out", str(work / f"report-{world}")],
                               capture_output=True, text=True, env=_env(max(1, cores // world), work))
            dt = time.perf_counter() - t0
            if p.returncode:
                raise SystemExit(p.stderr[-3000:])
            times[world].append(dt)
            results[world] = json.loads((copy / "eval" / "results.json").read_text())["runs"]
            print(f"repeat {rep}: {world} rank(s) {dt:.1f} s", flush=True)
    (one,), (two,) = results[1].values(), results[2].values()
    diffs = {f"{ds}/{det}": abs(m["auroc"] - two["ood"][ds]["detectors"][det]["auroc"])
             for ds, e in one["ood"].items() for det, m in e["detectors"].items()}
    same = [k for k, v in diffs.items() if v == 0.0]
    med = {w: statistics.median(t) for w, t in times.items()}
    return {"cores": cores, "threads": {"1": cores, "2": max(1, cores // 2)}, "n_train": args.n_train,
            "n_test": args.n_test, "width": args.width, "detectors": args.detectors, "seconds": times,
            "median_s": med, "ratio_2_over_1": med[2] / med[1], "auroc_identical": same, "auroc_compared": len(diffs),
            "auroc_max_abs_diff": max(diffs.values())}


# ------------------------------------------------------------------------------------------------ memory

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_child(det: str, n: int, d: int, c: int) -> None:
    """One rank: build this rank's shard of the simulated extraction, then fit ``det`` as an evaluation does."""
    import torch

    from l2ood.columns import Column
    from l2ood.detectors import Extraction, Head
    from l2ood.distributed import batch_shard, dist_from_env, ensure_group

    info = ensure_group("cpu")
    start, stop = batch_shard(n, 512, info)
    rows = stop - start
    feats = torch.empty(rows, d)
    logits = torch.empty(rows, c)
    for s in range(0, rows, 65536):  # seeded by global block, so the rows do not depend on the ranks
        g = torch.Generator().manual_seed(start + s)
        m = min(65536, rows - s)
        feats[s : s + m] = torch.rand(m, d, generator=g).mul_(2).relu_()
        logits[s : s + m] = torch.randn(m, c, generator=g)
    labels = torch.arange(start, stop) % c
    head = Head(torch.randn(c, d) / d**0.5, torch.zeros(c))
    part = Extraction(feats, logits, labels, sharded=info.active)
    del feats, logits
    gc.collect()
    before = status_kib("VmRSS") / 1024
    base = reset_peak()
    col = Column.of(det, "ce")
    t0 = time.perf_counter()
    if col.shard_fit:
        col.fit(part, head)
    else:  # as evaluate's fit features: gather once, drop the shard, fit on the rows of every rank
        full = part.gather()
        del part
        gc.collect()
        col.fit(full, head)
    dt = time.perf_counter() - t0
    extra = peak_extra_mib(base)
    row = {"detector": det, "world": info.world, "rank": dist_from_env().rank, "rows": rows,
           "rss_before_fit_mib": round(before), "peak_rss_mib": round(status_kib("VmHWM") / 1024),
           "peak_extra_mib": None if extra is None else round(extra), "fit_s": round(dt, 2)}
    if getattr(col.detector, "sharded", False):  # a sharded fit is saved whole: rank 0 gathers it alone
        whole = col.detector.gathered()
        row["peak_rss_save_mib"] = round(status_kib("VmHWM") / 1024)
        del whole
    print(json.dumps(row), flush=True)


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for det in args.memory_detectors.split(","):
        for world in (1, 2):
            port, procs = _free_port(), []
            for rank in range(world):
                env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // world))}
                if world > 1:
                    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                               LOCAL_RANK=str(rank))
                procs.append(subprocess.Popen([sys.executable, __file__, "--child", det, str(args.n_fit),
                                               str(args.dim), str(args.classes)], env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
            for p in procs:
                out, err = p.communicate()
                if p.returncode:
                    raise SystemExit(f"{det} on {world} rank(s): {err[-3000:]}")
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ report

def render(res: dict[str, Any]) -> str:
    w, mem = res["wall"], res["memory"]
    n, d, c = res["n_fit"], res["dim"], res["classes"]

    def size(b: float) -> str:
        return f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.0f} MB"

    lines = [BEGIN, "## Distributed evaluation (`benchmarks/distributed_eval.py`)", "",
             f"Measured on {res['machine']}, torch {res['torch']}, gloo on the CPU. Raw numbers: "
             "`docs/results/distributed_eval.json`.", "",
             f"**Wall time of `l2ood evaluate`** (a ResNet18 width {w['width']} run trained 1 epoch on "
             f"{w['n_train']} generated 28×28 images; {w['n_test']} ID test and {w['n_test']} OoD images; detectors "
             f"`{w['detectors']}`; a fresh copy of the run each time, so every forward pass and fit is done; the whole "
             f"command timed, start-up included; median of {len(w['seconds'][1])} alternating pairs; "
             f"{w['cores']} cores: one process with {w['threads']['1']} threads vs `torchrun --nproc_per_node 2` with "
             f"{w['threads']['2']} per rank):", "",
             "| ranks | seconds (median) | all runs |", "|---|---|---|"]
    for k in (1, 2):
        lines.append(f"| {k} | {w['median_s'][k]:.1f} | {', '.join(f'{t:.1f}' for t in w['seconds'][k])} |")
    lines += ["", f"2 ranks / 1 rank: **{w['ratio_2_over_1']:.2f}**. AUROC identical in "
              f"{len(w['auroc_identical'])} of {w['auroc_compared']} column × data set entries; largest "
              f"difference {w['auroc_max_abs_diff']:.2g}" + (" (the Gaussian fits from shards sum float64 statistics "
                                                             "in another order)." if w["auroc_max_abs_diff"] else "."),
              "",
              f"**Memory per rank of a fit** on N = {n:,} × D = {d} simulated float32 features ({size(n * d * 4)}) "
              f"with C = {c} logits ({size(n * c * 4)}) and labels. Each rank holds its shard of the rows before the "
              "fit (as a distributed evaluation leaves the training pass); Mahalanobis reduces per-rank statistics "
              "(float64 all-reduce of counts, class sums and the D×D second moment), KNN keeps the normalized "
              "rows of its shard as its bank (on 2 ranks; then its rows go to rank 0 alone to be saved as one file). "
              "Peak RSS = the process's peak while fitting (shard included); for a sharded KNN also the peak after "
              "the gather that saving needs:", "",
              "| detector | ranks | rank | rows held | RSS before fit (MiB) | peak RSS (MiB) | peak above that | "
              "fit s | peak RSS with the save's gather (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in mem:
        lines.append(f"| {r['detector']} | {r['world']} | {r['rank']} | {r['rows']:,} | {r['rss_before_fit_mib']} | "
                     f"{r['peak_rss_mib']} | {r['peak_extra_mib']} | {r['fit_s']} | "
                     f"{r.get('peak_rss_save_mib', '—')} |")
    before = res.get("knn_gathered")
    if before:
        lines += ["", f"Before the sharded bank ({before['note']}), KNN on 2 ranks gathered every row on every "
                  "rank, the shard dropped, and kept the whole bank there:", "",
                  "| ranks | rank | rows held before the fit | peak RSS (MiB) | fit s |", "|---|---|---|---|---|"]
        for r in before["rows"]:
            lines.append(f"| {r['world']} | {r['rank']} | {r['rows']:,} | {r['peak_rss_mib']} | {r['fit_s']} |")
    target = res.get("project_n") or 0
    if target > n:
        lines += ["", f"Projected to N = {target:,} (every term but the interpreter and the D×D statistics grows "
                  "linearly in N, so this scales the whole peak and slightly overestimates): "
                  + "; ".join(f"{r['detector']} on {r['world']} rank(s): "
                              f"{r['peak_rss_mib'] * target / n / 1024:.1f} GiB per rank"
                              for r in mem if r["rank"] == 0) + "."]
    lines += ["", "Mahalanobis on K ranks: each rank holds N/K rows and a few D×D float64 matrices, never all N. "
              "KNN on K ranks: each rank holds N/K rows of the extraction and of the bank, and scores its queries "
              "against its rows (the ranks then merge their top k); rank 0 holds all N bank rows once, while it "
              "saves a new fit.", END]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-fit", type=int, default=1_281_167, help="rows of the simulated fit (default: ImageNet-1k)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--project-n", type=int, default=1_281_167,
                    help="when --n-fit is smaller, also print the peak memory scaled linearly to this many rows")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=20000, help="training images of the wall-time run")
    ap.add_argument("--n-test", type=int, default=10000, help="ID test and OoD images of the wall-time run")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--detectors", default="feature_norm,msp,energy,mahalanobis,knn,odin")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "l2ood-distributed-eval"))
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "distributed_eval.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    ap.add_argument("--skip-wall", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-detectors", default="mahalanobis,knn", help="fits measured for memory")
    ap.add_argument("--knn-before", metavar="JSON",
                    help="a results JSON of this script measured before KNN's bank was sharded: its 2-rank KNN rows "
                         "are kept and shown beside the new ones")
    ap.add_argument("--knn-before-note", default="", help="which code measured --knn-before (e.g. a commit)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        det, n, d, c = args.child
        memory_child(det, int(n), int(d), int(c))
        return
    import platform

    import torch

    res: dict[str, Any] = {"machine": f"{_cpu_name() or platform.machine()}, {os.cpu_count()} cores",
                           "torch": torch.__version__, "n_fit": args.n_fit, "dim": args.dim, "classes": args.classes,
                           "project_n": args.project_n}
    path = Path(args.json)
    old = json.loads(path.read_text()) if path.is_file() else {}
    res["wall"] = old.get("wall") if args.skip_wall else wall(args)
    res["memory"] = old.get("memory") if args.skip_memory else memory(args)
    if args.skip_memory and old:  # the shape the stored memory rows were measured at
        res.update({k: old[k] for k in ("n_fit", "dim", "classes")})
    if args.knn_before:
        prev = json.loads(Path(args.knn_before).read_text())
        if prev["n_fit"] != res["n_fit"]:
            raise SystemExit(f"--knn-before was measured at N = {prev['n_fit']}, this run at N = {res['n_fit']}")
        res["knn_gathered"] = {"note": args.knn_before_note or "an earlier commit",
                               "rows": [r for r in prev["memory"] if r["detector"] == "knn" and r["world"] > 1]}
    elif old.get("knn_gathered") and old.get("n_fit") == res["n_fit"]:
        res["knn_gathered"] = old["knn_gathered"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    if res["wall"] and res["memory"]:
        res["wall"]["seconds"] = {int(k): v for k, v in res["wall"]["seconds"].items()}
        res["wall"]["median_s"] = {int(k): v for k, v in res["wall"]["median_s"].items()}
        replace_section(Path(args.doc), BEGIN, END, render(res), "Performance")
        print(f"wrote {path} and {args.doc}")


if __name__ == "__main__":
    main()
