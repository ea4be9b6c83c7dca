"""The ``l2ood`` command line: ``train``, ``evaluate``, ``demo``, ``calibrate``, ``screen``, ``analyze``, ``bench``.

Errors a user can fix (missing data, bad arguments, unloadable runs) end in one message on stderr
and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import DATASETS, PARAMETRIC, DataError, ImageSet, load_dataset
from ..models import ARCHITECTURES, HEAD_MODES, ModelConfig
from ..runtime import PRECISIONS
from ..train import ArtifactError, TrainConfig, TrainingDiverged
from ..train.distributed import dist_from_env
from ..train.trainer import SCHEDULES

DEMO_OOD = "mnist,textures,noise"


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _add_runtime(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 autocast + channels_last where supported, else fp32")
    if data:
        p.add_argument("--data-root", default=None,
                       help="folder holding data sets (else $L2OOD_DATA, offline copies, download)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_train_args(p: argparse.ArgumentParser, epochs: int, width: int) -> None:
    trainable = [k for k, v in DATASETS.items() if not v.generated and "train" in v.splits]
    p.add_argument("--dataset", default="fashion-mnist",
                   help=f"ID training data: {', '.join(trainable)} or {', '.join(PARAMETRIC)} (labelled)")
    p.add_argument("--arch", default="resnet18", choices=list(ARCHITECTURES))
    p.add_argument("--width", type=_positive_int, default=width, help="first-stage channels (64 = standard)")
    p.add_argument("--epochs", type=_positive_int, default=epochs)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=_positive_float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=_positive_int, default=None, metavar="N",
                   help="train on a seeded subset of N images")
    p.add_argument("--test-data", default=None, metavar="SPEC",
                   help="ID test set for --track and `l2ood evaluate` (default: the data set's test split; "
                        "for npz packs, image lists and class-folder trees without test/, the holdout)")
    p.add_argument("--holdout", type=_nonneg_int, default=5000, metavar="N",
                   help="ID training images held out for calibration/validation (seed 0 split)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``l2ood`` command."""
    ap = argparse.ArgumentParser(
        prog="l2ood",
        description="OoD screening with L2-normalized features (Haas et al., TMLR 2024). "
                    "Scores: higher = more in-distribution.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train an L2 (or CE) classifier",
                       description="Train a classifier whose head sees z/||z|| (--head l2) or z (--head ce).")
    _add_train_args(t, epochs=10, width=16)
    t.add_argument("--head", default="l2", choices=HEAD_MODES)
    t.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<head>-w<width>-s<seed>)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--checkpoint-every-steps", type=_nonneg_int, default=0,
                   help="also checkpoint every N steps inside an epoch (0: at epoch ends only)")
    t.add_argument("--track", default=None, metavar="every=K",
                   help="every K epochs record NC metrics, ||z|| statistics and feature-norm AUROC to "
                        "RUN/track.jsonl (also n_train=N|all,n_test=N,n_ood=N); see `l2ood analyze`")
    t.add_argument("--track-ood", default=DEMO_OOD, help=f"OoD sets for --track (default {DEMO_OOD})")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the model (measured: no gain on an H200, see docs/PERFORMANCE.md)")
    t.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (CPU and CUDA)")
    _add_runtime(t)

    e = sub.add_parser("evaluate", help="ID accuracy + OoD metrics of trained runs",
                       description="AUROC, FPR@95TPR, AUPR-In/Out per OoD set and detector.")
    e.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) written by `l2ood train`")
    e.add_argument("--ood", default=DEMO_OOD, help=f"comma-separated OoD sets (default {DEMO_OOD}); "
                   f"known: {', '.join([*DATASETS, *PARAMETRIC])}")
    e.add_argument("--detectors", default="feature_norm,msp,maxlogit,energy", help="comma list or 'all'")
    e.add_argument("--n-ood", type=_positive_int, default=None, help="seeded subset size per OoD set")
    e.add_argument("--n-id", type=_positive_int, default=None, help="seeded subset of the ID test set")
    e.add_argument("--out", default=None, help="report folder (default: RUN/eval, or runs/compare-*)")
    e.add_argument("--batch-size", type=_positive_int, default=512, help="images per forward pass")
    _add_runtime(e)

    d = sub.add_parser("demo", help="train L2 + CE twins (default Fashion-MNIST), evaluate, report",
                       description="The main job: trains the L2 model and its CE twin on --dataset "
                                   "(default Fashion-MNIST), "
                                   f"evaluates against {DEMO_OOD}, prints the table and writes a report. "
                                   "About 5-6 minutes on a 2-core CPU with bf16 (AVX-512-BF16), "
                                   "~2.5x longer in fp32.")
    _add_train_args(d, epochs=6, width=16)
    d.add_argument("--ood", default=DEMO_OOD)
    d.add_argument("--n-ood", type=_positive_int, default=None)
    d.add_argument("--n-id", type=_positive_int, default=None)
    d.add_argument("--out", default=None, help="output folder (default runs/demo-<time>)")
    _add_runtime(d)
    from ..bench.definitions import BENCHMARKS, RECIPES, VARIANTS

    bn = sub.add_parser(
        "bench", help="benchmark matrix: architecture x training variant x seed -> every detector",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run (or resume) a benchmark matrix. For every architecture, training variant "
                    "(head) and seed, train one model (recipe hyper-parameters, overridable), then score "
                    "every detector on every OoD set of the benchmark with one cached forward pass per "
                    "data set. Finished cells are not recomputed. Writes OUT/results.csv and OUT/results.md "
                    "(OpenOOD layout: near/far AUROC and FPR@95, ID accuracy, mean +- std over seeds).\n\n"
                    "benchmarks: " + "; ".join(f"{k} (ID {v['id'].split('@')[0]}, near "
                                               f"{len(v['ood'].get('near', []))}, far {len(v['ood'].get('far', []))})"
                                               for k, v in BENCHMARKS.items()) + "\n"
                    "recipes: " + "; ".join(f"{k} ({v['arch']} w{v['width']}, {v['epochs']} ep)"
                                            for k, v in RECIPES.items()) + "\n\n"
                    "example (the paper's CIFAR-10 table on a GPU):\n"
                    "  l2ood bench --benchmark cifar10 --recipe paper-resnet18 --variants ce,l2,logitnorm,t2fnorm "
                    "--seeds 0,1,2 --data-root DATA --out runs/bench-c10")
    bn.add_argument("--benchmark", default="cifar10", choices=list(BENCHMARKS))
    bn.add_argument("--recipe", default="paper-resnet18", choices=list(RECIPES))
    bn.add_argument("--archs", default=None, help="comma list (default: the recipe's architecture)")
    bn.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma list of heads (default {','.join(VARIANTS)})")
    bn.add_argument("--seeds", default="0,1,2")
    bn.add_argument("--detectors", default="all")
    bn.add_argument("--width", type=_positive_int, default=None, help="override the recipe's width")
    bn.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epochs")
    bn.add_argument("--batch-size", type=_positive_int, default=None)
    bn.add_argument("--lr", type=_positive_float, default=None)
    bn.add_argument("--n-ood", type=_positive_int, default=None, help="seeded subset size per OoD set")
    bn.add_argument("--n-id", type=_positive_int, default=None, help="seeded subset of the ID test set")
    bn.add_argument("--compile", action="store_true")
    bn.add_argument("--out", default=None, help="output folder (default runs/bench-<benchmark>-<recipe>)")
    _add_runtime(bn)

    an = sub.add_parser("analyze", help="neural-collapse / training-efficiency report from tracked runs",
                        description="Plots NC1-NC4 and feature-norm AUROC vs epoch (L2 vs CE on the same axes), "
                                    "||z|| histograms, and verdicts on the paper's claims, from runs trained "
                                    "with --track.")
    an.add_argument("runs", nargs="+", metavar="RUN")
    an.add_argument("--out", default=None, help="report folder (default runs/analysis-<time>)")
    an.add_argument("--epochs", default=None, help="comma-separated epochs for the histograms (default first,last)")

    c = sub.add_parser("calibrate", help="pick the screening threshold on held-out ID data",
                       description="Score the run's held-out ID split (never the test set) and store the "
                                   "threshold that keeps --tpr of it, plus the calibration scores for "
                                   "conformal p-values, in RUN/model.json.")
    c.add_argument("run", metavar="RUN")
    c.add_argument("--tpr", type=float, default=0.95, help="fraction of ID to accept (default 0.95)")
    c.add_argument("--alpha", type=float, default=None,
                   help="conformal mode: reject when p-value <= alpha; ID rejection rate <= alpha in "
                        "expectation (assumes exchangeable ID data)")
    c.add_argument("--detector", default="feature_norm", help="screening score (default feature_norm)")
    c.add_argument("--calibration-data", default=None, metavar="NAME",
                   help="ID data to calibrate on instead of the run's holdout (e.g. npz:PATH; a registered name "
                        "gives its test split); must overlap neither the training nor the evaluation data")
    c.add_argument("--batch-size", type=_positive_int, default=512)
    _add_runtime(c)

    s = sub.add_parser("screen", help="screen image files/folders/npz packs with a calibrated run",
                       description="Outputs one record per image: path, score, p-value, verdict (in/out), "
                                   "predicted class and confidence. Bad files get an error record; all "
                                   "others are still screened. Exit status: 0 = every input screened, "
                                   "1 = some input could not be read, 2 = usage error.")
    s.add_argument("run", metavar="RUN")
    s.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive), npz packs")
    s.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    s.add_argument("--output", "-o", default="-", help="output file (default: standard output)")
    s.add_argument("--threshold", type=float, default=None, help="manual threshold (overrides calibration)")
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                   help="refuse images with more pixels (decompression-bomb guard)")
    _add_runtime(s, data=False)
    return ap


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _train_sets(args: argparse.Namespace) -> tuple[ImageSet, dict[str, Any], tuple[ImageSet, ImageSet | None]]:
    """``(images to train on, the run's data record, (training split, holdout or None))``."""
    full = load_dataset(args.dataset, "train", root=args.data_root)
    if full.labels is None:
        raise DataError(f"{args.dataset}: training data need labels")
    info: dict[str, Any] = {"holdout": {"n": args.holdout, "seed": 0}}
    if getattr(args, "test_data", None):
        info["test"] = args.test_data
    split: tuple[ImageSet, ImageSet | None] = (full, None)
    if args.holdout:
        if args.holdout >= len(full):
            raise DataError(f"--holdout {args.holdout} leaves no training images ({len(full)} in total)")
        split = full.split(args.holdout, seed=0)
    train_set = split[0]
    if args.train_subset:
        train_set = train_set.subset(args.train_subset, seed=args.seed)
        info["train_subset"] = args.train_subset
    return train_set, info, split


