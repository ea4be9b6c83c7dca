"""Benchmark: does l2ood cost anything over bare PyTorch? Training and scoring throughput.

1. Training images/s of :func:`l2ood.train.train` vs a minimal hand-written loop on the same model,
   data (uint8 tensors resident on the device), batch, augmentation and precision — interleaved in
   the same process (A, B, A, B, ...) so machine noise hits both; the ratio of medians is reported.
2. Scoring images/s: the feature-norm score (one forward pass returning logits, z and ‖z‖) vs a
   plain ``fc(backbone(x))`` forward.
3. Scoring cost vs the size of the ID training bank for KNN and Mahalanobis (feature norm needs none).

    python benchmarks/throughput.py                       # CPU defaults, writes docs/PERFORMANCE.md
    python benchmarks/throughput.py --device cuda --width 64 --n 50000 --batch-size 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from l2ood.data import ImageSet, augment_batch
from l2ood.detectors import Extraction, Head, make_detector
from l2ood.models import ModelConfig, build_model
from l2ood.runtime import resolve_runtime
from l2ood.train import TrainConfig, train
from l2ood.train.trainer import epoch_permutation, lr_at, make_optimizer, step_generator

ROOT = Path(__file__).resolve().parents[1]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bare_epoch(ds: ImageSet, mcfg: ModelConfig, tcfg: TrainConfig, epoch: int) -> float:
    """A minimal hand-written loop (same model, data, batch, augmentation, precision); images/s."""
    rt = resolve_runtime(tcfg.device, tcfg.precision)
    torch.manual_seed(tcfg.seed)
    model = build_model(mcfg).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if tcfg.compile else model
    opt = make_optimizer(model, tcfg)
    images, labels = ds.images.to(rt.device), ds.labels.to(rt.device)  # type: ignore[union-attr]
    n = len(ds)
    spe = math.ceil(n / tcfg.batch_size)
    model.train()
    for ep in range(epoch + 1):  # the last epoch is timed (earlier ones warm up)
        perm = epoch_permutation(n, tcfg.seed, ep).to(rt.device)
        sync(rt.device)
        t0 = time.perf_counter()
        for step in range(spe):
            idx = perm[step * tcfg.batch_size : (step + 1) * tcfg.batch_size]
            x = augment_batch(images[idx].float().div_(255.0), tcfg.pad, True,
                              step_generator(tcfg.seed, ep, step))
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr_at(tcfg, ep * spe + step, spe * (epoch + 1), spe)
            with rt.autocast():
                loss = F.cross_entropy(fwd(x).logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(rt.device)
        dt = time.perf_counter() - t0
    return n / dt


def l2ood_epoch(ds: ImageSet, mcfg: ModelConfig, tcfg: TrainConfig, epoch: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        tc = TrainConfig(**{**tcfg.__dict__, "epochs": epoch + 1})
        res = train(ds, ModelConfig(**mcfg.__dict__), tc, d, progress=False, log=None)
    return res.history[-1]["images_per_s"]


@torch.no_grad()
def scoring(ds: ImageSet, mcfg: ModelConfig, tcfg: TrainConfig, reps: int) -> dict[str, float]:
    rt = resolve_runtime(tcfg.device, tcfg.precision)
    model = build_model(mcfg).to(rt.device).eval()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x_all = ds.images[:16384].to(rt.device)
    bs = 1024

    def plain() -> None:
        for s in range(0, len(x_all), bs):
            x = x_all[s : s + bs].float().div_(255.0)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                model.fc(model.backbone((x - model.input_mean) / model.input_std).float())
        sync(rt.device)

    def ours() -> None:
        for s in range(0, len(x_all), bs):
            x = x_all[s : s + bs].float().div_(255.0)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                out = model(x)  # one pass: logits, z and the score ‖z‖
            out.score.sum()
        sync(rt.device)

    times: dict[str, list[float]] = {"plain": [], "feature_norm": []}
    plain()
    ours()
    for _ in range(reps):
        for name, fn in (("plain", plain), ("feature_norm", ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(len(x_all) / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def bank_scaling(dim: int, sizes: list[int], n_test: int) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(0)
    out = []
    test = torch.randn(n_test, dim, generator=g).relu()
    head = Head(torch.randn(10, dim, generator=g) / dim**0.5, torch.zeros(10), mode="ce")
    text = Extraction(test, head.logits(test))
    for n in sizes:
        bank = torch.randn(n, dim, generator=g).relu()
        train_ext = Extraction(bank, head.logits(bank), torch.arange(n) % 10)
        row: dict[str, float] = {"bank": n}
        for name in ("feature_norm", "mahalanobis", "knn"):
            det = make_detector(name)
            if det.needs_fit:
                det.fit(train_ext, head)
            t0 = time.perf_counter()
            det.score(text, head)
            row[name] = time.perf_counter() - t0
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n", type=int, default=10000, help="training images (random uint8, 32×32×3)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=3, help="interleaved (l2ood, bare) measurement pairs")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", default=None, help="also write raw numbers here")
    ap.add_argument("--out", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--skip-train", action="store_true", help="only the scoring measurements")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    ds = ImageSet("random-cifar", torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (args.n,), generator=g), hflip=True)
    mcfg = ModelConfig(width=args.width, head="l2", mean=[0.5] * 3, std=[0.25] * 3)
    tcfg = TrainConfig(epochs=1, batch_size=args.batch_size, device=args.device, precision=args.precision,
                       pad=4, compile=args.compile)
    rt = resolve_runtime(args.device, args.precision)
    ours: list[float] = []
    bare: list[float] = []
    for i in range(0 if args.skip_train else args.pairs):
        ours.append(l2ood_epoch(ds, mcfg, tcfg, epoch=1))
        bare.append(bare_epoch(ds, mcfg, tcfg, epoch=1))
        print(f"pair {i}: l2ood {ours[-1]:.0f} img/s, bare {bare[-1]:.0f} img/s", flush=True)
    sc = scoring(ds, mcfg, tcfg, reps=7)
    print(f"scoring: plain {sc['plain']:.0f} img/s, feature_norm {sc['feature_norm']:.0f} img/s", flush=True)
    bank = bank_scaling(8 * args.width, [1000, 10000, 50000], 10000)
    for r in bank:
        print(r, flush=True)
    res = {
        "device": str(rt.device), "precision": rt.precision, "channels_last": rt.channels_last,
        "width": args.width, "n": args.n, "batch_size": args.batch_size, "compile": args.compile,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if rt.device.type == "cuda" else None,
        "train_l2ood": ours, "train_bare": bare,
        "train_ratio": statistics.median(ours) / statistics.median(bare) if ours else None,
        "score": sc, "score_ratio": sc["feature_norm"] / sc["plain"], "bank": bank,
        "epoch_seconds_l2ood": args.n / statistics.median(ours) if ours else None,
    }
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if not args.no_doc:
        write_doc(res, Path(args.out))


def write_doc(r: dict, path: Path) -> None:
    lines = [
        "# Performance",
        "",
        f"## {r['device']} ({r['gpu'] or r['machine']}), {r['precision']}"
        f"{' + channels_last' if r['channels_last'] else ''}, torch {r['torch']}",
        "",
        f"`python benchmarks/throughput.py --device {r['device'].split(':')[0]} --width {r['width']} "
        f"--n {r['n']} --batch-size {r['batch_size']}{' --compile' if r['compile'] else ''}` — "
        f"CIFAR-style ResNet18 width "
        f"{r['width']}, L2 head, {r['n']} random 32×32×3 uint8 images resident on the device, batch "
        f"{r['batch_size']}, random crop (pad 4) + flip. Interleaved pairs, second epoch of each run timed.",
        "",
        "| measurement | l2ood | bare PyTorch | ratio (goal) |",
        "|---|---|---|---|",
        *([f"| training images/s (median of {len(r['train_l2ood'])}) | "
           f"{statistics.median(r['train_l2ood']):.0f} | {statistics.median(r['train_bare']):.0f} | "
           f"**{r['train_ratio']:.3f}** (≥ 0.95) |"] if r["train_l2ood"] else []),
        f"| scoring images/s: ‖z‖ score vs plain forward | {r['score']['feature_norm']:.0f} | "
        f"{r['score']['plain']:.0f} | **{r['score_ratio']:.3f}** (≥ 0.98) |",
        "",
        "Raw training pairs (l2ood, bare): "
        + (", ".join(f"({a:.0f}, {b:.0f})" for a, b in zip(r["train_l2ood"], r["train_bare"], strict=True))
           or "not measured in this run"),
        "",
        f"Scoring 10 000 test features (D = {8 * r['width']}) against an ID training bank of N features "
        "(seconds on the host CPU with torch's threads; fit excluded):",
        "",
        "| N (bank) | feature_norm | mahalanobis | knn (k=50) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {b['bank']} | {b['feature_norm']:.4f} | {b['mahalanobis']:.4f} | {b['knn']:.4f} |"
              for b in r["bank"]]
    lines += ["", "Feature-norm scoring needs no bank; Mahalanobis scoring is O(C·D²) per image, independent "
              "of N; KNN grows linearly with N.", ""]
    old = path.read_text() if path.exists() else ""
    marker = f"## {r['device']}"
    keep = "\n".join(b for b in old.split("\n## ") if b and not ("## " + b).startswith(marker)
                     and not b.startswith("# Performance"))
    text = "\n".join(lines) + ("\n## " + keep if keep.strip() else "")
    path.write_text(text)


if __name__ == "__main__":
    main()
