"""Issue 15 driver: the paper's CIFAR-10 ResNet18 table on one GPU, in one run of ``gpu_paper.sh``.

The orchestrator (``run``) trains every requested cell (training variant × seed) with the
``paper-resnet18`` recipe (full-width ResNet18, 60 epochs, batch 128, SGD 0.1 cosine, wd 5e-4, crop+flip)
on the ``cifar10-local`` benchmark of l2ood (CIFAR-10 (JPEG copy) → near Tiny-ImageNet, far MNIST,
Fashion-MNIST, DTD-10, scikit-image textures: every OoD set of the data layout in docs/RESULTS-gpu.md), tracks
the ‖z‖ AUROC every 5 epochs (``--track every=5``), then evaluates every detector. Each cell is one child process
(``cell``) running l2ood's own API: ``pipeline.train_run`` (with the tracker, data resident on the GPU, bf16 +
channels_last) then ``pipeline.train_and_evaluate`` (every detector from one cached forward pass per data
set). Cells run concurrently on the one GPU: at batch 128 a single full-width ResNet18 is launch-bound
(4.42 s/epoch at batch 128 vs 1.14 s at 512 on an H200, docs/PERFORMANCE.md), so parallel processes fill
the idle GPU.

Concurrency, measured in flight (no separate probe): all cells start together (``--parallel``, default 4);
every epoch's wall time is logged with the number of cells training at that moment (K). With a time limit
(``--budget-s``), when a required cell (default ce and l2, seed 0) is projected to miss it (its wall time per
epoch over the last epochs × the epochs left + the evaluation estimate), the lowest-priority optional cells are
paused (SIGSTOP) — as many as an optimistic estimate (epoch time ∝ K) says are needed — and continued (SIGCONT)
once no required cell is training any more. The timeline (median epoch time per K, ``concurrency`` in the
bundle) is the measurement that decides the next run's ``--parallel``.

Time limit and resuming: by default the run has no time limit (``--budget-s 0``; the tiny smoke test stops after
300 s). With ``--budget-s`` the run stops itself that long after the shell script started (``--t0``): running
cells are killed (each has a checkpoint at its last epoch end), the finished cells are aggregated, and the raw
bundle is written to ``--out`` as 4 files (``paper_raw.json``, ``results.csv``, ``results.md``, ``log.txt``; a
progress copy of the first and last every 30 s). Re-running the same command on the same ``--runs`` folder
resumes every unfinished cell from its checkpoint and keeps the finished ones. Evaluation runs in two phases (a
core set of detectors, then all others) so a late stop keeps the core results.

    python benchmarks/gpu_paper.py run --data-root /tmp/l2ood-data --out $OUT          # on the GPU
    python benchmarks/gpu_paper.py run --tiny --data-root DATA --out /tmp/o --runs /tmp/r  # CPU smoke test

``benchmarks/gpu_paper.sh`` is the entry point (it unpacks ``gpu_data/`` first); ``benchmarks/gpu_report.py``
turns the bundle into docs/results/gpu/ and docs/RESULTS-gpu.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from l2ood.results import BenchCell, ResultsError, ResultsFile, ResultsRecord, read_results, write_results

ROOT = Path(__file__).resolve().parents[1]
ARCH = "resnet18"
BENCHMARK = "cifar10-local"
RECIPE = "paper-resnet18"
# detectors evaluated first (cheap, and the ones the paper/OpenOOD anchors need); every other one after
CORE = ("feature_norm", "msp", "maxlogit", "energy", "knn", "mahalanobis", "vim", "odin", "react", "ash_s",
        "gen", "rmds", "mahalanobis++", "l1_norm")
SINGLE_EPOCH_S = 4.42  # H200, full-width ResNet18, batch 128, one process alone (docs/results/gpu/gpu_b128.json)
RAW_FILES = ("paper_raw.json", "results.csv", "results.md", "log.txt")
# eval_s: the core detectors' evaluation time assumed until one cell has measured it (the rest may be cut)
# budget_s: the default time limit in seconds (0: none)
FULL = {"track": "every=5,n_train=5000,n_test=10000,n_ood=10000", "n_train": None, "n_id": None, "n_ood": None,
        "parallel": 4, "eval_s": 60.0, "budget_s": 0.0}
TINY = {"width": 4, "epochs": 1, "track": "every=1,n_train=100,n_test=100,n_ood=50", "n_train": 300, "n_id": 200,
        "n_ood": 100, "parallel": 2, "eval_s": 10.0, "budget_s": 300.0}


def cell_name(variant: str, seed: int) -> str:
    return f"{ARCH}-{variant}-seed{seed}"


# ---------------------------------------------------------------------------------------------- metrics


def fpr95_openood(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """FPR@95TPR in OpenOOD v1.5's convention: OoD is the positive class (score negated); the fraction of ID
    images flagged as OoD at the first ROC point where ≥ 95 % of the OoD images are flagged
    (``openood/evaluators/metrics.py``: ``roc_curve(ood_indicator, -conf)``, ``fpr[argmax(tpr >= 0.95)]``).
    l2ood's own ``fpr95`` is the other convention (ID positive: OoD accepted while 95 % of ID is kept)."""
    from sklearn.metrics import roc_curve

    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    y = np.concatenate([np.zeros(a.size), np.ones(b.size)])
    fpr, tp, _ = roc_curve(y, -np.concatenate([a, b]))
    return float(fpr[int(np.argmax(tp >= tpr))])


