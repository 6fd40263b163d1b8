#!/usr/bin/env bash
# Here, before a lent GPU machine runs docs/gpu-check.sh: fill .gpu/ (git-ignored) with what
# that machine lacks. Its image holds torch, numpy, pandas, matplotlib, tqdm, filelock,
# safetensors and onnx, but not Optuna and what Optuna needs, and it reaches no package index
# and no data: so the wheels of those packages, at the versions installed here, built for its
# Python 3.12, and the MNIST files (from SEARCH_DATA_DIR, default ../shared/data). About 21 MB;
# the device tool carries at most 64 MiB with the working tree. Run it with the project's virtual
# environment active (PYTHON: another interpreter that has the project installed).
# docs/operations.md, "On a lent GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
data=${SEARCH_DATA_DIR:-../shared/data}
[ -d "$data/MNIST/raw" ] || { echo "error: no MNIST files in $data/MNIST/raw; set SEARCH_DATA_DIR" >&2; exit 2; }
mapfile -t pins < <("$python" -m pip freeze | grep -i -E '^(optuna|optuna-dashboard|optuna_dashboard|sqlalchemy|alembic|mako|colorlog|bottle|greenlet)==')
[ "${#pins[@]}" -eq 8 ] || { echo "error: $python does not have the project installed (found ${pins[*]:-none of its Optuna packages}): activate its virtual environment, or set PYTHON" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/wheels
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "${pins[@]}"
tar -czf .gpu/mnist.tar.gz -C "$data" MNIST
du -sh .gpu
echo "now: the device tool's run with carry [\".gpu\"], command \"bash docs/gpu-check.sh\", timeout_s 450"