def _train_one(args: argparse.Namespace, head: str, out: Path, train_set: ImageSet, info: dict[str, Any],
               split: tuple[ImageSet, ImageSet | None], resume: bool = False) -> Path:
    from ..train import train
    from ..train.artifact import update_meta

    mcfg = ModelConfig(arch=args.arch, width=args.width, head=head)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
                       device=args.device, precision=args.precision,
                       checkpoint_every_steps=getattr(args, "checkpoint_every_steps", 0),
                       sync_bn=getattr(args, "sync_bn", False),
                       compile=getattr(args, "compile", False))
    tracker = None
    if getattr(args, "track", None):
        from ..analysis.track import TrackConfig, Tracker
        from ..runtime import resolve_runtime

        tracker = Tracker.build(TrackConfig.parse(args.track, args.track_ood), train_set,
                                {"dataset": args.dataset, "data": info}, out,
                                resolve_runtime(args.device, args.precision), args.epochs, root=args.data_root,
                                split=split)
    t0 = time.perf_counter()
    train(train_set, mcfg, tcfg, out, resume=resume, progress=not args.no_progress, log=_log,
          on_epoch_end=tracker)
    if dist_from_env().is_main:
        update_meta(out, dataset=args.dataset, data=info, train_seconds=time.perf_counter() - t0)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/{args.dataset.replace(':', '_').replace('/', '_')}-{args.head}"
                          f"-w{args.width}-s{args.seed}")
    if (out / "model.json").exists() and not args.resume and dist_from_env().is_main:
        raise ValueError(f"{out} already holds a trained model; pass another --out or --resume")
    train_set, info, split = _train_sets(args)
    _train_one(args, args.head, out, train_set, info, split, resume=args.resume)
    if dist_from_env().is_main:
        print(f"saved {out}/model.safetensors and {out}/model.json")
    return 0