def converged_epoch(series: list[tuple[int, float]], tol: float = 0.01) -> int | None:
    """First tracked epoch from which the value stays within ``tol`` of the last tracked value."""
    if not series:
        return None
    final = series[-1][1]
    ep = series[-1][0]
    for e, v in reversed(series):
        if abs(v - final) > tol:
            break
        ep = e
    return ep


# ---------------------------------------------------------------------------------------------- cell (child)


class Events:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: str, **kw: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"t": time.time(), "event": event, **kw}) + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {event} {json.dumps(kw) if kw else ''}", flush=True)


def _load_sets(spec: dict[str, Any]) -> tuple[Any, Any, list[Any], dict[str, str], list[str], str]:
    from l2ood.bench import BENCHMARKS, resolve
    from l2ood.data import load_dataset

    bdef = BENCHMARKS[BENCHMARK]
    root = spec["data_root"]
    size = tuple(bdef["size"])
    ch = int(bdef["channels"])
    train_set = load_dataset(resolve(bdef["train"], root), "train", root=root, n=spec["n_train"], seed=0,
                             channels=ch, size=size)
    test_spec = resolve(bdef["id"], root)
    id_test = load_dataset(test_spec, "test", root=root, n=spec["n_id"], seed=0, channels=ch, size=size)
    groups: dict[str, str] = {}
    ood_sets, ood_specs = [], []
    for group, names in bdef["ood"].items():
        for nm in names:
            s = resolve(nm, root)
            ds = load_dataset(s, "test", root=root, n=spec["n_ood"], seed=0, channels=ch, size=size)
            groups[ds.name] = group
            ood_sets.append(ds)
            ood_specs.append(s)
    return train_set, id_test, ood_sets, groups, ood_specs, test_spec


