#!/usr/bin/env bash
# Issue 15 — the paper's CIFAR-10 / ResNet18 table on any machine with one CUDA GPU (runbook: docs/RESULTS-gpu.md).
#
#   once:     python benchmarks/gpu_pack.py pack --src DATA --no-wheels   # DATA/ -> gpu_data/ (≈ 56 MiB, ignored)
#   the run:  GIT_COMMIT=$(git rev-parse HEAD) RUNS=runs/gpu-paper/cells OUT=runs/gpu-paper/out \
#                 bash benchmarks/gpu_paper.sh
#   report:   python benchmarks/gpu_report.py --add runs/gpu-paper/out --tag run1
#
# Resumable: every cell checkpoints each epoch into its folder under RUNS; if the run stops early (BUDGET_S
# reached, killed, machine restarted), re-run the same command: unfinished cells resume from their last
# checkpoint, finished cells are kept, and the new bundle in OUT holds every cell.
#
# Steps: pydantic from gpu_data/wheels when the Python lacks it; unpack gpu_data/ into DATA_DIR, laid out as
# DATA/ (files checked by SHA-256; skipped when already unpacked); then benchmarks/gpu_paper.py trains CE, L2,
# LogitNorm and T2FNorm (seed 0) concurrently with the paper-resnet18 recipe, tracks ||z|| AUROC every 5 epochs
# and evaluates every detector. Raw results land in $OUT (paper_raw.json, results.csv, results.md, log.txt,
# nvidia-smi.txt).
#
# Environment (defaults in brackets): BUDGET_S [0 = no time limit; tiny 300] if > 0, the run stops itself this many
# seconds after this script started (cells still training stop at their last checkpoint; rerun to resume)
# VARIANTS [ce,l2,logitnorm,t2fnorm] SEEDS [0] REQUIRED [ce:0,l2:0] PARALLEL [4; tiny 2] DETECTORS [all]
# CORE [first-phase detectors] RUNS [/tmp/l2ood-gpu-runs; tiny /tmp/l2ood-gpu-tiny-runs; keep it on a disk that
# survives a restart] DATA_DIR [/tmp/l2ood-data] PACK [gpu_data] PYTHON [python3]
# TINY [unset; 1 = CPU smoke test: width 4, 1 epoch, a few hundred images]
set -u -o pipefail
T0=$(date +%s.%N)
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/gpu_paper_out}
PY=${PYTHON:-python3}
PACK=${PACK:-gpu_data}
DATA_DIR=${DATA_DIR:-/tmp/l2ood-data}
TINY=${TINY:-}
# run folders with per-epoch checkpoints (the same RUNS resumes unfinished cells)
if [ -n "$TINY" ]; then RUNS=${RUNS:-/tmp/l2ood-gpu-tiny-runs}; else RUNS=${RUNS:-/tmp/l2ood-gpu-runs}; fi
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export L2OOD_CACHE=${L2OOD_CACHE:-/tmp/l2ood-cache}
GPU_PAPER_COMMAND=""
for v in BUDGET_S VARIANTS SEEDS REQUIRED PARALLEL DETECTORS CORE TINY; do
  [ -n "${!v:-}" ] && GPU_PAPER_COMMAND+="$v=${!v} "
done
export GPU_PAPER_COMMAND="${GPU_PAPER_COMMAND}bash benchmarks/gpu_paper.sh"

HAS_PYDANTIC="import pydantic, sys; sys.exit(tuple(map(int, pydantic.VERSION.split('.')[:2])) < (2, 5))"
if ! $PY -c "$HAS_PYDANTIC" 2>/dev/null; then
  if ! PYTHONPATH=/tmp/site $PY -c "$HAS_PYDANTIC" 2>/dev/null; then  # not yet installed by an earlier run
    echo "pydantic >= 2.5 missing: installing $PACK/wheels/*.whl into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$PACK"/wheels/*.whl || { echo "wheel install failed"; exit 3; }
  fi
  export PYTHONPATH=/tmp/site:src
fi
T1=$(date +%s.%N)
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; } > "$OUT/nvidia-smi.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
$PY benchmarks/gpu_pack.py unpack "$PACK" "$DATA_DIR" || { echo "unpack failed"; exit 4; }
T2=$(date +%s.%N)
export GPU_PAPER_PHASES="{\"wheels_s\": $(awk "BEGIN{print $T1 - $T0}"), \"unpack_s\": $(awk "BEGIN{print $T2 - $T1}")}"

ARGS=(run --data-root "$DATA_DIR" --out "$OUT" --runs "$RUNS" --t0 "$T0"
      --variants "${VARIANTS:-ce,l2,logitnorm,t2fnorm}" --seeds "${SEEDS:-0}" --required "${REQUIRED:-ce:0,l2:0}"
      --detectors "${DETECTORS:-all}")
[ -n "${BUDGET_S:-}" ] && ARGS+=(--budget-s "$BUDGET_S")
[ -n "${PARALLEL:-}" ] && ARGS+=(--parallel "$PARALLEL")
[ -n "${CORE:-}" ] && ARGS+=(--core "$CORE")
[ -n "$TINY" ] && ARGS+=(--tiny)
$PY benchmarks/gpu_paper.py "${ARGS[@]}"
RC=$?
ls -la "$OUT"
exit $RC
