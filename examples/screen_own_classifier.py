"""A calibrated OoD screen in front of your own classifier: import it as a run, calibrate, screen files.

    python examples/screen_own_classifier.py                   # generated photos, a network trained here
    python examples/screen_own_classifier.py --small           # fewer training steps (what the tests run)
    python examples/screen_own_classifier.py --images PHOTOS/  # screen your own files with it

`PostHoc.save` writes a run folder for your network (its factory — a function that builds it — plus its weights and
input config, through `l2ood.importing.import_classifier`), `PostHoc.calibrate` picks the threshold on held-out
images of your ID data (as `l2ood calibrate` does), and the run then screens files in Python or with the command
line (`l2ood screen/serve/export RUN ... --trust-code`, with this folder on PYTHONPATH for the factory).

Extra: none, l2ood alone (``pip install l2ood``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _extras import need

need(None)

import torch  # noqa: E402
from _data import gratings, noise, write_folder  # noqa: E402
from PIL import Image  # noqa: E402
from posthoc_own_model import MyNet  # noqa: E402 — your model: features, then a linear classifier
from torch import nn  # noqa: E402

from l2ood.data import load_dataset  # noqa: E402
from l2ood.posthoc import PostHoc  # noqa: E402
from l2ood.screen import Screener  # noqa: E402


def build(classes: int = 3) -> nn.Module:
    """The factory the run folder records (``screen_own_classifier:build``): rebuilds the network to load weights."""
    return MyNet(classes)


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> nn.Module:
    """Your usual training loop (a few seconds here)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="a folder of images to screen (default: generated photos)")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary folder)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--small", action="store_true", help="fewer training steps (for the test suite)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="l2ood-own-"))
    folder = write_folder(out / "train_photos")  # your ID training data, as an image folder
    photos = Path(args.images) if args.images else out / "to_screen"
    if not args.images:
        photos.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(gratings(6, seed=7)[0]):
            Image.fromarray(img).save(photos / f"photo_{i}.png")
        for i, img in enumerate(noise(4)):
            Image.fromarray(img).save(photos / f"odd_{i}.png")
    data = load_dataset(f"imagefolder:{folder}", "train")
    net = train(MyNet(), data.images.float() / 255, data.labels, 100 if args.small else args.steps)

    # ---- the screen: your network, its input config and ID data -> a calibrated run folder -> verdicts
    ph = PostHoc(net, head="classifier", detectors=["mahalanobis"], preprocessing="unit", device="cpu")
    run = ph.save(out / "run", factory="screen_own_classifier:build", data=f"imagefolder:{folder}", holdout=60)
    cal = ph.calibrate(run, detector="mahalanobis", tpr=0.95)  # fitted on the run's data, held-out images
    print(f"calibrated: {cal.rule()}")
    for rec in Screener.from_run(run).screen([photos]):
        print(f"{Path(rec['path']).name:14s} {rec['verdict'] or rec['error']:4s} score {rec['score']:.4g}")
    # ----
    print(f"run folder: {run.path}; from the shell: PYTHONPATH={Path(__file__).parent} "
          f"l2ood screen {run.path} PHOTOS/ --trust-code")


if __name__ == "__main__":
    main()