def _print_and_report(named: list[tuple[str, Any]], out: Path, title: str) -> None:
    from ..report import format_table, write_report

    print(format_table([(lbl, r.results) for lbl, r in named]))
    cmd = "l2ood " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = write_report(out, [(lbl, r.results, r.scores) for lbl, r in named], title=title, command=cmd)
    all_results = {lbl: r.results for lbl, r in named}
    (out / "results.json").write_text(json.dumps(all_results, indent=2))
    print(f"\nwrote {out / 'results.json'} and {report}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_run, parse_detectors

    detectors = parse_detectors(args.detectors)
    ood = [s.strip() for s in args.ood.split(",") if s.strip()]
    named = []
    for run in args.runs:
        r = evaluate_run(run, ood, detectors, data_root=args.data_root, n_ood=args.n_ood, n_id=args.n_id,
                         device=args.device, precision=args.precision, progress=not args.no_progress,
                         batch_size=args.batch_size)
        label = f"{Path(run).name} ({r.results['head'].upper()})"
        r.save(Path(run) / "eval")
        named.append((label, r))
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "eval" if len(args.runs) == 1
                                           else Path(f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"))
    _print_and_report(named, out, "l2ood evaluation")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..evaluation import DEFAULT_DETECTORS, evaluate_run

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "l2" / "model.json").exists() or (out / "ce" / "model.json").exists():
        raise ValueError(f"{out} already holds a demo; pass another --out")
    t0 = time.perf_counter()
    train_set, info, split = _train_sets(args)
    ood = [s.strip() for s in args.ood.split(",") if s.strip()]
    named = []
    for head in ("l2", "ce"):
        _log(f"== {head.upper()} model ==")
        run = _train_one(args, head, out / head, train_set, info, split)
        r = evaluate_run(run, ood, list(DEFAULT_DETECTORS), data_root=args.data_root, n_ood=args.n_ood,
                         n_id=args.n_id, device=args.device, precision=args.precision,
                         progress=not args.no_progress)
        r.save(run / "eval")
        named.append((head.upper(), r))
    _print_and_report(named, out, f"l2ood demo: {args.dataset}, L2 vs CE")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from ..detectors import make_detector
    from ..screen import Screener, calibrate, screenable_detectors
    from ..train.artifact import update_meta

    if not 0 < args.tpr <= 1:
        raise ValueError(f"--tpr must be in (0, 1], got {args.tpr}")
    if args.detector not in screenable_detectors():
        raise ValueError(f"--detector must be one of {', '.join(screenable_detectors())}")
    scr = Screener.from_run(args.run, device=args.device, precision=args.precision)
    scr.detector = make_detector(args.detector)
    meta = scr.meta
    if args.calibration_data:
        cal_set = load_dataset(args.calibration_data, "test", root=args.data_root)
        split = {"source": args.calibration_data}
    else:
        from ..evaluation import recorded_split

        _, held_out = recorded_split(meta, args.data_root)
        if held_out is None:
            raise ValueError(f"{args.run} was trained without a held-out ID split (--holdout 0); pass "
                             "--calibration-data with ID images not used in training")
        cal_set = held_out
        split = {"source": f"{meta.get('dataset')} train holdout", **meta["data"]["holdout"]}
    scores = [scr.score(cal_set.images[i : i + args.batch_size]).scores
              for i in range(0, len(cal_set), args.batch_size)]
    cal = calibrate(np.concatenate(scores), args.detector, args.tpr, args.alpha, split)
    update_meta(args.run, calibration=cal.to_dict())
    print(f"calibrated {args.run} on {cal.n} held-out ID images: threshold {cal.threshold:.6g} "
          f"(accepts {100 * args.tpr:.1f} % of them); rule: {cal.rule()}")
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    import csv

    from ..screen import RECORD_FIELDS, Screener

    scr = Screener.from_run(args.run, threshold=args.threshold, device=args.device, precision=args.precision)
    if not scr.calibrated:
        raise ValueError(f"{args.run} is not calibrated: run `l2ood calibrate {args.run}` first "
                         "(or pass --threshold)")
    out = sys.stdout if args.output == "-" else open(args.output, "w", newline="")
    n_ok = n_out = n_err = 0
    try:
        writer = csv.DictWriter(out, fieldnames=RECORD_FIELDS) if args.format == "csv" else None
        if writer:
            writer.writeheader()
        for rec in scr.screen(args.paths, batch_size=args.batch_size, progress=not args.no_progress,
                              max_pixels=args.max_pixels):
            if rec["status"] == "ok":
                n_ok += 1
                n_out += rec["verdict"] == "out"
            else:
                n_err += 1
            if writer:
                writer.writerow(rec)
            else:
                out.write(json.dumps(rec) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    rule = (f"score < {args.threshold} → out" if args.threshold is not None
            else scr.calibration.rule())  # type: ignore[union-attr]
    print(f"screened {n_ok} images: {n_out} out-of-distribution, {n_ok - n_out} in-distribution; "
          f"{n_err} unreadable input(s); rule: {rule}", file=sys.stderr)
    return 1 if n_err else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analysis.report import analyze

    eps = [int(e) for e in args.epochs.split(",")] if args.epochs else None
    out = Path(args.out or f"runs/analysis-{time.strftime('%Y%m%d-%H%M%S')}")
    path = analyze(args.runs, out, eps)
    text = path.read_text()
    print(text[text.index("## Verdicts"):] if "## Verdicts" in text else text)
    print(f"wrote {path} (+ nc.png, auroc.png, norm_hist.png)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import RECIPES, BenchSpec, run_bench
    from ..evaluation import parse_detectors
    from ..models import ARCHITECTURES as ARCHS

    archs = args.archs.split(",") if args.archs else [RECIPES[args.recipe]["arch"]]
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise ValueError(f"unknown architecture(s) {', '.join(bad)}; known: {', '.join(ARCHS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in HEAD_MODES]
    if bad:
        raise ValueError(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(HEAD_MODES)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    over = {k: v for k, v in (("width", args.width), ("epochs", args.epochs), ("batch_size", args.batch_size),
                              ("lr", args.lr)) if v is not None}
    spec = BenchSpec(args.benchmark, args.recipe, archs, variants, seeds, parse_detectors(args.detectors),
                     Path(args.out or f"runs/bench-{args.benchmark}-{args.recipe}"), args.data_root, over,
                     args.device, args.precision, args.n_ood, args.n_id, args.compile, not args.no_progress)
    csv_path, md_path = run_bench(spec, log=_log)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l2ood`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "demo": cmd_demo, "calibrate": cmd_calibrate,
                "screen": cmd_screen, "analyze": cmd_analyze, "bench": cmd_bench}
    try:
        return handlers[args.command](args)
    except (DataError, ArtifactError, TrainingDiverged, ValueError, FileNotFoundError, OSError) as e:
        print(f"l2ood {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
