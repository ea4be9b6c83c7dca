"""Calibrate a trained run and screen a folder of images: a CSV of verdicts and a review page.

    python examples/calibrate_and_screen.py RUN PHOTOS/ --out screen_out/
    python examples/calibrate_and_screen.py --small          # trains a tiny run on generated data first, ~25 s

Extra: none, l2ood alone (``pip install l2ood``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _extras import need

need(None)

from _data import gratings, noise, write_folder  # noqa: E402
from PIL import Image  # noqa: E402

from l2ood.report.review import ReviewCollector  # noqa: E402
from l2ood.screen import Screener, calibrate_run, screen_to_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a run folder written by `l2ood train`")
    ap.add_argument("images", nargs="?", help="a folder of images to screen")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary folder)")
    ap.add_argument("--small", action="store_true", help="train a tiny run on generated data first")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="l2ood-screen-"))
    out.mkdir(parents=True, exist_ok=True)
    run, images = args.run, args.images
    if args.small or run is None:
        data = write_folder(out / "train_photos")
        run = str(out / "run")
        subprocess.run([sys.executable, "-m", "l2ood", "train", "--dataset", f"imagefolder:{data}", "--epochs", "8",
                        "--width", "8", "--holdout", "40", "--out", run, "--no-progress"], check=True)
        images = str(out / "to_screen")
        Path(images).mkdir(exist_ok=True)
        for i, img in enumerate(gratings(20, seed=7)[0]):
            Image.fromarray(img).save(Path(images) / f"photo_{i:02d}.png")
        for i, img in enumerate(noise(10)):
            Image.fromarray(img).save(Path(images) / f"odd_{i:02d}.png")
    cal = calibrate_run(run, tpr=0.95)  # on the run's recorded holdout: never training or test images
    print(f"calibrated: {cal.rule()}")
    screener = Screener.from_run(run)
    review = ReviewCollector()
    with open(out / "screen.csv", "w", newline="") as f:
        counts = screen_to_file(screener, [images], f, "csv", review=review)
    (out / "review.html").write_text(review.html(calibration_scores=cal.scores, threshold=cal.threshold,
                                                 rule=cal.rule(), title="example screen"))
    print(f"screened {counts['ok']} images: {counts['out']} flagged, {counts['error']} unreadable")
    print(f"wrote {out / 'screen.csv'} and {out / 'review.html'}")


if __name__ == "__main__":
    main()
