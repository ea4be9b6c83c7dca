#!/usr/bin/env bash
# Run the l2ood demo (does all set-up itself): trains the L2 model and its CE twin on Fashion-MNIST,
# evaluates against MNIST, textures and noise, prints the table and writes a report under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/l2ood demo "$@"