def cell_main(args: argparse.Namespace) -> int:
    import torch

    spec = json.loads(Path(args.spec).read_text())
    torch.set_num_threads(max(1, int(args.threads)))
    from l2ood.detectors import all_detectors
    from l2ood.models import ModelConfig
    from l2ood.pipeline import train_and_evaluate, train_run
    from l2ood.train import TrainConfig

    runs = Path(spec["runs"])
    name = cell_name(args.variant, args.seed)
    ev = Events(runs / "events" / f"{name}.jsonl")
    ev("start", pid=os.getpid(), threads=torch.get_num_threads())
    t = time.time()
    train_set, id_test, ood_sets, groups, ood_specs, test_spec = _load_sets(spec)
    ev("data", seconds=round(time.time() - t, 2), n_train=len(train_set), n_id=len(id_test),
       ood={d.name: len(d) for d in ood_sets})
    h = spec["hyper"]
    mcfg = ModelConfig(arch=ARCH, width=int(h["width"]), head=args.variant)
    tcfg = TrainConfig(epochs=int(h["epochs"]), batch_size=int(h["batch_size"]), lr=float(h["lr"]),
                       weight_decay=float(h["weight_decay"]), schedule=str(h["schedule"]), pad=int(h["pad"]),
                       seed=args.seed, device=spec["device"], precision=spec["precision"],
                       extra={"recipe": RECIPE, "driver": "benchmarks/gpu_paper.py"})
    run_dir = runs / ARCH / args.variant / f"seed{args.seed}"
    if not (run_dir / "model.json").is_file():
        ev("training", epochs=tcfg.epochs, resume=(run_dir / "checkpoint.json").is_file())
        t = time.time()
        train_run(train_set, mcfg, tcfg, run_dir, test_data=test_spec, track=spec["track"],
                  track_ood=",".join(ood_specs), data_root=spec["data_root"], resume=True, progress=False,
                  log=lambda m: print(m, flush=True))
        ev("trained", seconds=round(time.time() - t, 2))
    available = all_detectors()
    wanted = available if spec["detectors"] == "all" else [d for d in spec["detectors"] if d in available]
    core_names = spec.get("core", CORE)
    core = [d for d in wanted if d in core_names]
    phases = [("core", core), ("rest", [d for d in wanted if d not in core_names])]
    cell_path = runs / "cells" / f"{name}.json"
    merged: ResultsRecord | None = None
    requested: list[str] = []
    if cell_path.is_file():  # an earlier invocation evaluated some detectors of this (finished) run: keep them
        with contextlib.suppress(ResultsError):
            old = read_results(cell_path)
            if old.bench is not None:
                merged, requested = old.only, list(old.bench.requested)
    for phase, dets_all in phases:
        dets = [d for d in dets_all if d not in requested]
        if not dets:
            continue
        ev(f"eval_{phase}", detectors=dets)
        t = time.time()
        run, r = train_and_evaluate(train_set, mcfg, tcfg, run_dir, ood_sets=ood_sets, detectors=dets,
                                    id_test=id_test, test_data=test_spec, data_root=spec["data_root"],
                                    progress=False, log=None, samples=None)
        res = r.results
        id_sc = r.scores[res.id_dataset]
        for ds_name, col, m in res.rows():
            m.fpr95_openood = fpr95_openood(id_sc[col], r.scores[ds_name][col])  # type: ignore[attr-defined]
        if merged is not None:
            res = merged.model_copy(update={
                "detectors": [*merged.detectors, *res.detectors],
                "detector_params": {**merged.detector_params, **res.detector_params},
                "ood": {s: o.model_copy(update={"detectors": {**o.detectors, **res.ood[s].detectors}})
                        for s, o in merged.ood.items()}})
        merged = res
        requested += dets
        bench = BenchCell(arch=ARCH, variant=args.variant, seed=args.seed, requested=requested, groups=groups,
                          train_seconds=run.record.train_seconds or 0.0, recipe=RECIPE, hyper=spec["hyper"])
        write_results(cell_path, ResultsFile.new({name: merged}, bench=bench))  # atomic
        ev(f"eval_{phase}_done", seconds=round(time.time() - t, 2))
    ev("done")
    return 0


def cell_view(f: ResultsFile) -> dict[str, Any]:
    """A cell as ``paper_raw.json`` carries it: the bench coordinates with the results record under ``results``."""
    if f.bench is None:
        raise ResultsError("not a bench cell")
    return {**f.bench.model_dump(mode="json"), "results": f.only.model_dump(mode="json")}


# ---------------------------------------------------------------------------------------------- orchestrator


class Cell:
    def __init__(self, variant: str, seed: int, priority: int, required: bool, runs: Path, epochs: int) -> None:
        self.variant, self.seed, self.priority, self.required = variant, seed, priority, required
        self.name = cell_name(variant, seed)
        self.run_dir = runs / ARCH / variant / f"seed{seed}"
        self.events_path = runs / "events" / f"{self.name}.jsonl"
        self.cell_path = runs / "cells" / f"{self.name}.json"
        self.log_path = runs / "logs" / f"{self.name}.log"
        self.epochs = epochs
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "queued"  # queued, running, paused, finished, failed, killed, skipped
        self.started: float | None = None
        self.ended: float | None = None
        self.seen_epochs: list[tuple[int, float, int]] = []  # (epoch, wall time seen, K training then)
        self.base_epoch = 0
        self.rc: int | None = None

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.is_file():
            return []
        out = []
        for ln in self.events_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(ln))
        return out

    def phase(self) -> str:
        ev = [e["event"] for e in self.events()]
        if not ev:
            return "starting"
        return ev[-1]

    def training(self) -> bool:
        return self.state == "running" and self.phase() in ("start", "data", "training")

    def complete(self, detectors: list[str] | None) -> bool:
        if not self.cell_path.is_file():
            return False
        with contextlib.suppress(ResultsError):
            cell = read_results(self.cell_path).bench
            return cell is not None and (detectors is None or set(detectors) <= set(cell.requested))
        return False

    def history(self) -> list[dict[str, Any]]:
        p = self.run_dir / "train_log.jsonl"
        out = []
        if p.is_file():
            for ln in p.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(ln))
        return out

    def epochs_done(self) -> int:
        return max((int(h.get("epoch", 0)) for h in self.history()), default=0)

    def epoch_seconds(self, epoch: int) -> float | None:
        return next((float(h["seconds"]) for h in reversed(self.history()) if h.get("epoch") == epoch), None)


