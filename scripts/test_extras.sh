#!/usr/bin/env bash
# Tests of the optional extras (timm / torchvision backbones, torchvision references) in a second
# environment, .venv-extras: torchvision needs the registry's torch build (torch 2.14.1 + torchvision 0.29.1,
# which pip takes from this machine's disk on Python 3.11), not the CPU build in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-extras/bin/python ]; then
  "$PY" -m venv .venv-extras
fi
VPY=.venv-extras/bin/python
stamp=.venv-extras/.l2ood-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/test_extras.sh -nt "$stamp" ]; then
  "$VPY" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -m pip install -q -e ".[test,timm,torchvision]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -c "import torch, torchvision, timm, l2ood" || { echo "extras setup failed" >&2; exit 1; }
  touch "$stamp"
fi
exec "$VPY" -m pytest -q -p no:cacheprovider tests/test_backbones_extras.py tests/test_architectures.py "$@"
