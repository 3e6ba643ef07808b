#!/usr/bin/env bash
# One prepared device run for a session that is lent a CUDA GPU (see docs/gpu.md).
# Runs the tests marked `gpu` and the benchmarks (lockstep e2e included) on CUDA; every log lands in $OUT (or ./gpu_out).
# Budget: about 8 minutes on an H100, at most 590 s (the sum of the step limits, under the device tool's 600 s per command).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"; mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" >"$out/$name.log" 2>&1; echo "rc=$?"; tail -n 6 "$out/$name.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"
step gpu_tests 120 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/
step loss_step 60 "$py" benchmarks/loss_step.py --device cuda --steps 600 --rounds 6
# COCO sizes: 2 of the 25 epochs (16,418 of 205,225 steps; the full sweep is about 12.5x this run's time,
# see docs/gpu.md); the reference loop timed on 500 and 1,000 steps of each loss's epoch, scaled (--ref-steps)
step linear_sweep_coco 100 "$py" benchmarks/linear_sweep.py --coco --device cuda --epochs 2 --ref-steps 500
step linear_sweep_voc 60 "$py" benchmarks/linear_sweep.py --device cuda --ref-steps 500
step feature_extraction 90 "$py" benchmarks/feature_extraction.py --device cuda --cuda-images 1024
step e2e_throughput 90 "$py" benchmarks/e2e_throughput.py --device cuda --images 512
step e2e_lockstep 70 "$py" benchmarks/e2e_throughput.py --lockstep 8 --device cuda --images 96 --variants separate,fast
