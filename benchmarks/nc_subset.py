"""Is the tracker's 5 000-image subset enough? NC metrics on the subset vs the whole training split.

    python benchmarks/nc_subset.py runs/evidence/cifar10/seed0/l2 runs/evidence/cifar10/seed0/ce

For each trained run: the NC metrics of its final model on the seeded subset that ``--track`` uses
(``n_train`` images, seed 123) and on all its training images (``n_train=all``), both streamed
through the model in batches (memory O(batch·D)). Writes ``docs/evidence/nc_subset.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from l2ood.analysis.collapse import nc_metrics
from l2ood.analysis.report import NC_KEYS
from l2ood.detectors import iter_batches
from l2ood.run import Run
from l2ood.runtime import resolve_runtime

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--out", default=str(ROOT / "docs" / "evidence" / "nc_subset.md"))
    args = ap.parse_args()
    rt = resolve_runtime("auto", "auto")
    lines = ["# NC metrics: tracker subset vs whole training split", "",
             f"`python benchmarks/nc_subset.py {' '.join(args.runs)}` — final models; subset = the {args.n_train} "
             "images (seed 123) that `--track` uses; all = every training image (the holdout excluded). "
             "Both streamed through the model (seconds: wall time on this machine, with other work running).", "",
             "| run | images | " + " | ".join(NC_KEYS) + " | seconds |", "|---|---|" + "---|" * (len(NC_KEYS) + 1)]
    for run in args.runs:
        r = Run.load(run)
        model = r.model
        train = r.train_split()
        w = model.fc.weight.detach().float().cpu()
        for label, ds in ((f"subset {args.n_train}", train.subset(args.n_train, seed=123)),
                          (f"all {len(train)}", train)):
            t0 = time.perf_counter()
            nc = nc_metrics(lambda ds=ds, m=model: iter_batches(m, ds, rt), w, train.num_classes)
            dt = time.perf_counter() - t0
            row = f"| {'/'.join(Path(run).parts[-3:])} | {label} | " + " | ".join(
                f"{nc[k]:.4g}" for k in NC_KEYS) + f" | {dt:.1f} |"
            print(row, flush=True)
            lines.append(row)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
