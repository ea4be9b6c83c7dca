"""Benchmark: the demo configuration at a longer schedule, several seeds, L2 vs CE.

Trains ResNet18 (CIFAR-style, width 16) with the L2 head and its CE twin on Fashion-MNIST
(55 000 images; 5 000 held out), evaluates every requested detector against MNIST, textures and
noise, and writes the mean ± std over seeds to ``docs/RESULTS.md`` (and raw numbers to
``docs/results/fmnist.json``). Finished runs are reused, so the script can be re-run to add
detectors or seeds.

    python benchmarks/fmnist_seeds.py --epochs 12 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2ood.evaluation import evaluate_run, parse_detectors
from l2ood.models import ModelConfig
from l2ood.pipeline import training_data
from l2ood.provenance import cpu_name
from l2ood.results import ResultsFile, ResultsRecord, read_results, write_results
from l2ood.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
OOD = ["mnist", "textures", "noise"]


def fmt(vals: list[float]) -> str:
    """``mean ± sample std [min–max]`` in %: the range shows a seed that breaks away, which a std hides."""
    a = 100 * np.asarray(vals)
    if len(a) < 2:
        return f"{a.mean():.2f}"
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f} [{a.min():.1f}–{a.max():.1f}]"


UNSTABLE = 10.0  # AUROC points between the best and the worst seed beyond which a result is called unstable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--detectors", default="feature_norm,msp,maxlogit,energy")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-fmnist"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    ap.add_argument("--combine", action="append", default=[], metavar="A,B",
                    help="add a combined column (conformal p-values on the holdout, Bonferroni-min); repeatable")
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "fmnist.json"), help="raw results file")
    ap.add_argument("--render-only", action="store_true", help="rewrite the markdown from the --json file")
    args = ap.parse_args()
    if args.render_only:
        render(read_results(args.json).to_json()["runs"], args)
        return
    detectors = parse_detectors(args.detectors)
    train_set, _ = training_data("fashion-mnist", holdout=5000)
    records: dict[str, ResultsRecord] = {}
    for seed in args.seeds:
        for head in ("l2", "ce"):
            run = Path(args.runs) / f"e{args.epochs}-w{args.width}" / f"seed{seed}" / head
            if not (run / "model.json").exists():
                train(train_set, ModelConfig(width=args.width, head=head),
                      TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed),
                      run, resume=True, progress=False)
            print(f"evaluating seed {seed} {head}", flush=True)
            r = evaluate_run(run, OOD, detectors, seed=0, combined=[c.split(",") for c in args.combine])
            r.save(run / "eval")
            records[f"{head}/seed{seed}"] = r.results
        # after every seed, so an interrupted benchmark still leaves its finished seeds
        results = ResultsFile.new(records)
        write_results(args.json, results)
        render(results.to_json()["runs"], args)


def render(raw: dict[str, Any], args: argparse.Namespace) -> None:
    """docs/RESULTS.md from the evaluated runs (label ``head/seedK`` → results record as JSON)."""
    heads = {"l2": "L2", "ce": "CE"}
    seeds = sorted({int(k.split("/seed")[1]) for k in raw})  # the seeds finished so far
    lines = [
        "# Results: Fashion-MNIST (ID) vs MNIST, textures, noise",
        "",
        "Produced by:",
        "",
        "```",
        "python " + " ".join(shlex.quote(a) for a in ["benchmarks/fmnist_seeds.py", *sys.argv[1:]]
                             if a != "--render-only"),
        "```",
        "",
        f"Config: CIFAR-style ResNet18, width {args.width} (feature dim {8 * args.width}), "
        f"{args.epochs} epochs, batch {args.batch_size}, SGD Nesterov lr {args.lr} cosine, wd 5e-4, "
        "random crop (pad 2) + horizontal flip; Fashion-MNIST train minus a 5 000-image holdout "
        "(55 000 images); ID test = the 10 000 Fashion-MNIST test images; OoD = MNIST test (10 000), "
        "textures (2 000 seeded patches of scikit-image's brick/grass/gravel), noise (2 000: 1 000 "
        f"uniform + 1 000 Gaussian). Seeds {', '.join(map(str, seeds))}; mean ± sample std [min–max] over "
        "seeds. "
        f"Machine: {cpu_name()} (x86_64), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, precision auto (bf16 autocast where supported).",
        "",
        "Scores: higher = more in-distribution. AUROC and FPR@95TPR in %. FPR95 (ID+) is l2ood's convention (ID "
        "positive: the fraction of OoD accepted when 95 % of ID is kept); OpenOOD's (OoD positive) is "
        "`fpr95_ood_pos` in the raw JSON.",
        "",
    ]
    accs = {h: [raw[k]["id_accuracy"] for k in raw if k.startswith(h + "/")] for h in heads}
    lines += ["| model | ID accuracy (%) |", "|---|---|"]
    lines += [f"| {heads[h]} | {fmt(accs[h])} |" for h in heads if accs[h]]
    lines += ["", "| model | detector | " + " | ".join(f"{s} AUROC | {s} FPR95 (ID+)" for s in OOD) + " |",
              "|---|---|" + "---|---|" * len(OOD)]
    for h in heads:
        keys = [k for k in raw if k.startswith(h + "/")]
        if not keys:
            continue
        for det in raw[keys[0]]["detectors"]:
            cells = []
            for s in OOD:
                au = [raw[k]["ood"][s]["detectors"][det]["auroc"] for k in keys]
                fp = [raw[k]["ood"][s]["detectors"][det]["fpr95"] for k in keys]
                cells += [fmt(au), fmt(fp)]
            name = f"**{det}**" if det == "feature_norm" and h == "l2" else det
            lines.append(f"| {heads[h]} | {name} | " + " | ".join(cells) + " |")
    # computed summary: where does the method's score rank among all (model, detector) pairs?
    means: dict[tuple[str, str], dict[str, float]] = {}
    for h in heads:
        keys = [k for k in raw if k.startswith(h + "/")]
        if not keys:
            continue
        for det in raw[keys[0]]["detectors"]:
            means[(heads[h], det)] = {s: float(np.mean([raw[k]["ood"][s]["detectors"][det]["auroc"] for k in keys]))
                                      for s in OOD}
    # every seed's value for the method and each model's best detector, and where seeds disagree
    lines += ["", "Every seed's AUROC (%) for ‖z‖ and for each model's best detector per OoD set (by mean):", "",
              "| OoD set | model | detector | " + " | ".join(f"seed {sd}" for sd in seeds) + " | range |",
              "|---|---|---|" + "---|" * (len(seeds) + 1)]
    unstable: list[str] = []
    for s in OOD:
        for h in heads:
            keys = [f"{h}/seed{sd}" for sd in seeds if f"{h}/seed{sd}" in raw]
            if not keys:
                continue
            dets = list(raw[keys[0]]["detectors"])
            best = max(dets, key=lambda d: float(np.mean([raw[k]["ood"][s]["detectors"][d]["auroc"] for k in keys])))
            for det in dict.fromkeys(["feature_norm", best]):
                vals = [100 * raw[k]["ood"][s]["detectors"][det]["auroc"] for k in keys]
                rng = max(vals) - min(vals)
                flag = " **unstable**" if rng > UNSTABLE else ""
                lines.append(f"| {s} | {heads[h]} | {det} | " + " | ".join(f"{v:.1f}" for v in vals)
                             + f" | {rng:.1f}{flag} |")
                if rng > UNSTABLE:
                    unstable.append(f"{heads[h]} {det} on {s} ({min(vals):.1f}–{max(vals):.1f})")
    lines += ["", ("Unstable across seeds (range > 10 AUROC points): " + "; ".join(unstable)
                   + ". A conclusion that rests on these sets rests on single seeds.") if unstable
              else "No listed result moves by more than 10 AUROC points between seeds."]
    # combined columns against their parts (issue 14): does ‖z‖ + a direction-based detector beat each alone?
    combos = [d for d in (raw[next(iter(raw))]["detectors"] if raw else []) if "(" in d]
    if combos:
        lines += ["", "Combinations against their parts (mean AUROC % over seeds; Δ = combined − best part; "
                      "wins = seeds where the combination beats both parts):", "",
                  "| model | combination | " + " | ".join(f"{s} Δ | {s} wins" for s in OOD) + " |",
                  "|---|---|" + "---|---|" * len(OOD)]
        for h in heads:
            keys = [k for k in raw if k.startswith(h + "/")]
            for c in combos:
                parts = [p.strip() for p in c[c.index("(") + 1 : c.rindex(")")].split(",")]
                cols = [p if p in raw[keys[0]]["detectors"] else f"{p}:trained" for p in parts]
                cells = []
                for s in OOD:
                    def au(k: str, d: str, s: str = s) -> float:
                        return 100 * raw[k]["ood"][s]["detectors"][d]["auroc"]
                    delta = float(np.mean([au(k, c) - max(au(k, p) for p in cols) for k in keys]))
                    wins = sum(au(k, c) > max(au(k, p) for p in cols) for k in keys)
                    cells += [f"{delta:+.2f}", f"{wins}/{len(keys)}"]
                lines.append(f"| {heads[h]} | {c} | " + " | ".join(cells) + " |")
    lines += ["", "Summary (computed from the table, mean AUROC over seeds):", ""]
    for s in OOD:
        ranked = sorted(means, key=lambda md: -means[md][s])
        best = ranked[0]
        ours = ("L2", "feature_norm")
        if ours in means:
            lines.append(f"- {s}: best {best[0]} {best[1]} ({100 * means[best][s]:.2f}); L2 feature_norm "
                         f"{100 * means[ours][s]:.2f} ranks {ranked.index(ours) + 1} of {len(ranked)}; "
                         f"CE feature_norm {100 * means[('CE', 'feature_norm')][s]:.2f}.")
    # issue 14: does the L2 model with its best score (single or combined) reach the CE model's best?
    lines += ["", "L2's best score against CE's best (each model's best column by mean AUROC over seeds, single or "
                  "combined; per seed: the same two columns):", ""]
    for s in OOD:
        best_of = {}
        for m in ("L2", "CE"):
            own = [md for md in means if md[0] == m]
            if own:
                best_of[m] = max(own, key=lambda md: means[md][s])
        if len(best_of) < 2:
            continue
        (_, d2), (_, dc) = best_of["L2"], best_of["CE"]
        def per_seed(h: str, d: str, s: str = s) -> dict[int, float]:
            return {int(k.split("/seed")[1]): raw[k]["ood"][s]["detectors"][d]["auroc"] for k in raw
                    if k.startswith(h + "/")}

        per2, perc = per_seed("l2", d2), per_seed("ce", dc)
        both = sorted(set(per2) & set(perc))
        reach = sum(per2[sd] >= perc[sd] for sd in both)
        gap = 100 * (means[best_of["L2"]][s] - means[best_of["CE"]][s])
        lines.append(f"- {s}: L2 {d2} {100 * means[best_of['L2']][s]:.2f} vs CE {dc} "
                     f"{100 * means[best_of['CE']][s]:.2f} (Δ {gap:+.2f}); L2 ≥ CE in {reach}/{len(both)} seeds.")
    base = Path(args.runs) / f"e{args.epochs}-w{args.width}"
    t = [json.loads((base / k.split("/")[1] / k.split("/")[0] / "model.json").read_text())
         .get("train_seconds", float("nan")) for k in raw]
    lines += [
        "",
        f"Training time per model: {np.nanmean(t):.0f} s on average (wall clock on this 2-core machine, which "
        "ran other jobs at the same time during parts of this benchmark; see docs/PERFORMANCE.md for clean "
        "throughput numbers).",
        "",
        "**Published anchor**: DUQ (van Amersfoort et al., ICML 2020, Table 1) reports AUROC 0.955 for "
        "Fashion-MNIST (ID) vs MNIST (OoD). Their network and training differ (a small CNN with a "
        "gradient penalty and an RBF head), so the comparison is indicative only.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