def _gpu_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                            "python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        if r.returncode == 0:
            info["nvidia_smi"] = r.stdout.strip()
    return info


def src_digest() -> str:
    """SHA-256 over src/l2ood/**/*.py and benchmarks/gpu_*.py (a copy of the tree may have no .git)."""
    h = hashlib.sha256()
    files = sorted([*(ROOT / "src" / "l2ood").rglob("*.py"), *(ROOT / "benchmarks").glob("gpu_*.py")])
    for p in files:
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def concurrency_table(cells: list[Cell]) -> dict[str, dict[str, float]]:
    """Per K (cells training at once): median wall time between consecutive epoch ends (checkpoint and
    tracking included) and median pure training seconds of those epochs; speed-up vs one process alone."""
    wall: dict[int, list[float]] = {}
    train: dict[int, list[float]] = {}
    for c in cells:
        for (e0, t_0, k0), (e1, t_1, k1) in zip(c.seen_epochs, c.seen_epochs[1:], strict=False):
            if e1 == e0 + 1 and k0 == k1:
                wall.setdefault(k1, []).append(t_1 - t_0)
                s = c.epoch_seconds(e1)
                if s is not None:
                    train.setdefault(k1, []).append(s)
    out = {}
    for k, v in sorted(wall.items()):
        med = float(np.median(v))
        tr = float(np.median(train[k])) if train.get(k) else float("nan")
        out[str(k)] = {"epochs": len(v), "median_epoch_wall_s": med, "median_epoch_train_s": tr,
                       "speedup_vs_single": k * SINGLE_EPOCH_S / tr if tr == tr else float("nan")}
    return out


def _tiny_free(conc: dict[str, dict[str, float]], tiny: bool) -> dict[str, dict[str, float]]:
    """The speed-up compares with a GPU measurement: meaningless for the CPU smoke test."""
    if tiny:
        for v in conc.values():
            v["speedup_vs_single"] = float("nan")
    return conc


