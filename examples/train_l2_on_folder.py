"""Train a classifier with the L2-normalized head on your own image folder, then calibrate its screen.

    python examples/train_l2_on_folder.py --data PHOTOS/ --out runs/mine          # ROOT/<class>/*.jpg
    python examples/train_l2_on_folder.py --small                                   # generated data, ~5 s

The run folder records the exact data spec, so `l2ood evaluate`, `l2ood calibrate` and `l2ood screen` work on
it afterwards. (Fine-tuning a pretrained timm/torchvision backbone is the next step of the roadmap.)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _data import write_folder

from l2ood.models import ModelConfig
from l2ood.pipeline import training_data
from l2ood.run import Run
from l2ood.screen import calibrate_run
from l2ood.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="image folder ROOT/<class>/*.png|jpg (default: generated with --small)")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--small", action="store_true", help="generated data, 3 epochs, width 8")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="l2ood-example-"))
    data = args.data or str(write_folder(tmp / "photos"))
    epochs, width = (3, 8) if args.small else (args.epochs, args.width)
    out = Path(args.out or tmp / "run")

    train_set, holdout = training_data(f"imagefolder:{data}", holdout=max(20, len_or(data) // 10), size=(32, 32))
    print(f"training on {len(train_set)} images of {train_set.num_classes} classes; {len(holdout or [])} held out")
    train(train_set, ModelConfig(width=width, head="l2"), TrainConfig(epochs=epochs, batch_size=64, pad=4), out,
          progress=False, log=print)
    cal = calibrate_run(out, tpr=0.95)
    run = Run.load(out)
    print(f"run: {out}; screen rule: {cal.rule()}")
    print(f"ID test set recorded: {run.record.test_description}")


def len_or(folder: str) -> int:
    return sum(1 for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))


if __name__ == "__main__":
    main()
