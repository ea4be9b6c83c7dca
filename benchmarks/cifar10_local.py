"""The CPU-sized CIFAR-10 benchmark on the data folder DATA/, written to docs/RESULTS-cifar10.md.

    python benchmarks/cifar10_local.py --data-root DATA --seeds 0 1 2 --epochs 8   # resumable; add seeds later
    python benchmarks/cifar10_local.py --data-root DATA --seeds 0 1 2 3 4 --variants ce,l2 \
        --combine feature_norm,knn --combine feature_norm,mahalanobis++

DATA/ is the folder laid out as in the page's "Data layout" section (CIFAR-10 (JPEG copy) as an image-folder
tree, the OoD sets as npz packs); ``--data-root`` defaults to the environment variable ``L2OOD_DATA``. Runs
``l2ood bench --benchmark cifar10-local --recipe cpu-small`` (ResNet18 width 16; ``cifar10-local`` is the
project's own benchmark, enabled by ``L2OOD_DEV_BENCHMARKS=1``, which this script sets) for the given training
variants (default CE, L2, LogitNorm and T2FNorm) with every detector, optionally combined columns (conformal
p-values, Bonferroni-min, cross-fitted on two halves of the ID test images), then writes the OpenOOD-layout
table beside OpenOOD v1.5's published CIFAR-10 / ResNet18 numbers. The page shows the data folder as ``DATA``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np

from l2ood.bench import OPENOOD_CIFAR10_RESNET18, RECIPES, BenchSpec, aggregate, run_bench
from l2ood.evaluation import parse_detectors
from l2ood.models import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
UNSTABLE = 10.0  # AUROC points between seeds beyond which a value is called unstable
NAMES = {"ce": "CE", "l2": "L2", "logitnorm": "LogitNorm", "t2fnorm": "T2FNorm"}
RECIPE = "cpu-small"


def analysis(csv_path: Path, note: str = "") -> str:
    """Computed conclusions (issue 14): combinations against their parts, each variant's best against CE's best on
    near and far OoD, every seed's group AUROC for ‖z‖ and the best columns. ``note``: a paragraph put first
    (which runs the section comes from)."""
    rows = list(csv.DictReader(csv_path.open()))
    # group AUROC per (variant, detector, group, seed) = mean over the group's data sets
    acc: dict[tuple[str, str, str, int], list[float]] = {}
    for r in rows:
        acc.setdefault((r["variant"], r["detector"], r["group"], int(r["seed"])), []).append(100 * float(r["auroc"]))
    g = {k: float(np.mean(v)) for k, v in acc.items()}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows})
    groups = [x for x in ("near", "far") if any(k[2] == x for k in g)]

    def per_seed(v: str, d: str, grp: str) -> list[float]:
        return [g[(v, d, grp, sd)] for sd in seeds if (v, d, grp, sd) in g]

    def mean(v: str, d: str, grp: str) -> float:
        return float(np.mean(per_seed(v, d, grp)))

    dets = {v: list(dict.fromkeys(r["detector"] for r in rows if r["variant"] == v)) for v in variants}
    out = ["## What the table says (computed from results.csv)", ""]
    if note:
        out += [note, ""]
    combos = [d for d in dets.get("l2", []) if "(" in d]
    if combos:
        out += ["Combinations against their parts (group AUROC %, mean over seeds; Δ = combined − better part; wins = "
                "seeds where the combination beats both parts; the combination is cross-fitted on the ID test halves):",
                "", "| model | combination | " + " | ".join(f"{grp} Δ | {grp} wins" for grp in groups) + " |",
                "|---|---|" + "---|---|" * len(groups)]
        for v in variants:
            for c in [d for d in dets[v] if "(" in d]:
                parts = [p.strip() for p in c[c.index("(") + 1 : c.rindex(")")].split(",")]
                cols = [p if p in dets[v] else f"{p}:trained" for p in parts]
                cells = []
                for grp in groups:
                    cs, ps = per_seed(v, c, grp), [per_seed(v, p, grp) for p in cols]
                    best = [max(x) for x in zip(*ps, strict=True)]
                    cells += [f"{np.mean(cs) - max(np.mean(x) for x in ps):+.2f}",
                              f"{sum(a > b for a, b in zip(cs, best, strict=True))}/{len(cs)}"]
                out.append(f"| {NAMES.get(v, v)} | {c} | " + " | ".join(cells) + " |")
        out.append("")
    if "ce" in variants:
        out += ["Each model's best column (single or combined, by mean group AUROC over seeds) against CE's best:", "",
                "| group | model | best column | AUROC | Δ vs CE's best | seeds ≥ CE's best | L2 ‖z‖ |",
                "|---|---|---|---|---|---|---|"]
        for grp in groups:
            ce_best = max(dets["ce"], key=lambda d: mean("ce", d, grp))
            ce_seeds = dict(zip(seeds, per_seed("ce", ce_best, grp), strict=False))
            for v in variants:
                best = max(dets[v], key=lambda d, v=v: mean(v, d, grp))
                mine = dict(zip(seeds, per_seed(v, best, grp), strict=False))
                ge = sum(mine[sd] >= ce_seeds[sd] for sd in mine if sd in ce_seeds)
                fn = f"{mean(v, 'feature_norm', grp):.2f}" if v == "l2" else ""
                out.append(f"| {grp} | {NAMES.get(v, v)} | {best} | {mean(v, best, grp):.2f} | "
                           f"{mean(v, best, grp) - mean('ce', ce_best, grp):+.2f} | {ge}/{len(mine)} | {fn} |")
        out.append("")
    out += [f"Every seed's group AUROC (%) for L2 ‖z‖ and each model's best column (range > {UNSTABLE:.0f} points: "
            "**unstable**):", "", "| group | model | column | " + " | ".join(f"seed {sd}" for sd in seeds)
            + " | range |", "|---|---|---|" + "---|" * (len(seeds) + 1)]
    for grp in groups:
        for v in variants:
            best = max(dets[v], key=lambda d, v=v: mean(v, d, grp))
            for d in dict.fromkeys(["feature_norm", best] if v == "l2" else [best]):
                vals = per_seed(v, d, grp)
                rng = max(vals) - min(vals)
                out.append(f"| {grp} | {NAMES.get(v, v)} | {d} | " + " | ".join(f"{x:.1f}" for x in vals)
                           + f" | {rng:.1f}{' **unstable**' if rng > UNSTABLE else ''} |")
    out += ["", "Per-data-set ranges and the flagged (set, column) pairs with every seed's value are in the "
            "per-data-set table above (⚠) and its list of unstable results.", ""]
    return "\n".join(out)


def _seed_list(seeds: list[int]) -> str:
    """``[0, 1, 2, 3, 4]`` → ``0–4``; anything else comma-separated."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(x) for x in seeds)


