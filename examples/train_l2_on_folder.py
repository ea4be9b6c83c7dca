"""Fine-tune with the L2-normalized head on your own image folder, then calibrate its screen.

    python examples/train_l2_on_folder.py --data PHOTOS/ --init-from runs/pretrained --out runs/mine
    python examples/train_l2_on_folder.py --small        # generated data: pretrain, then fine-tune; ~15 s

    python examples/train_l2_on_folder.py --data PHOTOS/ --arch torchvision:resnet50 \
        --pretrained resnet50.safetensors --image-size 224 --out runs/mine     # streamed photos, any backbone

`--init-from` takes the backbone of an earlier l2ood run (same architecture and width), `--pretrained` a weights
file of a timm/torchvision backbone (`--arch timm:NAME` / `torchvision:NAME`); either way a new L2 head (and the
backbone) is trained on your classes; without them the model is trained from scratch. Images of 128 px and more
are streamed from disk (`l2ood.data.stream`), smaller ones decoded into memory. The run folder records the exact
data spec and the source weights' digest, so `l2ood evaluate`, `calibrate` and `screen` work on it afterwards.

Extra: none, l2ood alone (``pip install l2ood``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _extras import need

need(None)

from _data import write_folder  # noqa: E402

from l2ood.models import ModelConfig  # noqa: E402
from l2ood.pipeline import training_data  # noqa: E402
from l2ood.run import Run  # noqa: E402
from l2ood.screen import calibrate_run  # noqa: E402
from l2ood.train import TrainConfig, train  # noqa: E402


def n_images(folder: str) -> int:
    return sum(1 for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="image folder ROOT/<class>/*.png|jpg (default: generated with --small)")
    ap.add_argument("--init-from", default=None, help="an l2ood run (or .safetensors) to start the backbone from")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--arch", default="resnet18", help="resnet18 (l2ood's CIFAR-style) or timm:NAME / torchvision:NAME")
    ap.add_argument("--pretrained", default=None, help="weights file of the --arch backbone (safetensors or .pth)")
    ap.add_argument("--image-size", type=int, default=32, help="input side in pixels (>= 128: streamed)")
    ap.add_argument("--small", action="store_true", help="generated data; pretrain 4 epochs, fine-tune 2; width 8")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="l2ood-example-"))
    init_from, epochs, width = args.init_from, args.epochs, args.width
    data = args.data
    if args.small:
        width, epochs = 8, 2
        source = training_data(f"imagefolder:{write_folder(tmp / 'source', 80, classes=4, seed=1)}", holdout=0)[0]
        train(source, ModelConfig(width=width, head="l2"), TrainConfig(epochs=4, batch_size=64, pad=4), tmp / "pre",
              progress=False, log=None)
        init_from = str(tmp / "pre")
        data = str(write_folder(tmp / "photos", 40, classes=3))
    if data is None:
        ap.error("--data is required (or --small)")
    out = Path(args.out or tmp / "run")
    side = args.image_size
    train_set, holdout = training_data(f"imagefolder:{data}", holdout=max(20, n_images(data) // 10),
                                       size=(side, side), data_path="auto")
    print(f"training on {len(train_set)} images of {train_set.num_classes} classes; {len(holdout or [])} held out"
          + (f"; backbone from {init_from}" if init_from else ""))
    res = train(train_set, ModelConfig(arch=args.arch, width=width, head="l2"),
                TrainConfig(epochs=epochs, batch_size=32, pad=4, init_from=init_from, pretrained=args.pretrained),
                out, progress=False, log=None)
    print(f"final train accuracy {100 * res.history[-1]['train_acc']:.1f} %")
    cal = calibrate_run(out, tpr=0.95)
    run = Run.load(out)
    print(f"run: {out}; screen rule: {cal.rule()}")
    print(f"ID test set recorded: {run.record.test_description}; init: {run.record.train.init_from}")


if __name__ == "__main__":
    main()
