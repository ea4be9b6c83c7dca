#!/usr/bin/env bash
# The core at its torch floor: pyproject says torch>=2.5, so CI installs torch 2.5.1 (the oldest release the
# floor admits that is still on the registry) in a third environment, .venv-floor, and runs the tests that
# exercise torch's API (models, training with autocast/GradScaler/checkpoints, detectors, evaluation, screening,
# import, distributed helpers). The ONNX export needs torch>=2.8 and says so in its extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FLOOR=${L2OOD_TORCH_FLOOR:-2.5.1}
if [ ! -x .venv-floor/bin/python ]; then
  "$PY" -m venv .venv-floor
fi
VPY=.venv-floor/bin/python
stamp=.venv-floor/.l2ood-setup-$FLOOR
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/test_floor.sh -nt "$stamp" ]; then
  "$VPY" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -m pip install -q "torch==$FLOOR" -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VPY" -c "import torch, l2ood; assert torch.__version__.startswith('$FLOOR'), torch.__version__" \
    || { echo "floor setup failed" >&2; exit 1; }
  touch "$stamp"
fi
"$VPY" -c "import torch; print('torch floor check on', torch.__version__)"
exec "$VPY" -m pytest -q -p no:cacheprovider \
  tests/test_model.py tests/test_heads.py tests/test_augment.py tests/test_train.py \
  tests/test_native_crash_guard.py tests/test_detectors_basic.py tests/test_detectors_gaussian.py \
  tests/test_detectors_knn_vim.py tests/test_detectors_more.py tests/test_metrics.py tests/test_columns.py \
  tests/test_combine.py tests/test_screen.py tests/test_fail_closed.py tests/test_import.py \
  tests/test_record.py tests/test_distributed.py tests/test_resume_kill.py "$@"