def _recipe(hyper: dict[str, object]) -> tuple[str, str]:
    """(the flags that change the recipe, e.g. ``--epochs 8``; a description of the training) from the bench's
    hyper-parameters."""
    base = RECIPES[RECIPE]
    flags = " ".join(f"`--{k} {hyper[k]}`" for k in ("epochs", "width") if k in hyper and hyper[k] != base[k])
    h = {**base, **hyper}
    arch = "CIFAR ResNet18" if h["arch"] == "resnet18" else f"`{h['arch']}`"
    wd = float(h["weight_decay"])  # type: ignore[arg-type]
    mant, exp = f"{wd:.6e}".split("e")
    wd_s = f"{mant.rstrip('0').rstrip('.')}e{int(exp)}" if 0 < wd < 0.01 else f"{wd:g}"  # 0.0005 → 5e-4
    desc = (f"{arch} width {h['width']}, {h['epochs']} epochs, batch {h['batch_size']}, lr {h['lr']} {h['schedule']}, "
            f"wd {wd_s}, pad {h['pad']}")
    return flags, desc


def _shown_args(argv: list[str]) -> list[str]:
    """The command-line arguments as the page shows them: the data folder as ``DATA`` (also when it came from
    ``L2OOD_DATA``), without ``--render-only``."""
    out, i, root = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a == "--render-only":
            pass
        elif a == "--data-root":
            out += ["--data-root", "DATA"]
            root, i = True, i + 1
        elif a.startswith("--data-root="):
            out += ["--data-root", "DATA"]
            root = True
        else:
            out.append(a)
        i += 1
    return out if root else [*out, "--data-root", "DATA"]


def render(args: argparse.Namespace, argv: list[str], out: Path, md: Path) -> str:
    """The page docs/RESULTS-cifar10.md from the bench folder ``out`` and its ``results.md`` (``md``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_report import DATA_LAYOUT  # the same "Data layout" section as docs/RESULTS-gpu.md

    table = md.read_text().split("\n", 2)[2]
    spec_path = out / "spec.json"
    hyper = json.loads(spec_path.read_text()).get("hyper", {}) if spec_path.is_file() else {}
    hyper = hyper or {"epochs": args.epochs, "width": args.width}
    flags, desc = _recipe(hyper)
    seeds = sorted({int(r["seed"]) for r in csv.DictReader((out / "results.csv").open())})
    recipe = f"`{RECIPE}`" + (f", {flags}" if flags else "")
    # the recipe beside the tables it produced: before the first table, and in the per-data-set table's caption
    first = table.index("| arch | variant | detector |")
    table = (table[:first] + f"Recipe of every row: {recipe} ({desc}), seeds {_seed_list(seeds)}.\n\n"
             + table[first:])
    table = table.replace(" points):\n\n| arch | variant | detector | ",
                          f" points; recipe {recipe}, as above):\n\n| arch | variant | detector | ", 1)
    ref = "\n".join(f"| {k} | {v[0]:.2f} | {v[1]:.2f} |" for k, v in OPENOOD_CIFAR10_RESNET18.items())
    cmd = "python benchmarks/cifar10_local.py " + " ".join(_shown_args(argv))
    finished = ", ".join(str(x) for x in seeds)
    n_params = sum(p.numel() for p in build_model(ModelConfig(width=args.width)).parameters())
    desc_nb = desc.replace(f"{hyper.get('epochs', args.epochs)} epochs, ", "")
    note = textwrap.fill(f"Every table in this section comes from the runs above: recipe `{RECIPE}`"
                         + (f" with {flags}" if flags else "") + f" ({desc_nb}), seeds {_seed_list(seeds)}.",
                         120, break_long_words=False, break_on_hyphens=False)
    bench = "L2OOD_DEV_BENCHMARKS=1 l2ood bench --benchmark cifar10-local"
    return f"""# Results: CIFAR-10 (JPEG copy) on a 2-core CPU