class Orchestrator:
    """Runs the cells as child processes within the budget; see the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = float(args.t0) if args.t0 else time.time()
        self.preset = TINY if args.tiny else FULL
        self.budget = float(args.budget_s if args.budget_s is not None else self.preset["budget_s"])
        if not math.isfinite(self.budget) or self.budget < 0:
            raise SystemExit(f"--budget-s {self.budget}: give seconds > 0, or 0 for no time limit")
        # no time limit (budget 0): no deadline, so nothing is stopped, paused or kept from starting
        self.deadline = self.t0 + self.budget - float(args.reserve_s) if self.budget > 0 else math.inf
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs = Path(args.runs)
        self.runs.mkdir(parents=True, exist_ok=True)
        self.log_lines: list[str] = []
        self.cells: list[Cell] = []
        self.timeline: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []
        self.last_change = time.time()
        self.eval_est = float(args.eval_s if args.eval_s is not None else self.preset["eval_s"])
        self.env: dict[str, Any] = {}
        self.spec: dict[str, Any] = {}
        self.det_list: list[str] = []
        self.parallel = 1
        self.threads = 1
        self.last_snapshot = 0.0

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log_lines.append(line)

    # -- set-up
    def prepare(self) -> int:
        import torch

        from l2ood.bench import BENCHMARKS, RECIPES
        from l2ood.detectors import all_detectors
        from l2ood.evaluation import parse_detectors
        from l2ood.provenance import code_version

        args = self.args
        self.env = _gpu_info()
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        device = "cpu" if device == "auto" else device
        if not args.tiny and not device.startswith("cuda"):
            self.log("refusing the full-scale run without a GPU (use --tiny for the CPU smoke test)")
            return 2
        hyper = dict(RECIPES[RECIPE])
        if args.tiny:
            hyper.update(width=TINY["width"], epochs=TINY["epochs"])
        for key in ("epochs", "width"):
            if getattr(args, key):
                hyper[key] = int(getattr(args, key))
        detectors: Any = "all" if args.detectors == "all" else parse_detectors(args.detectors)
        self.det_list = all_detectors() if detectors == "all" else detectors
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        required = {r.strip() for r in args.required.split(",") if r.strip()}
        n_ood = self.preset["n_ood"] if args.n_ood is None else args.n_ood
        self.spec = {"benchmark": BENCHMARK, "recipe": RECIPE, "hyper": hyper,
                     "data_root": str(Path(args.data_root).resolve()), "runs": str(self.runs.resolve()),
                     "device": device, "precision": args.precision, "track": args.track or self.preset["track"],
                     "n_train": self.preset["n_train"], "n_id": self.preset["n_id"], "n_ood": n_ood,
                     "detectors": detectors, "tiny": bool(args.tiny),
                     "core": [d.strip() for d in args.core.split(",") if d.strip()] if args.core else list(CORE)}
        same = ("hyper", "n_train", "n_id", "n_ood", "track", "tiny", "precision")
        if (self.runs / "driver_spec.json").is_file():
            before = json.loads((self.runs / "driver_spec.json").read_text())
            diff = [k for k in same if before.get(k) != self.spec[k]]
            if diff:
                self.log(f"{self.runs} holds runs of another configuration ({', '.join(diff)} differ): "
                         "pass another --runs")
                return 2
        (self.runs / "driver_spec.json").write_text(json.dumps(self.spec, indent=1))
        # bench-layout spec, so l2ood.bench.aggregate() writes results.csv / results.md of these cells
        (self.runs / "spec.json").write_text(json.dumps({
            "benchmark": BENCHMARK, "definition": BENCHMARKS[BENCHMARK], "recipe": RECIPE, "hyper": hyper,
            "archs": [ARCH], "variants": variants, "seeds": seeds, "detectors": self.det_list, "n_ood": n_ood,
            "n_id": self.preset["n_id"], "code_version": code_version()}, indent=1))
        for seed in seeds:
            for v in variants:
                self.cells.append(Cell(v, seed, len(self.cells), f"{v}:{seed}" in required, self.runs,
                                       int(hyper["epochs"])))
        self.parallel = int(args.parallel or self.preset["parallel"])
        self.threads = max(1, (os.cpu_count() or 2) // max(1, min(self.parallel, len(self.cells))))
        self.log(f"cells {[c.name + ('*' if c.required else '') for c in self.cells]} (* required), parallel "
                 f"{self.parallel}, {self.threads} CPU threads each, "
                 + (f"budget {self.budget:.0f} s (stop at +{self.deadline - self.t0:.0f} s)" if self.budget > 0
                    else "no time limit")
                 + f", device {device}, {self.env.get('gpu', 'no GPU')}, "
                 f"torch {self.env['torch']}")
        for c in self.cells:
            if c.complete(self.det_list):
                c.state = "skipped"
                self.log(f"{c.name}: already complete in {self.runs} (finished by an earlier run)")
        return 0

    # -- processes
    def launch(self, c: Cell) -> None:
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "cell", "--spec", str(self.runs / "driver_spec.json"),
               "--variant", c.variant, "--seed", str(c.seed), "--threads", str(self.threads)]
        with open(c.log_path, "ab") as f:  # the child keeps its own descriptor
            c.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        c.state, c.started = "running", time.time()
        c.seen_epochs, c.base_epoch = [], c.epochs_done()
        self.last_change = time.time()
        self.log(f"{c.name}: started (pid {c.proc.pid}, from epoch {c.base_epoch})")

    def stop_all(self, why: str) -> None:
        victims = [c for c in self.cells if c.proc is not None and c.proc.poll() is None]
        for c in victims:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.proc.pid, signal.SIGCONT)
                c.proc.terminate()
        for c in victims:
            assert c.proc is not None
            try:
                c.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
            c.state, c.ended, c.rc = "killed", time.time(), c.proc.returncode
            self.log(f"{c.name}: stopped ({why}) after epoch {c.epochs_done()}/{c.epochs}")

    def rate(self, c: Cell) -> float | None:
        """Seconds per epoch (wall, checkpoint and tracking included) since the last change of concurrency."""
        pts = [(e, t) for e, t, _ in c.seen_epochs if t >= self.last_change][-6:]
        if len(pts) < 3:
            return None
        return (pts[-1][1] - pts[0][1]) / max(1, pts[-1][0] - pts[0][0])

    def projected_end(self, c: Cell, scale: float = 1.0) -> float | None:
        r = self.rate(c)
        if r is None:
            return None
        return time.time() + (c.epochs - c.epochs_done()) * r * scale * 1.05 + self.eval_est

    def training(self) -> list[Cell]:
        return [c for c in self.cells if c.training()]

    # -- one scheduling step; False when nothing is left to do
    def step(self) -> bool:
        now = time.time()
        for c in self.cells:  # processes that ended
            if c.state in ("running", "paused") and c.proc is not None and c.proc.poll() is not None:
                c.rc, c.ended = c.proc.returncode, now
                c.state = "finished" if c.rc == 0 and c.complete(self.det_list) else "failed"
                self.log(f"{c.name}: {c.state} (rc {c.rc}) after {now - (c.started or now):.0f} s, "
                         f"epoch {c.epochs_done()}/{c.epochs}")
                ev = {e["event"]: e for e in c.events()}
                if "eval_core_done" in ev:  # a measured evaluation time replaces the estimate
                    self.eval_est = float(ev["eval_core_done"]["seconds"])
                self.last_change = now
        k_now = len(self.training())
        for c in self.cells:  # epochs completed since the last poll
            if c.state == "running":
                e = c.epochs_done()
                if e > (c.seen_epochs[-1][0] if c.seen_epochs else c.base_epoch):
                    c.seen_epochs.append((e, now, k_now))
                    self.timeline.append({"cell": c.name, "epoch": e, "t": round(now - self.t0, 2), "k": k_now,
                                          "train_s": c.epoch_seconds(e)})
        if now >= self.deadline:
            self.stop_all("budget reached")
            for c in self.cells:
                if c.state == "queued":
                    c.state = "not_started"
            return False
        running = [c for c in self.cells if c.state in ("running", "paused")]
        for c in self.cells:  # start queued cells while slots are free and time is left
            if c.state == "queued" and len(running) < self.parallel \
                    and now < self.deadline - float(self.args.min_start_s):
                self.launch(c)
                running.append(c)
        if not running:
            for c in self.cells:
                if c.state == "queued":
                    c.state = "not_started"
            return False
        self.maybe_pause(now)
        paused = [c for c in self.cells if c.state == "paused"]
        if paused and not any(c.required for c in self.training()):
            for c in paused:
                assert c.proc is not None
                os.kill(c.proc.pid, signal.SIGCONT)
                c.state = "running"
                self.decisions.append({"t": round(now - self.t0, 1), "continue": c.name})
                self.log(f"{c.name}: continued (no required cell is training)")
            self.last_change = now
        return True

    def maybe_pause(self, now: float) -> None:
        """While a required cell is projected to miss the stop, pause the lowest-priority optional cells:
        as many as an optimistic estimate (epoch time ∝ cells training, a GPU-bound limit) says are needed."""
        active = self.training()
        req = [c for c in active if c.required]
        opt = sorted([c for c in active if not c.required], key=lambda c: -c.priority)
        if not req or not opt or now - self.last_change <= 1:
            return
        ends = {c.name: self.projected_end(c) for c in req}
        if any(v is None for v in ends.values()) or max(ends.values()) <= self.deadline:  # type: ignore[type-var]
            return
        k = len(active)
        n = len(opt)
        for m in range(1, len(opt) + 1):
            if all((self.projected_end(c, (k - m) / k) or 0) <= self.deadline for c in req):
                n = m
                break
        for victim in opt[:n]:
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGSTOP)
            victim.state = "paused"
        shown = {name: round((v or 0) - self.t0, 1) for name, v in ends.items()}
        self.decisions.append({"t": round(now - self.t0, 1), "pause": [v.name for v in opt[:n]], "k": k,
                               "projected_end": shown, "stop_at": round(self.deadline - self.t0, 1)})
        self.log(f"paused {', '.join(v.name for v in opt[:n])}: required cells projected to end at {shown} "
                 f"(s after start) > stop at +{self.deadline - self.t0:.0f} s with {k} cells training")
        self.last_change = now

    # -- output
    def raw(self) -> dict[str, Any]:
        from l2ood.provenance import code_version

        cells = []
        for c in self.cells:
            rec: dict[str, Any] = {"name": c.name, "variant": c.variant, "seed": c.seed, "required": c.required,
                                   "priority": c.priority, "state": c.state, "rc": c.rc,
                                   "started": None if c.started is None else round(c.started - self.t0, 2),
                                   "ended": None if c.ended is None else round(c.ended - self.t0, 2),
                                   "epochs_done": c.epochs_done(), "epochs": c.epochs,
                                   "complete": c.complete(self.det_list), "events": c.events(), "history": c.history()}
            p = c.run_dir / "track.jsonl"
            rec["track"] = []
            for x in p.read_text().splitlines() if p.is_file() else []:
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill is dropped
                    rec["track"].append(json.loads(x))
            if c.cell_path.is_file():
                with contextlib.suppress(ResultsError):
                    rec["cell"] = cell_view(read_results(c.cell_path))
            cells.append(rec)
        return {"kind": "l2ood-gpu-paper/1", "tiny": bool(self.args.tiny), "command": " ".join(sys.argv),
                "shell_command": os.environ.get("GPU_PAPER_COMMAND", ""), "t0": self.t0,
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.t0)), "budget_s": self.budget,
                "wall_s": round(time.time() - self.t0, 1), "spec": self.spec, "env": self.env,
                "code_version": code_version(), "src_sha256": src_digest(),
                "git_commit_here": os.environ.get("GIT_COMMIT", ""), "parallel": self.parallel,
                "threads_per_cell": self.threads, "single_epoch_s_reference": SINGLE_EPOCH_S,
                "phases": json.loads(os.environ.get("GPU_PAPER_PHASES", "") or "{}"), "timeline": self.timeline,
                "decisions": self.decisions,
                "concurrency": _tiny_free(concurrency_table(self.cells), bool(self.args.tiny)), "cells": cells}

    def snapshot(self) -> None:
        """A progress copy of the raw bundle in --out (what is left if the run is cut off)."""
        with contextlib.suppress(OSError, ValueError):
            tmp = self.out / "paper_raw.json.tmp"
            tmp.write_text(json.dumps({**self.raw(), "snapshot": True}, default=str))
            os.replace(tmp, self.out / "paper_raw.json")
            (self.out / "log.txt").write_text("\n".join(self.log_lines) + "\n")
        self.last_snapshot = time.time()

    def finish(self) -> dict[str, Any]:
        from l2ood.bench import aggregate

        if any(c.cell_path.is_file() for c in self.cells):
            csv_path, md_path = aggregate(self.runs)
            (self.out / "results.csv").write_bytes(csv_path.read_bytes())
            (self.out / "results.md").write_bytes(md_path.read_bytes())
        self.log("summary: " + ", ".join(f"{c.name} {c.state} {c.epochs_done()}/{c.epochs} ep" for c in self.cells))
        raw = self.raw()
        for k, v in raw["concurrency"].items():
            self.log(f"concurrency K={k}: median epoch {v['median_epoch_train_s']:.2f} s training, "
                     f"{v['median_epoch_wall_s']:.2f} s wall, over {v['epochs']} epochs: "
                     f"{v['speedup_vs_single']:.2f}x the throughput of one process alone ({SINGLE_EPOCH_S} s/epoch)")
        raw["wall_s"] = round(time.time() - self.t0, 1)
        (self.out / "paper_raw.json").write_text(json.dumps(raw, indent=1, default=str))
        with open(self.out / "log.txt", "w") as f:  # one log: the orchestrator's, then each cell's tail
            f.write("\n".join(self.log_lines) + "\n")
            for c in self.cells:
                if c.log_path.is_file():
                    text = c.log_path.read_text(errors="replace")
                    f.write(f"\n===== {c.name} ({len(text)} chars, last 200000) =====\n{text[-200000:]}")
        return raw


def run_main(args: argparse.Namespace) -> int:
    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)  # `timeout`, a job scheduler: still stop the cells, write the bundle
    orch = Orchestrator(args)
    rc = orch.prepare()
    if rc:
        return rc
    try:
        while orch.step():
            if time.time() - orch.last_snapshot > float(args.snapshot_s):
                orch.snapshot()
            time.sleep(float(args.poll_s))
    except BaseException as e:  # an error or a signal in the orchestrator: stop the cells, keep what exists
        orch.log(f"orchestrator interrupted: {type(e).__name__}: {e}")
        orch.stop_all("orchestrator interrupted")
        orch.finish()
        raise
    raw = orch.finish()
    _print_summary(raw)
    return 0 if all(c.state in ("finished", "skipped") for c in orch.cells if c.required) else 1


def _print_summary(raw: dict[str, Any]) -> None:
    limit = f"of {raw['budget_s']:.0f} s" if raw["budget_s"] > 0 else "(no time limit)"
    print(f"\n== gpu_paper: {raw['wall_s']:.0f} s {limit}, "
          f"{raw['env'].get('gpu', 'cpu')}, torch {raw['env']['torch']} ==")
    print(f"{'cell':28s} {'state':9s} {'epochs':>7s} {'train s':>8s} {'ID acc':>7s} {'fn near':>8s} {'fn far':>8s}")
    for c in raw["cells"]:
        acc = near = far = float("nan")
        if "cell" in c:
            res = c["cell"]["results"]
            acc = 100 * res["id_accuracy"]
            g = c["cell"]["groups"]
            fn = {ds: d["detectors"].get("feature_norm", {}).get("auroc") for ds, d in res["ood"].items()}
            nv = [v for ds, v in fn.items() if g.get(ds) == "near" and v is not None]
            fv = [v for ds, v in fn.items() if g.get(ds) == "far" and v is not None]
            near = 100 * float(np.mean(nv)) if nv else near
            far = 100 * float(np.mean(fv)) if fv else far
        ts = c.get("cell", {}).get("train_seconds")
        print(f"{c['name']:28s} {c['state']:9s} {c['epochs_done']:>3d}/{c['epochs']:<3d} "
              f"{(ts or float('nan')):8.1f} {acc:7.2f} {near:8.2f} {far:8.2f}")
    for k, v in raw["concurrency"].items():
        print(f"K={k}: median epoch {v['median_epoch_train_s']:.2f} s train / {v['median_epoch_wall_s']:.2f} s wall "
              f"({v['epochs']} epochs) -> {v['speedup_vs_single']:.2f}x one process at "
              f"{raw['single_epoch_s_reference']} s/epoch")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="orchestrate the cells within the budget and write the raw bundle")
    r.add_argument("--data-root", required=True,
                   help="the data folder (DATA/, laid out as in docs/RESULTS-gpu.md, 'Data layout')")
    r.add_argument("--out", required=True, help="folder for the raw bundle ($OUT of gpu_paper.sh)")
    r.add_argument("--runs", default="/tmp/l2ood-gpu-runs",
                   help="run folders with per-epoch checkpoints (rerun with the same folder to resume)")
    r.add_argument("--variants", default="ce,l2,logitnorm,t2fnorm")
    r.add_argument("--seeds", default="0")
    r.add_argument("--required", default="ce:0,l2:0", help="cells that optional ones are paused for")
    r.add_argument("--detectors", default="all")
    r.add_argument("--core", default=None, help="detectors of the first evaluation phase (default: the CORE list)")
    r.add_argument("--parallel", type=int, default=None, help="cells at once (default 4, tiny 2)")
    r.add_argument("--budget-s", type=float, default=None,
                   help="stop everything this many seconds after --t0; 0: no time limit (default; tiny: 300)")
    r.add_argument("--reserve-s", type=float, default=8.0, help="kept back for aggregation and the bundle")
    r.add_argument("--min-start-s", type=float, default=60.0, help="start no cell later than this before the stop")
    r.add_argument("--eval-s", type=float, default=None, help="evaluation time estimate until one is measured")
    r.add_argument("--t0", default=None, help="epoch seconds the run started (the shell passes its start)")
    r.add_argument("--tiny", action="store_true", help="CPU smoke test: width 4, 1 epoch, a few hundred images")
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--width", type=int, default=None)
    r.add_argument("--n-ood", type=int, default=None)
    r.add_argument("--track", default=None)
    r.add_argument("--device", default="auto")
    r.add_argument("--precision", default="auto")
    r.add_argument("--poll-s", type=float, default=0.5)
    r.add_argument("--snapshot-s", type=float, default=30.0, help="progress copy of the bundle in --out this often")
    c = sub.add_parser("cell", help="(internal) train + evaluate one cell")
    c.add_argument("--spec", required=True)
    c.add_argument("--variant", required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    return run_main(args) if args.cmd == "run" else cell_main(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
