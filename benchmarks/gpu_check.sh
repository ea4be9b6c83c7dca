#!/usr/bin/env bash
# A short GPU check (one script, any CUDA machine): full-width ResNet18 on CIFAR-10-sized data
# (50 000 random 32×32×3 uint8 images resident on the GPU), bf16 autocast + channels_last:
# l2ood's trainer vs a bare loop (batch 512 and the paper's 128), torch.compile, scoring.
# Results land in $OUT/*.json; docs/PERFORMANCE.md is written from them on the CPU machine.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
timeout 150 python3 benchmarks/throughput.py --device cuda --width 64 --n 50000 --batch-size 512 --pairs 3 \
  --no-doc --json "$OUT/gpu_b512.json" 2>&1 | grep -v Warning | tail -8
timeout 150 python3 benchmarks/throughput.py --device cuda --width 64 --n 50000 --batch-size 128 --pairs 2 \
  --no-doc --json "$OUT/gpu_b128.json" 2>&1 | grep -v Warning | tail -8
timeout 200 python3 benchmarks/throughput.py --device cuda --width 64 --n 50000 --batch-size 512 --pairs 1 \
  --compile --no-doc --json "$OUT/gpu_b512_compile.json" 2>&1 | grep -v Warning | tail -8
ls -la "$OUT"