Produced by `{cmd}` (= `{bench} --recipe {RECIPE} --epochs {args.epochs}
--width {args.width} --n-ood {args.n_ood} --variants {args.variants} --detectors {args.detectors}
{" ".join("--combine " + c for c in args.combine)} --data-root DATA`). `cifar10-local` is the
project's own CIFAR-10 benchmark on the files laid out under DATA/ (see Data layout at the end of this page),
enabled with the environment variable `L2OOD_DEV_BENCHMARKS=1` (the script sets it).

Data (DATA/, see Data layout): ID = **CIFAR-10 (JPEG copy)** — a public copy re-encoded as JPEG
quality 75 with 4:2:0 chroma subsampling, train 50 000 / test 10 000; near-OoD = Tiny-ImageNet test resized to
32×32; far-OoD = MNIST, Fashion-MNIST, a 10-class DTD subset, scikit-image texture patches (seeded subsets of
{args.n_ood} images per OoD set). The OoD sets come through other pipelines than the JPEG-compressed ID images,
so a detector may partly pick up compression differences. CIFAR-100, SVHN and Places365 are not part of this benchmark.

Model and schedule: CIFAR ResNet18 at width {args.width} ({args.width}/64 of the standard width:
{n_params / 1e6:.1f} M parameters, feature dim {8 * args.width}), {args.epochs} epochs, batch 128, SGD Nesterov
lr 0.1 cosine, wd 5e-4, crop (pad 4) + flip, bf16
autocast on CPU. The paper trains the full-width network for 60 epochs; this is a CPU-sized stand-in and the
numbers are not comparable in absolute terms.

Seeds finished: {finished} (the benchmark resumes: finished cells are kept, an interrupted
training resumes from its checkpoint). The earlier table with LogitNorm and T2FNorm (3 seeds, the 14 detectors of
the time) is in the history: `git show 7c6455c:docs/RESULTS-cifar10.md`.

{table}
OpenOOD v1.5, CIFAR-10, full-width ResNet18 (published AUROC %, near / far; their far set is MNIST, SVHN,
Textures, Places365; OpenOOD's own training, not ours: full-width ResNet18, 100 epochs, original CIFAR-10 — l2ood's
`openood` recipe):

| method | near | far |
|---|---|---|
{ref}

{analysis(out / "results.csv", note)}
Differences in scale, stated plainly: our network has 1/16 of the parameters of theirs and ~1/10 of the
epochs; our ID data are JPEG-degraded; our near group lacks CIFAR-100 and our far group differs (Fashion-MNIST
and two texture sets instead of SVHN and Places365). Compare rankings between rows of our table, not our
numbers with theirs.

{DATA_LAYOUT}
"""


def main() -> None:
    os.environ.setdefault("L2OOD_DEV_BENCHMARKS", "1")  # cifar10-local is the project's own benchmark
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n-ood", type=int, default=2000)
    ap.add_argument("--data-root", default=os.environ.get("L2OOD_DATA") or None,
                    help="the data folder DATA/ (see 'Data layout' in docs/RESULTS-cifar10.md; default: $L2OOD_DATA)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-cifar10-local"))
    ap.add_argument("--variants", default="ce,l2,logitnorm,t2fnorm")
    ap.add_argument("--detectors", default="all")
    ap.add_argument("--combine", action="append", default=[], metavar="A,B",
                    help="combined column, cross-fitted on the ID test halves (repeatable)")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS-cifar10.md"))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        _, md = aggregate(out)
    else:
        if not args.data_root:
            ap.error("no data folder: pass --data-root DATA or set L2OOD_DATA (the layout is in "
                     "docs/RESULTS-cifar10.md, 'Data layout')")
        spec = BenchSpec("cifar10-local", RECIPE, ["resnet18"], args.variants.split(","),
                         args.seeds, parse_detectors(args.detectors), out, args.data_root,
                         {"epochs": args.epochs, "width": args.width}, n_ood=args.n_ood, progress=False,
                         combined=list(args.combine))
        _, md = run_bench(spec)
    doc = render(args, sys.argv[1:], out, md)
    Path(args.doc).write_text(doc)
    (Path(args.doc).parent / "results").mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "results.csv", Path(args.doc).parent / "results" / "cifar10-local.csv")
    print(doc)


if __name__ == "__main__":
    main()
