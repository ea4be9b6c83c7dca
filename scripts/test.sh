#!/usr/bin/env bash
# Run the l2ood test suite (does all set-up itself): ruff, mypy (src/), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks examples scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
