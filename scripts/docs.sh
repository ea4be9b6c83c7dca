#!/usr/bin/env bash
# Build the API reference site (mkdocs-material + mkdocstrings) with warnings as errors. Run by CI.
#   bash scripts/docs.sh [SITE_DIR]   (default: a temporary folder, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q -e ".[docs]" 2>&1 | grep -v '^WARNING: Location' || true
out=${1:-}
if [ -z "$out" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$out"
echo "API reference built without warnings ($(find "$out" -name '*.html' | wc -l) pages)"
