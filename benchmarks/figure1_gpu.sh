#!/usr/bin/env bash
# Figure 1 on a GPU: the LeNet-5 runs' forward passes (batch 8192) and NVML energy per batch,
# and the epoch comparison's samples/s, in one script for a machine with CUDA.
#
#   bash benchmarks/figure1_gpu.sh [RUN_DIR...]      (default: the committed LeNet-5 BC runs'
#                                                     source directories, see below)
#
# Leaves RUN/bench-cuda.json beside the CPU run's RUN/bench.json (kept as it was) and prints
# the epoch ratios and samples/s.  Needs torch with CUDA; pynvml for energy
# (`pip install nvidia-ml-py`; without it bench.json says why there is no energy).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
  runs=(runs/i13b/lenet5-gnj runs/i13b/lenet5-ghs)
fi
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
for run in "${runs[@]}"; do
  [ -f "$run/bench.json" ] && cp "$run/bench.json" "$run/bench-cpu.json.keep"
  timeout 240 "$PY" -m pbc.cli bench "$run" --device cuda --batch 8192 --repeats 20
  mv "$run/bench.json" "$run/bench-cuda.json"
  [ -f "$run/bench-cpu.json.keep" ] && mv "$run/bench-cpu.json.keep" "$run/bench.json"
done
timeout 300 "$PY" benchmarks/epoch.py --device cuda --models lenet300 lenet5 --repeats 2
