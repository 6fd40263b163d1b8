#!/bin/bash
# The GPU checks, in one call of about 10 minutes on one H100/H200 (the device tool runs it from the
# repository root; $OUT is the folder whose files come back). What it measures:
#   1. bench --nets: each default net's training step on the card (forward, backward, optimizer,
#      images/s, GFLOP/s, share of a matrix product's rate); one row a net, eager float32 (torch.compile
#      is measured on the CPU only: search/train.py, can_compile)
#   2. bench: our pipeline against the seed's on the card
#   3. a full 15-epoch reproduction of front3991-onecycle on seed 1, eager, float32 (its accuracy
#      against the CPU's 99.36 % on seed 1)
#   4. five minutes of studies/pareto.toml's search with 4 workers sharing the card (cut after six
#      minutes, in its confirmation): trials a minute and how busy the card is (nvidia-smi every 10 s)
# Usage: bash docs/gpu-check.sh   (SEARCH_DATA_DIR: the MNIST folder; OUT: where the logs go)
set -euo pipefail
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export SEARCH_DATA_DIR=${SEARCH_DATA_DIR:-../shared/data}
python=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$python -m search bench --nets --device cuda --steps 40 --rounds 5 --warmup 1 2>&1 | tee "$OUT/bench-nets.txt"
$python -m search bench --device cuda --rounds 5 2>&1 | tee "$OUT/bench.txt"
$python -m search reproduce studies/reference/front3991-onecycle.json --seeds 1 --device cuda \
    --out "$OUT/front3991-onecycle-cuda.json" 2>&1 | tail -n 5 | tee "$OUT/reproduce.txt"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 10 > "$OUT/utilization.csv" &
monitor=$!
timeout 360 $python -m search run studies/pareto.toml --study gpu-check --out "$OUT/study" --workers 4 --device cuda \
    --timeout 300 2>&1 | tail -n 20 | tee "$OUT/study.txt" || true
kill $monitor
