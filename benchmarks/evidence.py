"""Evidence for the paper's explanation on our own runs: train L2 and CE twins with tracking, analyze.

    python benchmarks/evidence.py --epochs 12 --seeds 0          # Fashion-MNIST, writes docs/EVIDENCE.md
    python benchmarks/evidence.py --data DATA --dataset imagefolder:DATA/cifar10-jpeg \
        --ood npz:DATA/tinyimagenet_test_resize.npz,npz:DATA/mnist_test.npz,npz:DATA/dtd_partial10.npz \
        --name cifar10 --epochs 8 --seeds 0 1 2

Runs ``l2ood train --track every=1`` for each head and seed (reusing finished runs), then
``l2ood analyze`` on all of them; the plots are copied to ``docs/evidence/<name>/`` and the verdicts
(whatever they say) are written into ``docs/EVIDENCE.md`` under a section for this configuration, with the
training configuration read from the runs' records.

``--data`` (default: the environment variable ``L2OOD_DATA``) is the data folder DATA/ laid out as in
docs/EVIDENCE.md ("Data layout"): in ``--dataset`` and ``--ood`` a path ``DATA/...`` stands for a file in it,
and the page shows paths in it as ``DATA/...``. Registered data sets (``fashion-mnist``, ``mnist``, ...) need
no ``--data``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from l2ood.analysis.report import analyze
from l2ood.cli import main as cli
from l2ood.run import Run

ROOT = Path(__file__).resolve().parents[1]


def _short(spec: str) -> str:
    """``npz:dir/mnist_test.npz`` → ``mnist_test``; registered names unchanged."""
    return Path(spec.split(":", 1)[1]).stem if ":" in spec else spec


def _expand(spec: str, data: str | None) -> str:
    """``npz:DATA/x.npz`` → ``npz:<data>/x.npz`` (each comma-separated spec)."""
    if not data:
        return spec
    root = data.rstrip("/")
    return ",".join(re.sub(r"^((?:[A-Za-z0-9_-]+:)?)DATA/", lambda m: f"{m.group(1)}{root}/", part)
                    for part in spec.split(","))


def _shown(text: str, data: str | None) -> str:
    """``text`` with the data folder written as ``DATA`` (as given and resolved), as the page shows it."""
    if not data:
        return text
    for d in sorted({data.rstrip("/"), str(Path(data).resolve())}, key=len, reverse=True):
        if len(d) > 1:  # not "/" or "."
            text = text.replace(d + "/", "DATA/")
    return text


def _wd(x: float) -> str:
    """``0.0005`` → ``5e-4``, ``0.1`` → ``0.1``."""
    if not 0 < x < 0.01:
        return f"{x:g}"
    mant, exp = f"{x:.6e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def training_config(run: Run, epochs: int, seeds: list[int], note: bool) -> str:
    """The line that states how every model of a section was trained, from the run's record."""
    rec = run.record
    t, m = rec.train, rec.model
    arch = "CIFAR ResNet18" if m.arch == "resnet18" else f"`{m.arch}`"
    recipe = f"recipe `{rec.recipe}`" if rec.recipe else "no named recipe"
    # hflip None: the data set's default, a flip for every data set but SVHN
    flip = "no flip" if t.hflip is False else "horizontal flip"
    return (f"Training configuration of every table in this section ({recipe}"
            + ("; see the note under Summary" if note else "") + f"): {arch} width {m.width}, batch {t.batch_size}, "
            f"SGD {'Nesterov ' if t.nesterov else ''}momentum {t.momentum:g}, lr {t.lr:g} {t.schedule}, "
            f"weight decay {_wd(t.weight_decay)}, random crop (pad {t.pad}) + {flip}, heads `l2` and `ce`, "
            f"{epochs} epochs, seeds {', '.join(map(str, seeds))}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--ood", default="mnist,textures,noise")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--track", default="every=1,n_train=5000,n_test=2000,n_ood=2000")
    ap.add_argument("--name", default="fmnist")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "evidence"))
    ap.add_argument("--data", default=os.environ.get("L2OOD_DATA") or None,
                    help="the data folder that DATA/ in --dataset / --ood stands for (default: $L2OOD_DATA)")
    args = ap.parse_args()
    if not args.data and re.search(r"(^|[:,])DATA/", f"{args.dataset},{args.ood}"):
        ap.error("--dataset / --ood name files under DATA/: pass --data DATA or set L2OOD_DATA (the layout is in "
                 "docs/EVIDENCE.md, 'Data layout')")
    dataset, ood = _expand(args.dataset, args.data), _expand(args.ood, args.data)
    runs = []
    for seed in args.seeds:
        for head in ("l2", "ce"):
            run = Path(args.runs) / args.name / f"seed{seed}" / head
            if not (run / "model.json").exists():
                rc = cli(["train", "--dataset", dataset, "--head", head, "--epochs", str(args.epochs),
                          "--width", str(args.width), "--seed", str(seed), "--out", str(run), "--resume",
                          "--track", args.track, "--track-ood", ood, "--no-progress"])
                if rc:
                    sys.exit(rc)
            runs.append(run)
    first = Run.load(runs[0])
    id_source = _shown(first.record.test_description, args.data)
    out = Path(args.runs) / args.name / "analysis"
    report = analyze(runs, out, [1, args.epochs // 2, args.epochs])
    dest = ROOT / "docs" / "evidence" / args.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("nc.png", "auroc.png", "norm_hist.png"):
        shutil.copy(out / f, dest / f)
    text = report.read_text()
    body = text[text.index("## Verdicts"):].replace("\n## ", "\n### ").replace("## Verdicts", "### Verdicts", 1)
    argv = sys.argv[1:]
    for i, a in enumerate(argv):  # the data folder as the page shows it
        if a == "--data" and i + 1 < len(argv):
            argv[i + 1] = "DATA"
        elif a.startswith("--data="):
            argv[i] = "--data=DATA"
    cmd = _shown("python benchmarks/evidence.py " + " ".join(argv), args.data)
    doc = ROOT / "docs" / "EVIDENCE.md"
    old = doc.read_text() if doc.exists() else ("# Evidence: why L2 normalization helps (on our runs)\n\n"
                                                 "Generated by `benchmarks/evidence.py` through `l2ood analyze`; "
                                                 "the verdicts are computed from the numbers, whatever they say.\n")
    section = "\n".join([
        f"## {args.name}: {_short(args.dataset)} (ID) vs {', '.join(_short(o) for o in args.ood.split(','))}", "",
        f"Command: `{cmd}` — ResNet18 width {args.width}, {args.epochs} epochs, seeds "
        f"{', '.join(map(str, args.seeds))}, tracking `{args.track}` (NC metrics on un-augmented training "
        f"images; ‖z‖ and AUROC on ID test images from {id_source} and on each OoD set).", "",
        training_config(first, args.epochs, args.seeds, "Training configuration of every row" in old), "",
        f"![NC metrics](evidence/{args.name}/nc.png)", "", f"![AUROC](evidence/{args.name}/auroc.png)", "",
        f"![norm histograms](evidence/{args.name}/norm_hist.png)", "", body, ""])
    marker = f"## {args.name}:"
    if marker in old:  # replace this configuration's section in place
        start = old.index(marker)
        nxt = old.find("\n## ", start + 1)
        new = old[:start] + section.rstrip() + "\n" + ("\n" + old[nxt + 1:] if nxt != -1 else "")
    else:
        new = old.rstrip() + "\n\n" + section
    doc.write_text(new)
    print(section)


if __name__ == "__main__":
    main()
