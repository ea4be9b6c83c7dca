#!/usr/bin/env bash
# Build the sdist and wheel, check them with twine, install the wheel into a fresh virtual environment
# and run smoke commands from it (outside the checkout). Run by CI (.ci/run) after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash scripts/setup.sh
.venv/bin/python -m pip install -q build twine 2>&1 | grep -v '^WARNING: Location' || true
rm -rf dist
.venv/bin/python -m build --sdist --wheel --outdir dist . >/dev/null
.venv/bin/twine check --strict dist/*
WORK=$(mktemp -d)
trap 'rm -rf "$WORK" "$ROOT/dist" "$ROOT/build"' EXIT
python3 -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"$V/python" -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
WHL=$(ls "$ROOT"/dist/*.whl)
"$V/python" -m pip install -q "$WHL" 2>&1 | grep -v '^WARNING: Location' || true
cd "$WORK"  # not the checkout: the installed wheel must work on its own
"$V/python" - <<'PY'
import importlib.metadata as md, pathlib, l2ood
assert "site-packages" in l2ood.__file__, l2ood.__file__
assert l2ood.__version__ == md.version("l2ood"), (l2ood.__version__, md.version("l2ood"))
import numpy as np
rng = np.random.default_rng(0)
labels = np.arange(120) % 3
imgs = np.clip(rng.normal(60 + 70 * labels[:, None, None], 20, (120, 16, 16)), 0, 255).astype(np.uint8)
np.savez("pack.npz", images=imgs, labels=labels)
from PIL import Image
Image.fromarray(imgs[0]).save("one.png")
print("wheel", l2ood.__version__, "imports from", pathlib.Path(l2ood.__file__).parent)
PY
"$V/l2ood" --help >/dev/null
"$V/l2ood" train --dataset npz:pack.npz --epochs 1 --width 2 --holdout 30 --out run --no-progress --precision fp32
"$V/l2ood" calibrate run --no-progress
"$V/l2ood" screen run one.png --no-progress >/dev/null
# the core wheel has no demo extra: the demo says what to install (exit 2, one line, no traceback)
set +e
"$V/l2ood" demo --dataset npz:pack.npz --ood textures --out demo0 2>err.txt; rc=$?
set -e
[ "$rc" = 2 ] && grep -q "pip install 'l2ood\[demo\]'" err.txt && ! grep -q Traceback err.txt \
  || { echo "demo without the demo extra: rc=$rc, $(cat err.txt)" >&2; exit 1; }
# with the extra, the demo runs from the wheel alone (a tiny budget on the generated pack)
"$V/python" -m pip install -q "$WHL[demo]" 2>&1 | grep -v '^WARNING: Location' || true
"$V/l2ood" demo --dataset npz:pack.npz --ood textures,noise --epochs 1 --width 2 --holdout 30 --out demo \
  --no-progress --precision fp32 | tail -3
test -s demo/report.md && test -s demo/norm_hist.png
echo "package check passed: sdist + wheel built, twine check ok, wheel installed and smoke-tested in $WORK"
