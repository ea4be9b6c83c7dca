"""What hyper-parameter selection on a validation OoD set changes, on the Fashion-MNIST benchmark runs.

    python benchmarks/selection_fmnist.py --seeds 0 1 2        # after benchmarks/fmnist_seeds.py trained them

For every finished run of ``benchmarks/fmnist_seeds.py`` (``runs/bench-fmnist/e12-w16/seed<k>/{l2,ce}``) and every
detector with a search space, the test AUROC with the default hyper-parameters is compared with the test AUROC
after selection (``l2ood evaluate --val-ood``): ID validation = the run's 5 000-image holdout, validation OoD =
1 000 seeded images of the DTD subset DATA/dtd_partial10.npz (textures of 10 DTD classes, grey-scaled and resized to
28×28), a source that none of the test sets (MNIST, scikit-image textures, noise) shares. Writes
docs/RESULTS-selection.md and docs/results/selection-fmnist.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from l2ood.detectors import DETECTORS, all_detectors
from l2ood.evaluation import evaluate_run
from l2ood.provenance import cpu_name

ROOT = Path(__file__).resolve().parents[1]
OOD = ["mnist", "textures", "noise"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-fmnist" / "e12-w16"))
    ap.add_argument("--val-ood", default=f"npz:{ROOT.parent / 'shared' / 'data' / 'dtd_partial10.npz'}")
    ap.add_argument("--n-val-ood", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "docs" / "RESULTS-selection.md"))
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "selection-fmnist.json"))
    ap.add_argument("--detectors", default=None, help="comma list (default: every detector with a search space)")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    dets = args.detectors.split(",") if args.detectors else [d for d in all_detectors() if DETECTORS[d].search_space]
    if args.render_only:
        raw = json.loads(Path(args.json).read_text())
    else:
        raw = {}
        for seed in args.seeds:
            for head in ("l2", "ce"):
                run = Path(args.runs) / f"seed{seed}" / head
                if not (run / "model.json").is_file():
                    sys.exit(f"{run}: not trained; run benchmarks/fmnist_seeds.py first")
                t0 = time.perf_counter()
                base = evaluate_run(run, OOD, dets, seed=0).results
                t1 = time.perf_counter()
                sel = evaluate_run(run, OOD, dets, seed=0, val_ood=args.val_ood, n_val_ood=args.n_val_ood).results
                t2 = time.perf_counter()
                print(f"seed {seed} {head}: default {t1 - t0:.0f} s, with selection {t2 - t1:.0f} s", flush=True)
                raw[f"{head}/seed{seed}"] = {
                    "default": {c: {s: base.metric(s, c) for s in OOD} for c in base.detectors},
                    "selected": {c: {s: sel.metric(s, c) for s in OOD} for c in sel.detectors},
                    "selection": sel.selection, "seconds": [t1 - t0, t2 - t1]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(raw, indent=1))
    write(raw, args)


def write(raw: dict[str, dict], args: argparse.Namespace) -> None:
    seeds = sorted({int(k.split("/seed")[1]) for k in raw})
    first = next(iter(raw.values()))["selection"]
    lines = ["# Hyper-parameter selection on a validation OoD set: Fashion-MNIST", "",
             "Produced by `python benchmarks/selection_fmnist.py " + " ".join(a for a in sys.argv[1:]
                                                                          if a != "--render-only") + "`.", "",
             f"Runs: the Fashion-MNIST benchmark models (docs/RESULTS-fmnist-29.md: ResNet18 width 16, 12 epochs), "
             f"seeds {', '.join(map(str, seeds))}, L2 and CE. Selection (`l2ood evaluate --val-ood`): "
             f"{first['criterion']}; ID validation = the run's holdout ({first['n_val_id']} images, never trained "
             f"on); validation OoD = {first['val_ood']} ({first['n_val_ood']} images: DTD textures, a source no "
             "test set shares). Test sets: MNIST test (10 000), scikit-image textures (2 000), noise (2 000). "
             f"Machine: {cpu_name()} (x86_64), torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s).", "",
             "Test AUROC % with the defaults → after selection (mean over seeds), and the values chosen per seed:", "",
             "| model | column | default | chosen per seed | " + " | ".join(f"{s} default → selected" for s in OOD)
             + " | mean Δ |", "|---|---|---|---|" + "---|" * (len(OOD) + 1)]
    deltas: list[float] = []
    set_deltas: list[list[float]] = []
    for head, name in (("l2", "L2"), ("ce", "CE")):
        keys = [f"{head}/seed{s}" for s in seeds if f"{head}/seed{s}" in raw]
        if not keys:
            continue
        for col, c in raw[keys[0]]["selection"]["columns"].items():
            chosen = "; ".join(", ".join(f"{k}={v}" for k, v in raw[k]["selection"]["columns"][col]["chosen"].items())
                               for k in keys)
            cells, d_all = [], []
            for s in OOD:
                a = statistics.mean(100 * raw[k]["default"][col][s] for k in keys)
                b = statistics.mean(100 * raw[k]["selected"][col][s] for k in keys)
                cells.append(f"{a:.2f} → {b:.2f}")
                d_all.append(b - a)
            deltas.append(statistics.mean(d_all))
            set_deltas.append(d_all)
            default = ", ".join(f"{k}={v}" for k, v in c["default"].items())
            lines.append(f"| {name} | {col} | {default} | {chosen} | " + " | ".join(cells)
                         + f" | {statistics.mean(d_all):+.2f} |")
    better, worse = sum(d > 0 for d in deltas), sum(d < 0 for d in deltas)
    per_set = ", ".join(f"{s} {statistics.mean(x[i] for x in set_deltas):+.2f}" for i, s in enumerate(OOD))
    lines += ["", f"Selection raised the mean test AUROC of {better} of {len(deltas)} columns and lowered {worse} "
              f"(mean change {statistics.mean(deltas):+.2f} points; per test set: {per_set}). A value chosen on "
              "one validation OoD set is tuned to that kind of outlier: a gain there is not a gain on every set.", "",
              "Time per run (s, default evaluation / evaluation with selection, forward passes cached): "
              + "; ".join(f"{k}: {v['seconds'][0]:.0f} / {v['seconds'][1]:.0f}" for k, v in raw.items()), ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
