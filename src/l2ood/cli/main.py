"""The ``l2ood`` command line: ``train``, ``import``, ``evaluate``, ``demo``, ``bench``, ``leaderboard``, ``analyze``,
``calibrate``, ``screen``, ``serve``, ``export`` and ``cache``.

This module only parses arguments and calls library functions. Exit status (:data:`EXIT_STATUS`, also in
``l2ood --help``): 0 success; 1 (``screen`` only) some input could not be read; 2 an error a user can fix
(missing data, bad arguments, a run that fails validation, a full disk), one message on stderr, never a
traceback; 3 an internal error (a bug): one line on stderr naming a log file (``$L2OOD_LOG_DIR``, default
``$L2OOD_CACHE/logs``) that holds the traceback; 130 interrupted.

Options mean the same in every command: ``--out`` is a folder, ``--output``/``-o`` a file, ``--detectors`` a comma
list of detectors, ``--combine NAME,NAME`` one combination of detectors, a ``SPEC`` a data set (a registered name,
``npz:PATH``, ``imagefolder:DIR``, ``imglist:LIST@ROOT``, ``wds:SHARDS``).
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

from ..data import DATASETS, PARAMETRIC
from ..data.source import DATA_PATHS, STREAM_BUDGET_GIB, STREAM_MIN_SIDE
from ..data.source import ImageSource as Images
from ..data.transforms import FITS, PRESETS
from ..errors import ConfigError, L2oodError
from ..models import ARCHITECTURES, HEAD_MODES, ModelConfig, _known_arch
from ..models.config import DEFAULT_CHECKPOINT_STEPS
from ..runfolder import EVAL_DIR, META, WEIGHTS, check_target, refuse_output_files, refuse_run_file
from ..runtime import PRECISIONS
from ..train import SCHEDULES, TrainConfig
from ..train.distributed import dist_from_env

DEMO_OOD = "mnist,textures,noise"
EXIT_STATUS = ("exit status: 0 success; 1 (screen) some input could not be read; 2 an error you can fix (bad "
               "arguments, missing data, a run that fails validation, a full disk): one message, no traceback; "
               "3 an internal error (a bug): the message names a log file with the traceback; 130 interrupted")
# The demo's budget, measured (benchmarks/demo_budget.py, docs/PERFORMANCE.md "Demo budget"): the smallest one
# whose message (the L2 model's ‖z‖ beats the CE twin's vs MNIST beyond the seed spread) held with the tightest
# spread and the L2 model's accuracy closest to CE's. With the recipe's padding scaled to 28 px (4 px): at 5 epochs
# one seed of 3 reversed; at 4 epochs it held on 5 seeds but L2 trailed CE by 4.5 accuracy points (2 px: 1.8).
DEMO_EPOCHS, DEMO_SUBSET, DEMO_PAD = 5, 20000, 2


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


TRAIN_RECIPE = "cpu-small"  # `train` and `demo` without --recipe


def _trainable_recipes() -> list[str]:
    from ..bench.definitions import RECIPES

    return [k for k, v in RECIPES.items() if not v.get("pretrained")]


def _subset(v: str) -> int | None:
    return None if v == "all" else _positive_int(v)


def _pad(v: str) -> int | str:
    if v == "auto":
        return v
    return _nonneg_int(v)


def _add_train_args(p: argparse.ArgumentParser, recipe: str = TRAIN_RECIPE) -> None:
    from ..bench.definitions import RECIPES

    trainable = [k for k, v in DATASETS.items() if not v.generated and "train" in v.splits]
    p.add_argument("--dataset", default="fashion-mnist",
                   help=f"ID training data: {', '.join(trainable)} or {', '.join(PARAMETRIC)} (labelled)")
    p.add_argument("--recipe", default=recipe, choices=_trainable_recipes(), metavar="NAME",
                   help="named training recipe, the same as `l2ood bench --recipe` (every field below overrides "
                        "it): " + "; ".join(f"{k}: {v['arch']} w{v['width']}, {v['epochs']} ep, batch "
                                            f"{v['batch_size']}, lr {v['lr']}, pad {v['pad']}"
                                            for k, v in RECIPES.items() if not v.get("pretrained")))
    p.add_argument("--arch", default=None, type=_arch,
                   help=f"backbone (default: the recipe's): {', '.join(ARCHITECTURES)} (CIFAR-style; --width scales "
                        "them), or any timm:NAME / torchvision:NAME backbone (optional extras l2ood[timm] / "
                        "l2ood[torchvision]; these come at their own width)")
    p.add_argument("--width", type=_positive_int, default=None,
                   help="first-stage channels of l2ood's own architectures (64 = standard; default: the recipe's)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per step (default: the recipe's)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="peak learning rate, SGD with Nesterov momentum 0.9 (default: the recipe's)")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay (default: the recipe's)")
    p.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="learning-rate schedule (default: the recipe's)")
    p.add_argument("--pad", type=_pad, default="auto", metavar="PX|auto",
                   help="random-crop padding in pixels; auto: the recipe's padding (stated for 32 px images) scaled "
                        "to the image side, e.g. 4 px at 28-32 px, 28 px at 224 px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=_subset, default=None, metavar="N|all",
                   help="train on a seeded subset of N images (default: all)")
    p.add_argument("--test-data", default=None, metavar="SPEC",
                   help="ID test set for --track and `l2ood evaluate` (default: the data set's test split; "
                        "for npz packs, image lists and class-folder trees without test/, the holdout)")
    p.add_argument("--holdout", type=_nonneg_int, default=5000, metavar="N",
                   help="ID training images held out for calibration/validation (seed 0 split)")
    p.add_argument("--data-path", default="auto", choices=DATA_PATHS,
                   help="memory: decode every image once into RAM (crop+flip augmentation in torch); stream: read "
                        "and augment batch by batch in DataLoader workers (random resized crop + flip; image "
                        "folders, image lists, wds: tar shards); auto: stream for wds: shards, images of "
                        f"{STREAM_MIN_SIDE}+ px or data over {STREAM_BUDGET_GIB} GiB decoded, else memory")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="input side in pixels for image folders/lists/shards (without it: 224 streamed, 32 in "
                        "memory, with a warning)")
    p.add_argument("--workers", type=_nonneg_int, default=None,
                   help="streaming: DataLoader worker processes (default: the usable CPUs, at most 8; 0: none)")


# Help for options whose meaning is the same in every command (the parser fills them in where none is given).
_HELP = {
    "arch": "backbone architecture (CIFAR-style; --width scales it)",
    "epochs": "training epochs",
    "batch_size": "images per step (training) or per forward pass (scoring)",
    "lr": "peak learning rate (SGD, Nesterov momentum 0.9)",
    "weight_decay": "L2 weight decay",
    "schedule": "learning-rate schedule",
    "seed": "seed of initialization, shuffling, augmentation and the training subset",
    "head": "l2: logits = fc(z/||z||) (the method); ce: the plain twin; t2fnorm/logitnorm: peers",
    "ood": "comma-separated OoD data sets",
    "n_ood": "seeded subset size per OoD set (default: all)",
    "n_id": "seeded subset of the ID test set (default: all)",
    "benchmark": "benchmark definition (ID set, near- and far-OoD sets)",
    "recipe": "training recipe (architecture, width, epochs, batch, lr)",
    "seeds": "comma-separated seeds, one model per seed",
    "detectors": "comma-separated detectors or 'all'",
    "compile": "torch.compile the model",
    "runs": "run folders written by `l2ood train` or `l2ood import`",
    "run": "a run folder written by `l2ood train` or `l2ood import`",
    "format": "output format",
    "precision": "auto: bf16 autocast + channels_last where supported, else fp32",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows an option's default once: appended as ``(default: X)`` unless the
    help already says its default, and never for options without one (None, off switches, empty lists)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or "default" in text.lower() or action.default is argparse.SUPPRESS
                or action.default is None or action.default is False or action.default == []):
            return text
        return text + " (default: %(default)s)"


def _add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true",
                   help="load runs imported from code (`l2ood import --factory`): rebuilding their network runs "
                        "that code, so only for code you trust (also: L2OOD_TRUST_CODE=1)")


# What an option takes, for options that do not name it themselves (one convention across commands).
_METAVARS = {
    "dataset": "SPEC", "out": "DIR", "data_root": "DIR", "workers": "N", "checkpoint_every_steps": "N",
    "track_ood": "SPEC[,SPEC...]", "ood": "SPEC[,SPEC...]", "n_ood": "N", "n_id": "N", "n_val_ood": "N",
    "n_fit": "N", "batch_size": "N", "epochs": "N", "width": "N", "seed": "N", "lr": "LR", "weight_decay": "WD",
    "output": "FILE", "detectors": "NAME[,NAME...]", "seeds": "N[,N...]", "archs": "ARCH[,ARCH...]",
    "variants": "HEAD[,HEAD...]", "tpr": "FRACTION", "alpha": "ALPHA", "threshold": "SCORE", "calibration": "NAME",
    "name": "NAME", "device": "DEVICE", "host": "ADDRESS", "port": "PORT", "max_pixels": "N",
    "max_decode_s": "SECONDS", "max_request_mb": "MB", "max_batch_images": "N", "max_in_flight": "N",
    "body_timeout_s": "SECONDS", "max_batch": "N", "batch_window_ms": "MS", "verify_n": "N", "arch": "ARCH",
}


def _finish_help(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.help is None and action.dest in _HELP:
            action.help = _HELP[action.dest]
        if (action.metavar is None and action.option_strings and action.choices is None and action.nargs != 0
                and action.dest in _METAVARS):
            action.metavar = _METAVARS[action.dest]
    parser.formatter_class = _HelpFormatter


def _arch(v: str) -> str:
    try:
        return _known_arch(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``l2ood`` command."""
    ap = argparse.ArgumentParser(
        prog="l2ood",
        description="OoD screening with L2-normalized features (Haas et al., TMLR 2024). "
                    "Scores: higher = more in-distribution. `l2ood COMMAND --help` for each command.",
        epilog=EXIT_STATUS,
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train an L2 (or CE) classifier",
                       description="Train a classifier whose head sees z/||z|| (--head l2) or z (--head ce).")
    _add_train_args(t)
    t.add_argument("--head", default="l2", choices=HEAD_MODES)
    t.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<head>-w<width>-s<seed>)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--init-from", default=None, metavar="RUN",
                   help="fine-tune: start the backbone from this run's weights (a run folder or .safetensors of the "
                        "same --arch/--width); the head is new")
    t.add_argument("--pretrained", default=None, metavar="FILE",
                   help="fine-tune: initialize the backbone from a local weights file (safetensors, or a torch "
                        "checkpoint read with weights_only=True) of the --arch backbone, e.g. torchvision's "
                        "resnet18 weights; its classifier head is left out and a new one trained")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out: deletes only the files l2ood wrote there (never others)")
    t.add_argument("--checkpoint-every-steps", type=_nonneg_int, default=DEFAULT_CHECKPOINT_STEPS,
                   help="also checkpoint every N steps inside an epoch, so that a crash loses at most N steps "
                        "(0: at epoch ends only)")
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
                       description="AUROC, FPR@95TPR, AUPR-In/Out per OoD set and detector. FPR@95TPR in two "
                                   "conventions: fpr95 / FPR95 (ID+) = fraction of OoD accepted when 95 % of ID is "
                                   "kept (l2ood's); fpr95_ood_pos / FPR95 (OoD+) = fraction of ID flagged when "
                                   "95 % of OoD is flagged (OpenOOD v1.5's). The terminal table shows FPR95 "
                                   "(ID+); results.json and report.md both.")
    e.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) written by `l2ood train`")
    e.add_argument("--ood", default=DEMO_OOD, help=f"comma-separated OoD sets (default {DEMO_OOD}); "
                   f"known: {', '.join([*DATASETS, *PARAMETRIC])}")
    e.add_argument("--detectors", default="feature_norm,msp,maxlogit,energy", help="comma list or 'all'")
    e.add_argument("--combine", action="append", default=[], metavar="NAME,NAME[,...]",
                   help="add a combined column: the detectors' conformal p-values on the run's holdout merged by "
                        "--combine-rule, scored by ln of the combined p-value (repeatable; e.g. feature_norm,knn)")
    e.add_argument("--combine-rule", default="bonferroni", choices=("bonferroni", "cauchy"),
                   help="rule of the --combine columns (see `l2ood calibrate --help`)")
    e.add_argument("--val-ood", default=None, metavar="SPEC",
                   help="select hyper-parameters (knn k, ReAct/ASH/SCALE/DICE percentiles, ODIN, GEN, ...: each "
                        "detector's search space) by AUROC of the run's holdout vs this validation OoD set, as "
                        "OpenOOD v1.5 does; refused if it is, or shares images with, a test OoD set. Everything "
                        "tried is recorded in results.json (selection) and report.md")
    e.add_argument("--n-val-ood", type=_positive_int, default=None, help="seeded subset of the --val-ood set")
    e.add_argument("--n-ood", type=_positive_int, default=None, help="seeded subset size per OoD set")
    e.add_argument("--n-id", type=_positive_int, default=None, help="seeded subset of the ID test set")
    e.add_argument("--out", default=None, help="report folder (default: RUN/eval, or runs/compare-*)")
    e.add_argument("--batch-size", type=_positive_int, default=512, help="images per forward pass")
    _add_runtime(e)

    d = sub.add_parser("demo", help="train L2 + CE twins (default Fashion-MNIST), evaluate, report",
                       description="The main job: trains the L2 model and its CE twin on --dataset (default: "
                                   f"{DEMO_SUBSET} Fashion-MNIST images, {DEMO_EPOCHS} epochs of the "
                                   f"{TRAIN_RECIPE} recipe with {DEMO_PAD} px crop padding), evaluates "
                                   f"against {DEMO_OOD}, prints the table, its "
                                   "wall time and the CPU, and writes a report (docs/PERFORMANCE.md has measured "
                                   "times).")
    _add_train_args(d)
    d.set_defaults(epochs=DEMO_EPOCHS, train_subset=DEMO_SUBSET, pad=DEMO_PAD)
    for a in d._actions:  # the demo's own defaults, said once
        if a.dest == "epochs":
            a.help = f"training epochs (default: {DEMO_EPOCHS})"
        elif a.dest == "pad":
            a.help = (f"random-crop padding in pixels, or auto (the recipe's, scaled to the image side) (default: "
                      f"{DEMO_PAD}, measured for the demo: docs/PERFORMANCE.md, Demo budget)")
        elif a.dest == "train_subset":
            a.help = f"train on a seeded subset of N images, or all (default: {DEMO_SUBSET})"
    d.add_argument("--ood", default=DEMO_OOD)
    d.add_argument("--n-ood", type=_positive_int, default=None)
    d.add_argument("--n-id", type=_positive_int, default=None)
    d.add_argument("--out", default=None, help="output folder (default runs/demo-<time>)")
    _add_runtime(d)
    from ..bench.definitions import BENCHMARKS, RECIPES, VARIANTS, listed_benchmarks

    bn = sub.add_parser(
        "bench", help="benchmark matrix: architecture x training variant x seed -> every detector",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run (or resume) a benchmark matrix. For every architecture, training variant "
                    "(head) and seed, train one model (recipe hyper-parameters, overridable), then score "
                    "every detector on every OoD set of the benchmark with one cached forward pass per "
                    "data set. Finished cells are not recomputed. Writes OUT/results.csv and OUT/results.md "
                    "(OpenOOD layout: near/far AUROC and FPR@95, ID accuracy, mean +- std over seeds). FPR@95 in "
                    "both conventions, labelled: 'FPR95 (OoD+, OpenOOD)' = OpenOOD v1.5's (fraction of ID flagged "
                    "when 95 % of OoD is flagged; CSV fpr95_ood_pos), 'FPR95 (ID+)' = l2ood's (fraction of OoD "
                    "accepted when 95 % of ID is kept; CSV fpr95).\n\n"
                    "benchmarks: " + "; ".join(f"{k} (ID {v['id'].split('@')[0]}, near "
                                               f"{len(v['ood'].get('near', []))}, far {len(v['ood'].get('far', []))})"
                                               for k, v in BENCHMARKS.items() if k in listed_benchmarks()) + "\n"
                    "recipes: " + "; ".join(f"{k} ({v['arch']} w{v['width']}, {v['epochs']} ep)"
                                            for k, v in RECIPES.items()) + "\n\n"
                    "example (the paper's CIFAR-10 table on a GPU):\n"
                    "  l2ood bench --benchmark cifar10 --recipe paper-resnet18 --variants ce,l2,logitnorm,t2fnorm "
                    "--seeds 0,1,2 --data-root DATA --out runs/bench-c10")
    bn.add_argument("--benchmark", default="cifar10", choices=listed_benchmarks())
    bn.add_argument("--recipe", default="paper-resnet18", choices=list(RECIPES))
    bn.add_argument("--archs", default=None, help="comma list (default: the recipe's architecture)")
    bn.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma list of heads (default {','.join(VARIANTS)})")
    bn.add_argument("--seeds", default="0,1,2")
    bn.add_argument("--detectors", default="all")
    bn.add_argument("--width", type=_positive_int, default=None, help="override the recipe's width")
    bn.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epochs")
    bn.add_argument("--batch-size", type=_positive_int, default=None, help="override the recipe's batch size")
    bn.add_argument("--lr", type=_positive_float, default=None, help="override the recipe's peak learning rate")
    bn.add_argument("--pad", type=_nonneg_int, default=None, metavar="PX",
                    help="override the recipe's random-crop padding (pixels)")
    bn.add_argument("--n-ood", type=_positive_int, default=None, help="seeded subset size per OoD set")
    bn.add_argument("--n-id", type=_positive_int, default=None, help="seeded subset of the ID test set")
    bn.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                    help="override the benchmark's input size (e.g. a quick imagenet200 run at 64 px)")
    bn.add_argument("--pretrained", default=None, metavar="FILE|RUN",
                    help="weights file: fine-tune every cell's backbone from it; with a pretrained-* recipe, the "
                         "classifier (head included) evaluated without training: a weights file, or a run folder "
                         "written by `l2ood import`")
    bn.add_argument("--n-fit", type=_positive_int, default=None,
                    help="pretrained-* recipes: seeded subset of training images for fitted detectors")
    bn.add_argument("--workers", type=_nonneg_int, default=None, help="streamed benchmarks: DataLoader workers")
    bn.add_argument("--combine", action="append", default=[], metavar="NAME,NAME[,...]",
                    help="add a combined column (conformal p-values merged by Bonferroni-min), cross-fitted on two "
                         "halves of the ID test images (repeatable; e.g. feature_norm,knn)")
    bn.add_argument("--compile", action="store_true")
    bn.add_argument("--out", default=None, help="output folder (default runs/bench-<benchmark>-<recipe>)")
    _add_runtime(bn)
    from ..report.leaderboard import FPR_CHOICES

    lb = sub.add_parser(
        "leaderboard", help="method x benchmark table over seeds, from bench, evaluate and demo results",
        description="Read results files (schema l2ood.results/1) and print one table: a row per method (head, e.g. "
                    "ce/l2/logitnorm, x detector column; x architecture when there are several), per benchmark "
                    "near/far AUROC and FPR@95 as mean +- sample std over seeds (n shown), and a mean rank (methods "
                    "ranked by mean AUROC in each benchmark group, 1 = best; equal means share the average rank; a "
                    "method is ranked only where it has a value, '(k/K)' when in k of K groups). Results without "
                    "near/far groups (evaluate, demo) get one column per OoD set. Results of different settings "
                    "(e.g. epochs) or data in one cell are refused unless --allow-mixed. FPR@95 columns say their "
                    "convention: 'FPR95 (OoD+, OpenOOD)' = OpenOOD v1.5's (fraction of ID flagged when 95 % of OoD "
                    "is flagged; fpr95_ood_pos), 'FPR95 (ID+, l2ood)' = l2ood's (fraction of OoD accepted when 95 % "
                    "of ID is kept; fpr95).\n\n"
                    "example:\n  l2ood leaderboard runs/bench-c10 runs/bench-c100 --csv leaderboard.csv")
    lb.add_argument("paths", nargs="+", metavar="PATH",
                    help="a `l2ood bench --out` folder (its cells/*.json), a folder with results.json or "
                         "eval/results.json (evaluate --out, demo --out, a run folder), or a results file")
    lb.add_argument("--fpr", default="openood", choices=list(FPR_CHOICES),
                    help="FPR@95 columns of the markdown: OpenOOD's (OoD positive), l2ood's (ID positive) or both "
                         "(the CSV has both)")
    lb.add_argument("--md", default=None, metavar="FILE", help="also write the markdown table to FILE")
    lb.add_argument("--csv", default=None, metavar="FILE",
                    help="write one row per method x benchmark: every mean, std and n (fractions), seeds, rank")
    lb.add_argument("--sort", default="rank", metavar="rank|method|[BENCHMARK/]GROUP",
                    help="row order: mean rank, method name, or one group's mean AUROC (e.g. cifar10/near)")
    lb.add_argument("--detectors", default=None,
                    help="keep these columns only (a name keeps all its logit variants: energy = energy:trained, "
                         "energy:raw; a combination as the table names it, e.g. bonferroni(feature_norm,knn))")
    lb.add_argument("--allow-mixed", action="store_true",
                    help="pool results of different settings in one cell instead of refusing (marked in the table)")

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
                                   "conformal p-values, in RUN/model.json. Any detector can drive the screen: "
                                   "detectors that need ID training statistics (knn, mahalanobis, vim, ...) are "
                                   "fit once on the run's training split and saved as "
                                   "RUN/detectors/<name>.safetensors (recorded in model.json); odin and rankfeat "
                                   "run the model on every image. Several detectors (--detectors a,b, or --combine "
                                   "a,b) are combined into one conformal p-value by --combine-rule.")
    c.add_argument("run", metavar="RUN")
    c.add_argument("--tpr", type=float, default=0.95,
                   help="fraction of ID to accept (default 0.95); a combination without --alpha uses alpha = 1 - tpr")
    c.add_argument("--alpha", type=float, default=None,
                   help="conformal mode: reject when p-value <= alpha; ID rejection rate <= alpha in "
                        "expectation (assumes exchangeable ID data)")
    c.add_argument("--detectors", dest="detector", default="feature_norm", metavar="NAME[,NAME...]",
                   help="screening score: any detector of `l2ood evaluate --detectors` (name:raw for W*z+b logits "
                        "of a normalized head), or several comma-separated ones, e.g. feature_norm,knn: each gets a "
                        "conformal p-value on the held-out images and they are combined by --combine-rule "
                        "(always conformal)")
    c.add_argument("--detector", dest="detector", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    c.add_argument("--combine", action="append", default=[], metavar="NAME,NAME[,...]",
                   help="the same as --detectors NAME,NAME,... in the spelling of `l2ood evaluate --combine`: "
                        "combine these detectors' conformal p-values (a calibration stores one screen, so give it "
                        "once)")
    c.add_argument("--combine-rule", default="bonferroni", choices=("bonferroni", "cauchy"),
                   help="how a combination's p-values are merged: bonferroni = min(1, K * min p_k), ID rejection "
                        "<= alpha under any dependence between detectors; cauchy = Cauchy combination (Liu & Xie "
                        "2020), exact under independence, only asymptotically valid (small alpha) under dependence")
    c.add_argument("--refit", action="store_true",
                   help="fit detectors that need training statistics again instead of reusing RUN/detectors/")
    c.add_argument("--calibration-data", default=None, metavar="SPEC",
                   help="ID data to calibrate on instead of the run's holdout (e.g. npz:PATH; a registered name "
                        "gives its test split); must overlap neither the training nor the evaluation data")
    c.add_argument("--name", default="default",
                   help="store the calibration under this name (default 'default', which `screen` uses); "
                        "other stored calibrations are kept")
    c.add_argument("--batch-size", type=_positive_int, default=512)
    _add_runtime(c)

    s = sub.add_parser("screen", help="screen image files/folders/npz packs with a calibrated run",
                       description="Outputs one record per image: path, score, p-value, verdict (in/out), "
                                   "predicted class and confidence. The calibration decides the detector(s): fitted "
                                   "statistics are loaded once from the RUN/detectors/ files it was made with "
                                   "(digest checked; never refit here); for a combined calibration the score is "
                                   "ln of the unclipped combined p-value. Bad files get an error record; all "
                                   "others are still screened. Exit status: 0 = every input screened, "
                                   "1 = some input could not be read (the others are screened), 2 = an error you "
                                   "can fix (bad arguments, an uncalibrated run), 3 = an internal error (a bug; the "
                                   "message names the log file), 130 = interrupted.")
    s.add_argument("run", metavar="RUN")
    s.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive), npz packs")
    s.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    s.add_argument("--output", "-o", default="-", help="output file (default: standard output)")
    s.add_argument("--threshold", type=float, default=None, help="manual threshold (overrides calibration)")
    s.add_argument("--calibration", default="default", help="name of the stored calibration to use (default 'default')")
    s.add_argument("--html", default=None, metavar="PATH",
                   help="also write a self-contained review page: score histograms (calibration vs screened, "
                        "threshold) and thumbnails of the flagged inputs, most out-of-distribution first")
    s.add_argument("--html-thumbnails", type=_positive_int, default=200, metavar="N",
                   help="thumbnails on the review page (the N lowest-scoring flagged inputs; default 200)")
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                   help="refuse images with more pixels (decompression-bomb guard)")
    s.add_argument("--max-decode-s", type=_positive_float, default=10.0,
                   help="seconds one image may take to decode (decode budget: slower ones are error records)")
    _add_runtime(s, data=False)

    sv = sub.add_parser("serve", help="HTTP screening service (FastAPI + uvicorn) for a calibrated run",
                        description="Screens uploaded images with the run's calibration: POST /v1/screen (raw bytes "
                                    "or multipart 'file'), POST /v1/screen/batch (multipart 'files'), GET /v1/info, "
                                    "GET /review (review page), GET /health, GET /ready. With a token (env "
                                    "L2OOD_SERVE_TOKEN or --token-file) every /v1 and /review request needs "
                                    "'Authorization: Bearer TOKEN'; without one only loopback addresses are "
                                    "allowed. SIGTERM finishes requests in flight, then exits.")
    sv.add_argument("run", metavar="RUN")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    sv.add_argument("--token-file", default=None, metavar="PATH",
                    help="file holding the bearer token (default: $L2OOD_SERVE_TOKEN; none: loopback only)")
    sv.add_argument("--calibration", default="default", help="stored calibration to use (default 'default')")
    sv.add_argument("--max-request-mb", type=_positive_float, default=32.0, help="request size limit (default 32)")
    sv.add_argument("--max-pixels", type=_positive_int, default=40_000_000, help="pixels per image (default 40 M)")
    sv.add_argument("--max-batch-images", type=_positive_int, default=64, help="images per batch request (64)")
    sv.add_argument("--max-in-flight", type=_positive_int, default=256, help="concurrent requests (default 256)")
    sv.add_argument("--body-timeout-s", type=_positive_float, default=30.0,
                    help="seconds a request's whole body may take to arrive; slower ones get 408 (default 30)")
    sv.add_argument("--max-decode-s", type=_positive_float, default=10.0,
                    help="seconds one image may take to decode (decode budget; slower ones get 422; default 10)")
    sv.add_argument("--max-batch", type=_positive_int, default=64, help="images per forward pass (default 64)")
    sv.add_argument("--batch-window-ms", type=float, default=5.0,
                    help="how long a request waits for others to share its forward pass (default 5 ms)")
    sv.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, ...")
    sv.add_argument("--precision", default="auto", choices=PRECISIONS)

    ex = sub.add_parser("export", help="export a run and its calibrated screen as an ONNX model",
                        description="Writes an ONNX model with input 'images' (float32 N×C×H×W on [0, 1] in the "
                                    "model's format) and outputs 'logits', 'z', 'feature_norm', 'score' and, when the "
                                    "run has the calibration, 'p_value' and 'verdict' (the detector the calibration "
                                    "names; ODIN/RankFeat and Cauchy combinations cannot be exported); the "
                                    "preprocessing, class names, calibration and provenance are in its metadata. "
                                    "Verified with "
                                    "onnxruntime against PyTorch on --verify-n images of the run's ID test set "
                                    "before it is written (non-finite outputs never pass); the write is atomic, so "
                                    "a failed export leaves a previous file at the destination as it was.")
    ex.add_argument("run", metavar="RUN")
    ex.add_argument("--format", choices=("onnx",), default="onnx")
    ex.add_argument("--output", "-o", default=None, help="output file (default RUN/model.onnx)")
    ex.add_argument("--calibration", default="default", help="calibration to embed (default 'default')")
    ex.add_argument("--verify-n", type=_nonneg_int, default=512,
                    help="images of the run's ID test set to compare with PyTorch (0: skip; default 512)")
    ex.add_argument("--data-root", default=None, help="data root for the verification images")

    im = sub.add_parser(
        "import", help="make a run folder for a classifier l2ood did not train (then calibrate, screen, serve ...)",
        description="Writes RUN/model.safetensors and RUN/model.json for your own classifier, so that every "
                    "command works on it as on a trained run. Either a torchvision/timm/l2ood architecture by "
                    "name plus a weights file with its head (--arch), or any nn.Module built by your code "
                    "(--factory package.module:function, --kwargs JSON; loading such a run later needs --trust-code, "
                    "because it runs that code). Weights: safetensors, or a torch checkpoint read with "
                    "weights_only=True (no code is unpickled). The input is a named preset whose fields can be "
                    "overridden. --data names the ID training data (detectors such as knn or mahalanobis are fit "
                    "on it; --holdout N images of it are kept apart for `l2ood calibrate`).\n\n"
                    "example:\n  l2ood import --arch torchvision:resnet18 --weights resnet18.safetensors "
                    "--preprocessing imagenet --data imagefolder:train/ --holdout 1000 --out runs/rn18")
    what = im.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", metavar="NAME", help="torchvision:NAME, timm:NAME or an l2ood architecture")
    what.add_argument("--factory", metavar="MODULE:FUNCTION",
                      help="function returning your nn.Module, e.g. mypkg.nets:build (importable from here)")
    im.add_argument("--out", required=True, metavar="DIR", help="the run folder to write")
    im.add_argument("--width", type=_positive_int, default=64, help="--arch of l2ood's own architectures: width")
    im.add_argument("--weights", metavar="FILE", default=None,
                    help="weights file (.safetensors, or a torch checkpoint); with --factory, omit it to keep the "
                         "weights the factory builds")
    im.add_argument("--kwargs", default=None, metavar="JSON", help="the factory's keyword arguments, a JSON object")
    im.add_argument("--head", default=None, metavar="LAYER",
                    help="--factory: the name of the network's last linear layer (found when left out)")
    im.add_argument("--preprocessing", default="imagenet", metavar="PRESET",
                    help="named input config: " + "; ".join(f"{k}: {v.about}" for k, v in PRESETS.items()))
    im.add_argument("--image-size", default=None, metavar="N|HxW", help="input size (overrides the preset's)")
    im.add_argument("--channels", type=int, choices=(1, 3), default=3, help="input channels")
    im.add_argument("--fit", default=None, choices=FITS, help="how files reach the input size (overrides the preset)")
    im.add_argument("--mean", default=None, metavar="M[,M,M]", help="per-channel input mean on [0, 1]")
    im.add_argument("--std", default=None, metavar="S[,S,S]", help="per-channel input std on [0, 1]")
    im.add_argument("--class-names", default=None, metavar="FILE|A,B,...",
                    help="class names: a text file with one per line, or a comma-separated list")
    im.add_argument("--data", default=None, metavar="SPEC", help="ID training data (fits detectors; see `train`)")
    im.add_argument("--holdout", type=_nonneg_int, default=0, metavar="N",
                    help="images of --data kept apart for calibration")
    im.add_argument("--test-data", default=None, metavar="SPEC",
                    help="ID test data (default: --data's test split, else the holdout)")
    im.add_argument("--data-root", default=None, help="folder holding data sets")
    im.add_argument("--data-path", default="memory", choices=DATA_PATHS,
                    help="memory: decode --data once; stream: read it batch by batch from disk")
    im.add_argument("--overwrite", action="store_true", help="replace a run folder l2ood wrote at --out")
    for sp in (e, c, s, sv, ex, bn):
        _add_trust(sp)
    from .cache import add_cache_parser

    add_cache_parser(sub)
    _finish_help(ap)
    for sp in sub.choices.values():
        _finish_help(sp)
    return ap


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _external(arch: str) -> bool:
    return arch.startswith(("timm:", "torchvision:"))


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The training recipe ``args.recipe`` with the options given on the command line laid over it
    (``pad`` stays ``"auto"`` until the image size is known: :func:`_configs`)."""
    from ..bench.definitions import RECIPES

    rec = dict(RECIPES[args.recipe])
    for k in ("arch", "width", "epochs", "batch_size", "lr", "weight_decay", "schedule"):
        if getattr(args, k, None) is not None:
            rec[k] = getattr(args, k)
    if _external(rec["arch"]):
        if args.width is not None:
            raise ConfigError(f"--width scales l2ood's own architectures ({', '.join(ARCHITECTURES)}); "
                              f"{rec['arch']} comes at its own width: drop --width")
        rec["width"] = ModelConfig.width  # not used by timm/torchvision backbones
    rec["pad_given"] = args.pad
    return rec


def _run_name(args: argparse.Namespace, head: str) -> str:
    rec = _recipe(args)
    w = "" if _external(rec["arch"]) else f"-w{rec['width']}"
    return f"runs/{args.dataset.replace(':', '_').replace('/', '_')}-{head}{w}-s{args.seed}"


def _configs(args: argparse.Namespace, head: str, size: tuple[int, int]) -> tuple[ModelConfig, TrainConfig]:
    """Model and training configuration of ``args`` (recipe + overrides) for images of ``size``."""
    from ..bench.definitions import RECIPES
    from ..data.transforms import scaled_pad

    rec = _recipe(args)
    pad = scaled_pad(int(RECIPES[args.recipe]["pad"]), size) if rec["pad_given"] == "auto" else int(rec["pad_given"])
    mcfg = ModelConfig(arch=rec["arch"], width=int(rec["width"]), head=head)
    tcfg = TrainConfig(epochs=int(rec["epochs"]), batch_size=int(rec["batch_size"]), lr=float(rec["lr"]),
                       weight_decay=float(rec["weight_decay"]), schedule=str(rec["schedule"]), pad=pad,
                       seed=args.seed, device=args.device, precision=args.precision,
                       checkpoint_every_steps=getattr(args, "checkpoint_every_steps", DEFAULT_CHECKPOINT_STEPS),
                       sync_bn=getattr(args, "sync_bn", False), compile=getattr(args, "compile", False),
                       init_from=str(Path(args.init_from).absolute()) if getattr(args, "init_from", None) else None,
                       pretrained=str(Path(args.pretrained).absolute()) if getattr(args, "pretrained", None) else None,
                       workers=getattr(args, "workers", None), extra={"recipe": args.recipe})
    return mcfg, tcfg


PHOTO_PREFIXES = ("imagefolder:", "imglist:", "wds:")


def _training_data(args: argparse.Namespace) -> tuple[Images, Images | None]:
    from ..data.stream import StreamingSet
    from ..pipeline import training_data

    size = (args.image_size, args.image_size) if getattr(args, "image_size", None) else None
    train_set, hold = training_data(args.dataset, holdout=args.holdout, subset=args.train_subset,
                                    subset_seed=args.seed, root=args.data_root, size=size,
                                    data_path=getattr(args, "data_path", "memory"))
    photos = args.dataset.startswith(PHOTO_PREFIXES) or Path(args.dataset).is_dir()
    if photos and size is None:
        _, h, w = train_set.shape
        how = "streamed" if isinstance(train_set, StreamingSet) else "decoded into memory"
        extra = (f"; {_recipe(args)['arch']} is an ImageNet-style backbone, usually trained at 224 px"
                 if _external(_recipe(args)["arch"]) else "")
        _log(f"warning: {args.dataset}: images are {how} at {h}x{w} px because no --image-size was given{extra}; "
             "pass --image-size PX to choose the input size")
    return train_set, hold


def cmd_train(args: argparse.Namespace) -> int:
    from ..pipeline import train_run

    out = Path(args.out or _run_name(args, args.head))
    if dist_from_env().is_main:
        check_target(out, args.resume, args.overwrite)  # before any data is loaded
    train_set, hold = _training_data(args)
    mcfg, tcfg = _configs(args, args.head, train_set.shape[1:])
    t0 = time.perf_counter()
    run = train_run(train_set, mcfg, tcfg, out, test_data=args.test_data, holdout=hold, track=args.track,
                    track_ood=args.track_ood, data_root=args.data_root, resume=args.resume, overwrite=args.overwrite,
                    progress=not args.no_progress, log=_log)
    if run is not None:
        print(f"saved {out / WEIGHTS} and {out / META} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _print_and_report(named: list[tuple[str, Any]], out: Path, title: str) -> None:
    from ..report import format_table, write_report
    from ..results import ResultsFile, write_results

    print(format_table([(lbl, r.results) for lbl, r in named]))
    cmd = "l2ood " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = write_report(out, [(lbl, r.results, r.scores) for lbl, r in named], title=title, command=cmd)
    path = write_results(out / "results.json", ResultsFile.new({lbl: r.results for lbl, r in named}, command=cmd))
    print(f"\nwrote {path} and {report}")


REPORT_FILES = ["report.md", "results.json", "norm_hist.png", "roc.png", "roc_all.png"]  # _print_and_report's


def _spec_paths(specs: list[str | None]) -> list[str]:
    """The existing files and folders named by data specs (``npz:PATH``, ``imglist:LIST@ROOT``, ``DIR``, ...):
    inputs an output must never be written over."""
    out = []
    for spec in specs:
        if not spec:
            continue
        rest = spec.split(":", 1)[1] if ":" in spec and not Path(spec).exists() else spec
        out += [q for q in (rest, *rest.rsplit("@", 1)) if q and Path(q).expanduser().exists()]
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_run, parse_detectors

    detectors = parse_detectors(args.detectors)
    ood = [s.strip() for s in args.ood.split(",") if s.strip()]
    out = Path(args.out) if args.out else (Path(args.runs[0]) / EVAL_DIR if len(args.runs) == 1
                                           else Path(f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"))
    refuse_output_files(out, REPORT_FILES, _spec_paths([*ood, args.val_ood]))  # before hours of scoring
    named = []
    for run in args.runs:
        r = evaluate_run(run, ood, detectors, data_root=args.data_root, n_ood=args.n_ood, n_id=args.n_id,
                         device=args.device, precision=args.precision, progress=not args.no_progress,
                         batch_size=args.batch_size, combined=args.combine, combine_rule=args.combine_rule,
                         val_ood=args.val_ood, n_val_ood=args.n_val_ood)
        label = f"{Path(run).name} ({r.results.head.upper()})"
        try:
            r.save(Path(run) / EVAL_DIR)
        except OSError as e:  # e.g. a read-only run folder: the report still goes to --out
            _log(f"note: could not write {Path(run) / EVAL_DIR} ({e.strerror or e}); results go to --out only")
        named.append((label, r))
    if not dist_from_env().is_main:  # under torchrun: every rank evaluated its shards; rank 0 reports
        return 0
    _print_and_report(named, out, "l2ood evaluation")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..evaluation import DEFAULT_DETECTORS, load_ood_sets
    from ..pipeline import id_test_for, train_and_evaluate

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "l2" / META).exists() or (out / "ce" / META).exists():
        raise ConfigError(f"{out} already holds a demo; pass another --out")
    refuse_output_files(out, REPORT_FILES, _spec_paths([args.dataset, args.test_data, *args.ood.split(",")]))
    if "textures" in [s.strip() for s in args.ood.split(",")]:  # before any data is loaded or model trained
        from ..extras import require

        require("skimage.data", "demo", "the demo's textures OoD set (scikit-image's CC0 photos)")
    t0 = time.perf_counter()
    train_set, hold = _training_data(args)
    id_test, _ = id_test_for(train_set, args.test_data, hold, args.data_root)
    if args.n_id:
        id_test = id_test.subset(args.n_id, seed=0)
    c, h, w = train_set.shape
    ood_sets = load_ood_sets([s.strip() for s in args.ood.split(",") if s.strip()], root=args.data_root,
                             n=args.n_ood, seed=0, channels=c, size=(h, w))
    named = []
    for head in ("l2", "ce"):
        _log(f"== {head.upper()} model ==")
        mcfg, tcfg = _configs(args, head, (h, w))
        _, r = train_and_evaluate(train_set, mcfg, tcfg, out / head, ood_sets=ood_sets,
                                  detectors=list(DEFAULT_DETECTORS), id_test=id_test, test_data=args.test_data,
                                  holdout=hold, data_root=args.data_root, progress=not args.no_progress, log=_log)
        named.append((head.upper(), r))
    _print_and_report(named, out, f"l2ood demo: {args.dataset}, L2 vs CE")
    from ..provenance import cpu_name
    from ..runtime import resolve_runtime

    print(f"demo finished in {time.perf_counter() - t0:.0f} s on {cpu_name()} "
          f"[{resolve_runtime(args.device, args.precision).describe()}]; one seed ({args.seed}), {tcfg.epochs} epochs: "
          "expect other numbers on another CPU or seed (docs/RESULTS.md has 3 seeds)")
    print(f"trained runs: {out / 'l2'} (L2) and {out / 'ce'} (CE). Next: l2ood calibrate {out / 'l2'} && "
          f"l2ood screen {out / 'l2'} PHOTOS/ --html review.html")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..run import Run
    from ..screen import calibrate_run

    detector = args.detector
    if args.combine:
        if len(args.combine) > 1:
            raise ConfigError("a calibration stores one screen: give one --combine NAME,NAME[,...] (store others "
                              "under other --name values)")
        if args.detector != "feature_norm":
            raise ConfigError("give the detectors either with --detectors or with --combine, not both")
        if len([d for d in args.combine[0].split(",") if d.strip()]) < 2:
            raise ConfigError(f"--combine needs at least two comma-separated detectors, got {args.combine[0]!r}")
        detector = args.combine[0]
    run = Run.load(args.run, device=args.device, precision=args.precision, data_root=args.data_root)
    cal = calibrate_run(run, tpr=args.tpr, alpha=args.alpha, detector=detector,
                        calibration_data=args.calibration_data, name=args.name, data_root=args.data_root,
                        batch_size=args.batch_size, progress=not args.no_progress, combine=args.combine_rule,
                        refit=args.refit)
    fitted = "".join(f"; fitted statistics of {k}: {run.record.detectors[k].file}"
                     for k in cal.fitted if k in run.record.detectors)
    if cal.is_combined:
        print(f"calibrated {args.run} on {cal.n} held-out ID images: {len(cal.detectors)} detectors combined "
              f"({cal.combine}); rule: {cal.rule()}{fitted}; stored as '{args.name}'")
    else:
        print(f"calibrated {args.run} on {cal.n} held-out ID images: threshold {cal.threshold:.6g} "
              f"(accepts {100 * args.tpr:.1f} % of them); rule: {cal.rule()}{fitted}; stored as '{args.name}'")
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    from ..screen import Screener, screen_to_file

    scr = Screener.from_run(args.run, calibration=args.calibration, threshold=args.threshold, device=args.device,
                            precision=args.precision)
    if not scr.calibrated:
        raise ConfigError(f"{args.run} is not calibrated (no calibration '{args.calibration}'): run "
                          f"`l2ood calibrate {args.run}` first (or pass --threshold)")
    from ..screen.images import IMAGE_SUFFIXES, NPZ_SUFFIX

    reads = frozenset((*IMAGE_SUFFIXES, NPZ_SUFFIX))  # what the folder walk would pick up
    if args.output != "-":
        refuse_run_file(args.output, args.paths, folder_reads=reads)
    review = None
    if args.html:
        from ..report.review import ReviewCollector

        refuse_run_file(args.html, args.paths, folder_reads=reads)
        review = ReviewCollector(max_thumbs=args.html_thumbnails)
    out = sys.stdout if args.output == "-" else open(args.output, "w", newline="")
    try:
        counts = screen_to_file(scr, args.paths, out, args.format, batch_size=args.batch_size,
                                progress=not args.no_progress, max_pixels=args.max_pixels,
                                max_decode_s=args.max_decode_s, review=review)
    finally:
        if out is not sys.stdout:
            out.close()
    rule = (f"score < {args.threshold} → out" if args.threshold is not None
            else scr.calibration.rule())  # type: ignore[union-attr]
    print(f"screened {counts['ok']} images: {counts['out']} out-of-distribution, {counts['ok'] - counts['out']} "
          f"in-distribution; {counts['error']} unreadable input(s); rule: {rule}", file=sys.stderr)
    if review is not None:
        cal = scr.calibration
        page = review.html(calibration_scores=cal.scores if cal else None,
                           threshold=args.threshold if args.threshold is not None else (cal.threshold if cal else None),
                           rule=rule, title="l2ood screen review", subtitle=f"run {args.run}")
        Path(args.html).write_text(page, encoding="utf-8")
        print(f"wrote the review page {args.html}", file=sys.stderr)
    return 1 if counts["error"] else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from ..deploy.service import ServeConfig, serve

    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--token-file {args.token_file}: {e.strerror or e}") from None
    else:
        token = os.environ.get("L2OOD_SERVE_TOKEN") or None
    cfg = ServeConfig(token=token, max_request_bytes=int(args.max_request_mb * 1024 * 1024), max_pixels=args.max_pixels,
                      max_batch_images=args.max_batch_images, max_in_flight=args.max_in_flight,
                      max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                      body_timeout_s=args.body_timeout_s, max_decode_s=args.max_decode_s)
    serve(args.run, host=args.host, port=args.port, config=cfg, device=args.device, precision=args.precision,
          calibration=args.calibration)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..deploy.export import export_verified
    from ..run import Run

    run = Run.load(args.run, device="cpu", precision="fp32", data_root=args.data_root)
    out = Path(args.output) if args.output else run.path / "model.onnx"  # type: ignore[operator]
    refuse_run_file(out)
    imgs, where = None, ""
    if args.verify_n:  # verified before it is written: a failed verification leaves nothing (or the old file) at out
        import torch

        test, where = run.id_test()
        batches = list(run.image_batches(test.subset(args.verify_n, seed=0)))
        imgs = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.uint8)
    path, v = export_verified(run, out, calibration=args.calibration, images=imgs)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if v is not None:
        print(f"verified on {int(v['n'])} images of {where}: max |score diff| {v['max_abs_score_diff']:.3g} "
              f"(relative {v['max_rel_score_diff']:.3g}), max |logit diff| {v['max_abs_logit_diff']:.3g}, same class "
              f"{100 * v['same_class']:.2f} %" + (f", same verdict {100 * v['same_verdict']:.2f} %"
                                                  if "same_verdict" in v else ""))
    return 0


def _floats(v: str | None, what: str) -> list[float] | None:
    if v is None:
        return None
    try:
        return [float(x) for x in v.split(",")]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {v!r}") from None


def _size(v: str | None) -> tuple[int, int] | None:
    if v is None:
        return None
    parts = v.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        h = w = 0
    if h < 1 or w < 1:
        raise ConfigError(f"--image-size: expected N or HxW (positive integers), got {v!r}")
    return h, w


def cmd_import(args: argparse.Namespace) -> int:
    from ..importing import import_classifier

    kwargs = None
    if args.kwargs is not None:
        try:
            kwargs = json.loads(args.kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--kwargs: not JSON ({e})") from None
        if not isinstance(kwargs, dict):
            raise ConfigError("--kwargs: expected a JSON object of keyword arguments")
        if args.arch:
            raise ConfigError("--kwargs goes with --factory (an architecture name takes none)")
    names = None
    if args.class_names:
        p = Path(args.class_names)
        names = ([ln.strip() for ln in p.read_text().splitlines() if ln.strip()] if p.is_file()
                 else [n.strip() for n in args.class_names.split(",")])
    t0 = time.perf_counter()
    run = import_classifier(args.out, weights=args.weights, arch=args.arch, factory=args.factory,
                            factory_kwargs=kwargs, head=args.head, preprocessing=args.preprocessing,
                            channels=args.channels, image_size=_size(args.image_size), fit=args.fit,
                            mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"), class_names=names,
                            data=args.data, holdout=args.holdout, test_data=args.test_data, data_root=args.data_root,
                            data_path=args.data_path, width=args.width, overwrite=args.overwrite, log=_log)
    print(f"wrote {Path(args.out) / WEIGHTS} and {Path(args.out) / META} ({time.perf_counter() - t0:.0f} s); "
          f"next: l2ood calibrate {args.out}" + (" --trust-code" if args.factory else ""))
    del run
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..extras import require

    require("matplotlib", "report", "l2ood analyze (its figures)")
    from ..analysis.report import analyze

    eps = [int(e) for e in args.epochs.split(",")] if args.epochs else None
    out = Path(args.out or f"runs/analysis-{time.strftime('%Y%m%d-%H%M%S')}")
    refuse_output_files(out, ["analysis.md", "analysis.json", "nc.png", "auroc.png", "norm_hist.png"])
    path = analyze(args.runs, out, eps)
    text = path.read_text()
    print(text[text.index("## Verdicts"):] if "## Verdicts" in text else text)
    print(f"wrote {path} (+ nc.png, auroc.png, norm_hist.png)")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ..report.leaderboard import leaderboard, split_columns
    from ..runfolder import atomic_write_bytes

    outs = [Path(f) for f in (args.md, args.csv) if f]
    if len(outs) == 2 and outs[0].resolve() == outs[1].resolve():
        raise ConfigError("--md and --csv name the same file")
    for out in outs:
        refuse_run_file(out, args.paths, folder_reads=frozenset({".json"}))
    board = leaderboard(args.paths, detectors=split_columns(args.detectors) if args.detectors is not None else None,
                        allow_mixed=args.allow_mixed, sort=args.sort)
    text = board.to_markdown(args.fpr)
    print(text, end="")
    for name, data in ((args.md, text), (args.csv, board.to_csv())):
        if name:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(name), data.encode())
            _log(f"wrote {name}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import RECIPES, BenchSpec, run_bench
    from ..evaluation import parse_detectors

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    over = {k: v for k, v in (("width", args.width), ("epochs", args.epochs), ("batch_size", args.batch_size),
                              ("lr", args.lr), ("pad", args.pad), ("size", args.image_size))
            if v is not None}
    spec = BenchSpec(args.benchmark, args.recipe,
                     args.archs.split(",") if args.archs else [RECIPES[args.recipe]["arch"]],
                     [v.strip() for v in args.variants.split(",") if v.strip()], seeds,
                     parse_detectors(args.detectors), Path(args.out or f"runs/bench-{args.benchmark}-{args.recipe}"),
                     args.data_root, over, args.device, args.precision, args.n_ood, args.n_id, args.compile,
                     not args.no_progress,
                     str(Path(args.pretrained).absolute()) if args.pretrained else None, args.n_fit, args.workers,
                     list(args.combine))
    refuse_output_files(spec.out, ["results.csv", "results.md"])
    csv_path, md_path = run_bench(spec, log=_log)
    if not dist_from_env().is_main:  # under torchrun: rank 0 prints
        return 0
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 0


EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def _crash_log(command: str, exc: BaseException) -> Path | None:
    """Write the traceback of an internal error to a log file; returns its path (None if unwritable)."""
    import os
    import traceback

    from ..data.lookup import cache_dir

    folder = Path(os.environ.get("L2OOD_LOG_DIR") or cache_dir() / "logs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        from ..provenance import code_version

        path.write_text(f"l2ood {command}: internal error\nargv: {sys.argv!r}\ncode: {json.dumps(code_version())}\n\n"
                        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def _cmd_cache(args: argparse.Namespace) -> int:
    from .cache import cmd_cache

    return cmd_cache(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l2ood`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "demo": cmd_demo, "calibrate": cmd_calibrate,
                "screen": cmd_screen, "analyze": cmd_analyze, "bench": cmd_bench, "serve": cmd_serve,
                "export": cmd_export, "import": cmd_import, "cache": _cmd_cache,
                "leaderboard": cmd_leaderboard}
    if getattr(args, "trust_code", False):
        import os

        from ..models.imported import TRUST_ENV

        os.environ[TRUST_ENV] = "1"  # every run this process loads (and its workers) may run its factory's code
    try:
        return handlers[args.command](args)
    except L2oodError as e:
        print(f"l2ood {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # the machine's or the user's files: disk full, permission denied, missing path
        print(f"l2ood {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in l2ood: keep the traceback, say where it is
        path = _crash_log(args.command, e)
        where = f"; the traceback is in {path}" if path else ""
        print(f"l2ood {args.command}: internal error (a bug in l2ood, please report it): {type(e).__name__}: {e}"
              f"{where}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
