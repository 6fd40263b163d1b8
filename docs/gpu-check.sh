#!/usr/bin/env bash
# The GPU checks, in one call of at most 10 minutes on one H100/H200. Prepare here first
# (bash docs/gpu-prepare.sh: the wheels and data the card machine lacks, into .gpu/), then the
# device tool's run with carry [".gpu"], command "bash docs/gpu-check.sh", timeout_s 600. Each
# step runs under its own time limit, all of them within TOTAL_S seconds, so that a slow step
# leaves the others their turn; everything is printed and written to $OUT/gpu-check.log.
#   1. the card, Python, torch and Optuna;
#   2. bench --nets: each default net's training step on the card (forward, backward, optimizer,
#      images/s, GFLOP/s, share of a matrix product's rate), eager float32 and bfloat16 (torch.compile
#      is measured on the CPU only: search/training_net.py, can_compile);
#   3. bench: our pipeline against the seed's on the card;
#   4. a full 15-epoch reproduction of front3991-onecycle on seed 1, eager, float32 (its accuracy
#      against the CPU's 99.36 % on seed 1);
#   5. studies/pareto.toml (the GPU study file) as a whole study, search then confirmation, under short
#      hard time budgets, with 1 and then 4 worker processes sharing the card: after each, the trials
#      and image-epochs it trained, and how busy the card was (nvidia-smi every 5 s).
# A dry run on this machine's CPU: DEVICE=cpu SEARCH_S=30 CONFIRM_S=30 bash docs/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
device=${DEVICE:-cuda}
search_s=${SEARCH_S:-90}
confirm_s=${CONFIRM_S:-45}
total_s=${TOTAL_S:-540}
out=${OUT:-runs/gpu-check}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SEARCH_CACHE_DIR="$work/cache"
if ! python3 -c "import optuna, optuna_dashboard" 2>/dev/null; then  # the card machine's image lacks them
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="$work/site"
fi
if [ -z "${SEARCH_DATA_DIR:-}" ]; then  # the card machine has no data: the files docs/gpu-prepare.sh packed
    tar -xzf .gpu/mnist.tar.gz -C "$work" || exit 1
    export SEARCH_DATA_DIR="$work"
fi

step() {  # step SECONDS COMMAND...: run it for at most SECONDS (less if the check's total runs short) and say how it ended
    local limit=$(( $1 < total_s - SECONDS ? $1 : total_s - SECONDS )); shift
    if [ "$limit" -lt 10 ]; then echo "== skipped, the check's $total_s s are spent: $*"; return; fi
    echo "== $* (limit $limit s)"
    timeout "$limit" "$@"
    echo "== exit code $? at $SECONDS s of the check"
}

trained() {  # trained STORAGE: what the study gpu-check trained there
    python3 - "$1" <<'EOF'
import sys, optuna
from search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(sys.argv[1])
study = optuna.load_study(study_name="gpu-check", storage=storage)
trials = study.get_trials(deepcopy=False)
rungs = [r for t in trials for r in t.user_attrs.get("rungs", [])]
epochs = study.user_attrs["spec"]["training"]["epochs"]
try:
    runs = optuna.load_study(study_name="gpu-check.confirm", storage=storage).get_trials(deepcopy=False)
except KeyError:  # no confirmation yet
    runs = []
print(f"{len(rungs)} rungs, {sum(r['images'] for r in rungs) * epochs:,} image-epochs in the search; "
      f"{sum(t.state.name == 'COMPLETE' for t in trials)} trials COMPLETE; {sum(t.state.name == 'COMPLETE' for t in runs)} confirmation runs")
EOF
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi: device $device"
    python3 -c "import sys, torch, optuna; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'optuna', optuna.__version__)"
    step 100 python3 -m search bench --nets --device "$device" --steps 20 --rounds 3 --warmup 1
    step 80 python3 -m search bench --device "$device" --rounds 5 --warmup 1
    step 120 python3 -m search reproduce studies/reference/front3991-onecycle.json --seeds 1 --device "$device" \
        --out "$work/front3991-onecycle.json"
    # the GPU study file with short hard time budgets for its search and its confirmation
    sed -E -e '/^timeout *=/d' -e "/^seed *=/a timeout = $search_s" -e "/^\[confirm\]/a timeout = $confirm_s" \
        studies/pareto.toml > "$work/pareto-check.toml"
    for workers in 1 4; do
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > "$out/utilization-w$workers.csv" 2>/dev/null &
        monitor=$!
        step $((search_s + confirm_s + 60)) python3 -m search run "$work/pareto-check.toml" --study gpu-check \
            --out "$work/w$workers" --workers "$workers" --device "$device"
        kill "$monitor" 2>/dev/null
        storage=$([ "$workers" = 1 ] && echo "sqlite:///$work/w$workers/study.db" || echo "$work/w$workers/journal.log")
        echo "workers $workers: $(trained "$storage"); card busy (nvidia-smi every 5 s): $(tr '\n' ' ' < "$out/utilization-w$workers.csv")"
    done
} 2>&1 | tee "$out/gpu-check.log"
rm -rf "$work"
