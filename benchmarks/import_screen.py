"""A classifier l2ood did not train, end to end: import → calibrate → screen → serve → export, measured.

    python benchmarks/import_screen.py --cifar10 DIR --ood npz:PATH [--model usernet|torchvision-resnet18]
        [--epochs 4] [--out docs/IMPORT.md] [--json docs/results/import_screen.json]

``DIR`` is CIFAR-10 as an image folder (``DIR/train/<class>/*``, ``DIR/test/<class>/*``; e.g. written from the
official python batches); ``--ood`` an OoD set for the screened files (an npz pack ``images`` N×H×W×3 uint8, e.g.
MNIST or Tiny-ImageNet resized to 32×32).

* ``usernet``: a user's own CNN (``benchmarks/_usernet.py``, no l2ood code) trained here with a plain PyTorch loop
  (SGD, flips and crops, ``--epochs``) on the training folder, saved as safetensors, imported with
  ``--factory _usernet:build``, calibrated with KNN (fitted on the training folder), conformal alpha 0.05.
* ``torchvision-resnet18``: torchvision's ResNet18 with a 10-class head, weights made here (seeded random
  initialization: nothing can be downloaded), imported with ``--arch torchvision:resnet18 --preprocessing imagenet
  --image-size 64``, calibrated with energy (no fitting), alpha 0.05. Needs torchvision.

Then, on the same files (``--n-files`` ID test images as written + as many OoD images as PNG):

* agreement: scores, p-values and verdicts of ``l2ood screen`` (CLI), the service (``POST /v1/screen``, one file per
  request) and the exported ONNX screen under onnxruntime (``examples/onnx_screen_client.py``'s preprocessing)
  against the Python screen (``Screener.screen``);
* the false-alarm rate on held-out ID images against the conformal bound: the whole ID test folder screened, and
  2 000 random calibration/test splits of the holdout + test scores;
* per-image latency, decode included: onnxruntime (batch 1 and batch 64) vs ``Screener.screen`` (one file per call,
  and all files in one call).

Writes the measured section of ``--out`` between markers and the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from _docsection import replace_section

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BEGIN, END = "<!-- import-screen:{model}:begin -->", "<!-- import-screen:{model}:end -->"
ALPHA = 0.05


def _l2ood(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "l2ood", *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"l2ood {args[0]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p, time.perf_counter() - t0


def train_usernet(cifar: Path, out: Path, epochs: int, seed: int = 0) -> dict[str, Any]:
    """The user's own training loop (plain PyTorch: SGD + Nesterov, one-cycle-free cosine, flips and 4-px crops)."""
    from safetensors.torch import save_file

    from _usernet import build
    from l2ood.data.source import open_images

    torch.manual_seed(seed)
    ds = open_images(f"imagefolder:{cifar / 'train'}", "train", size=(32, 32), data_path="memory")
    x = ds.images  # type: ignore[attr-defined]
    y = ds.labels
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    net = build(10, 32).to(memory_format=torch.channels_last)
    steps = epochs * (len(x) // 128)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x) - 127, 128):
            idx = perm[s : s + 128]
            xb = x[idx].float().div(255)
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb[flip] = xb[flip].flip(3)
            pad = torch.nn.functional.pad(xb, (4, 4, 4, 4))
            i, j = torch.randint(0, 9, (2,), generator=g).tolist()
            xb = ((pad[:, :, i : i + 32, j : j + 32] - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return {"epochs": epochs, "steps": steps, "train_s": round(time.perf_counter() - t0, 1), "seed": seed,
            "n_train": len(x)}


def write_files(cifar: Path, ood: str, n: int, folder: Path) -> list[str]:
    """``n`` ID test files as they are (every class) + ``n`` OoD images written as PNG."""
    from l2ood.data.source import open_images

    classes = sorted(d for d in (cifar / "test").iterdir() if d.is_dir())
    ids = [sorted(d.iterdir())[i] for i in range(n // len(classes) + 1) for d in classes][:n]
    odd = open_images(ood, "test", data_path="memory")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = [str(p) for p in ids]
    for k, i in enumerate(rng.choice(len(odd), n, replace=False)):
        arr = odd.images[int(i)].permute(1, 2, 0).numpy()  # type: ignore[attr-defined]
        p = folder / f"ood_{k:04d}.png"
        Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(p)
        out.append(str(p))
    return out


def _agree(ref: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keys = sorted(ref)
    assert set(keys) == set(got), "both sides must screen the same files"
    s_ref = np.array([ref[k]["score"] for k in keys])
    s_got = np.array([got[k]["score"] for k in keys])
    rel = np.abs(s_ref - s_got) / np.maximum(np.abs(s_ref), 1e-12)
    return {"n": len(keys), "max_rel_score_diff": float(rel.max()), "max_abs_score_diff": float(
        np.abs(s_ref - s_got).max()),
        "max_abs_p_diff": float(max(abs(ref[k]["p_value"] - got[k]["p_value"]) for k in keys)),
        "same_verdict": float(np.mean([ref[k]["verdict"] == got[k]["verdict"] for k in keys]))}


def service_records(run_dir: Path, files: list[str], calibration: str) -> tuple[dict[str, dict[str, Any]], float]:
    from fastapi.testclient import TestClient

    from l2ood.deploy.service import ServeConfig, create_app
    from l2ood.screen import Screener

    scr = Screener.from_run(run_dir, calibration=calibration, device="cpu", precision="fp32")
    recs = {}
    with TestClient(create_app(scr, ServeConfig(), run_label="bench")) as c:
        t0 = time.perf_counter()
        for f in files:
            r = c.post("/v1/screen", content=Path(f).read_bytes())
            recs[f] = r.json()
        dt = time.perf_counter() - t0
    return recs, dt / len(files)


def onnx_records(model_path: Path, files: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Scores, p-values and verdicts of the exported screen under onnxruntime, through the example client's
    preprocessing; per-image latency (decode included) at batch 1 and batch 64."""
    sys.path.insert(0, str(ROOT / "examples"))
    import onnx_screen_client as client  # type: ignore[import-not-found]

    screen = client.ScreenModel(str(model_path))
    recs: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for f in files:
        recs[f] = screen.screen([f], batch_size=1)[0]
    one = (time.perf_counter() - t0) / len(files)
    t0 = time.perf_counter()
    screen.screen(files, batch_size=64)
    batch = (time.perf_counter() - t0) / len(files)
    return recs, {"onnx_batch1_ms": 1000 * one, "onnx_batch64_ms": 1000 * batch}


def far_bound(run_dir: Path, detector_cal: str, trials: int = 2000) -> dict[str, Any]:
    """False alarms on held-out ID images: the whole ID test set screened with the stored calibration, and random
    calibration/test splits of holdout + test scores (exchangeable ID images)."""
    from l2ood.columns import parse_spec
    from l2ood.metrics.conformal import calibrate
    from l2ood.run import Run

    run = Run.load(run_dir, device="cpu", precision="fp32", trust_code=True)
    cal = run.calibration(detector_cal)
    assert cal is not None
    test, _ = run.id_test()
    hold = run.holdout()
    assert hold is not None
    col = parse_spec(cal.detectors, run.config.head)[0]
    col.load(run, cal.fitted.get(col.key))
    s_test = col.score_set(run, test)
    s_hold = col.score_set(run, hold)
    direct = float(cal.is_ood(s_test).mean())
    pool = np.concatenate([s_hold, s_test])
    n_cal = len(s_hold)
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(trials):
        perm = rng.permutation(len(pool))
        c = calibrate(pool[perm[:n_cal]], alpha=ALPHA)
        rates.append(float(c.is_ood(pool[perm[n_cal:]]).mean()))
    return {"alpha": ALPHA, "n_cal": n_cal, "n_test": len(s_test), "test_false_alarm_rate": direct,
            "bound": float(np.floor(ALPHA * (n_cal + 1)) / (n_cal + 1)), "splits": trials,
            "split_rate_mean": float(np.mean(rates)), "split_rate_std": float(np.std(rates)),
            "split_rate_p95": float(np.quantile(rates, 0.95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar10", required=True, type=Path, help="CIFAR-10 image folder (train/, test/)")
    ap.add_argument("--ood", required=True, help="OoD data spec for the screened files (e.g. npz:PATH)")
    ap.add_argument("--model", choices=("usernet", "torchvision-resnet18"), default="usernet")
    ap.add_argument("--epochs", type=int, default=4, help="usernet: training epochs")
    ap.add_argument("--holdout", type=int, default=2000)
    ap.add_argument("--n-files", type=int, default=200, help="ID files screened (and as many OoD files)")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--reuse-weights", action="store_true",
                    help="usernet: keep WORK/usernet.safetensors (and its training figures in --json) if present")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "IMPORT.md")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "import_screen.json")
    args = ap.parse_args()

    from l2ood.provenance import cpu_name
    from l2ood.screen import Screener

    torch.set_num_threads(os.cpu_count() or 1)
    work = args.work or Path(tempfile.mkdtemp(prefix="l2ood-import-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "L2OOD_CACHE": str(work / "cache")}
    run_dir = work / "run"
    res: dict[str, Any] = {"model": args.model, "cpu": cpu_name(), "torch": torch.__version__, "alpha": ALPHA}
    data = ["--data", f"imagefolder:{args.cifar10 / 'train'}", "--holdout", str(args.holdout), "--test-data",
            f"imagefolder:{args.cifar10 / 'test'}", "--out", str(run_dir), "--overwrite"]
    if args.model == "usernet":
        old = json.loads(args.json.read_text()).get("usernet", {}) if args.json.is_file() else {}
        if args.reuse_weights and (work / "usernet.safetensors").is_file() and "training" in old:
            res["training"] = old["training"]
        else:
            res["training"] = train_usernet(args.cifar10, work / "usernet.safetensors", args.epochs)
        _, dt = _l2ood("import", "--factory", "_usernet:build", "--kwargs", '{"classes": 10, "width": 32}',
                       "--weights", str(work / "usernet.safetensors"), "--preprocessing", "cifar", *data, env=env)
        detector = "knn"
    else:
        import torchvision
        from safetensors.torch import save_file

        torch.manual_seed(0)
        net = torchvision.models.resnet18(num_classes=10)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(work / "rn18.safetensors"))
        _, dt = _l2ood("import", "--arch", "torchvision:resnet18", "--weights", str(work / "rn18.safetensors"),
                       "--preprocessing", "imagenet", "--image-size", "64", *data, env=env)
        detector = "energy"
    res["import_s"] = round(dt, 1)
    trust = ["--trust-code"] if args.model == "usernet" else []
    _, dt = _l2ood("calibrate", str(run_dir), "--detector", detector, "--alpha", str(ALPHA), "--precision", "fp32",
                   "--no-progress", *trust, env=env)
    res["calibrate_s"], res["detector"] = round(dt, 1), detector
    _, dt = _l2ood("evaluate", str(run_dir), "--ood", args.ood, "--detectors", f"feature_norm,energy,{detector}",
                   "--precision", "fp32", "--no-progress", *trust, env=env)
    ev = json.loads((run_dir / "eval" / "results.json").read_text())
    r0 = next(iter(ev["runs"].values()))
    res["id_accuracy"] = r0["id_accuracy"]
    res["auroc"] = {d: r0["ood"][next(iter(r0["ood"]))]["detectors"][d]["auroc"] for d in r0["detectors"]}

    files = write_files(args.cifar10, args.ood, args.n_files, work / "files")
    os.environ["L2OOD_TRUST_CODE"] = "1"
    scr = Screener.from_run(run_dir, device="cpu", precision="fp32")
    t0 = time.perf_counter()
    py = {r["path"]: r for r in scr.screen(files)}
    res["python_all_in_one_ms"] = 1000 * (time.perf_counter() - t0) / len(files)
    t0 = time.perf_counter()
    for f in files[:100]:
        list(scr.screen([f]))
    res["python_one_per_call_ms"] = 1000 * (time.perf_counter() - t0) / 100
    p, _ = _l2ood("screen", str(run_dir), *files, "--format", "jsonl", "--precision", "fp32", "--no-progress",
                  *trust, env=env)
    cli = {r["path"]: r for r in map(json.loads, p.stdout.splitlines())}
    svc, svc_s = service_records(run_dir, files, "default")
    res["service_one_per_request_ms"] = 1000 * svc_s
    _, dt = _l2ood("export", str(run_dir), "-o", str(work / "screen.onnx"), "--verify-n", "256", *trust, env=env)
    res["export_s"] = round(dt, 1)
    onx, lat = onnx_records(work / "screen.onnx", files)
    res.update(lat)
    res["agreement"] = {"cli": _agree(py, cli), "service": _agree(py, svc), "onnxruntime": _agree(py, onx)}
    res["n_files"] = len(files)
    res["false_alarms"] = far_bound(run_dir, "default")
    print(json.dumps(res, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.json.read_text()) if args.json.is_file() else {}
    args.json.write_text(json.dumps({**old, args.model: res}, indent=2) + "\n")
    begin, end = BEGIN.format(model=args.model), END.format(model=args.model)
    replace_section(args.out, begin, end, section(res, begin, end), "A classifier l2ood did not train")


def section(r: dict[str, Any], begin: str, end: str) -> str:
    fa = r["false_alarms"]
    ag = r["agreement"]
    what = ("a user's own CNN (benchmarks/_usernet.py, trained here with a plain PyTorch loop, "
            f"{r['training']['epochs']} epochs, {r['training']['train_s']} s), imported with --factory, KNN screen"
            if r["model"] == "usernet" else
            "torchvision's ResNet18 (seeded random weights made here, so its accuracy and AUROC mean nothing: "
            "it measures agreement, the bound and latency), imported with --arch at 64 px, energy screen")
    rows = "\n".join(f"| {k} | {v['n']} | {v['max_rel_score_diff']:.2e} | {v['max_abs_p_diff']:.2e} | "
                     f"{100 * v['same_verdict']:.1f} % |" for k, v in ag.items())
    auroc = ", ".join(f"{d} {100 * a:.1f}" for d, a in r["auroc"].items())
    return f"""{begin}
### {r['model']}: {what}

{r['cpu']}, torch {r['torch']}, fp32. Import {r['import_s']} s, calibrate ({r['detector']}, conformal
alpha = {r['alpha']}) {r['calibrate_s']} s, export with verification {r['export_s']} s. ID accuracy
{100 * r['id_accuracy']:.2f} %; AUROC vs the OoD set: {auroc}.

Agreement with the Python screen on the same {r['n_files']} files (half ID test images, half OoD):

| path | files | max relative score difference | max p-value difference | same verdict |
|---|---|---|---|---|
{rows}

False alarms on held-out ID images (alpha = {fa['alpha']}, n_cal = {fa['n_cal']}; bound
floor(alpha (n+1))/(n+1) = {fa['bound']:.4f}): the whole ID test set ({fa['n_test']} images) screened with the
stored calibration: **{100 * fa['test_false_alarm_rate']:.2f} %**; over {fa['splits']} random calibration/test
splits of holdout + test: mean {100 * fa['split_rate_mean']:.2f} % (std {100 * fa['split_rate_std']:.2f} %,
95th percentile {100 * fa['split_rate_p95']:.2f} %).

Per-image latency, decode and preprocessing included: onnxruntime {r['onnx_batch1_ms']:.2f} ms (one file per run),
{r['onnx_batch64_ms']:.2f} ms (64 per run); `Screener.screen` {r['python_one_per_call_ms']:.2f} ms (one file per
call), {r['python_all_in_one_ms']:.2f} ms (all files in one call); the service {r['service_one_per_request_ms']:.2f}
ms per request (one file each, in-process client).
{end}"""


if __name__ == "__main__":
    main()
