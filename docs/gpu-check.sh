#!/usr/bin/env bash
# The GPU checks, in one call on one H100/H200. Prepare here first (bash docs/gpu-prepare.sh: the
# wheels and data the card machine lacks, into .gpu/), then the device tool's run with carry
# [".gpu"], command "bash docs/gpu-check.sh", timeout_s 450: with a machine's start that leaves
# the 4 minutes a second call needs of the session's 15. Each step runs under its own time limit,
# all of them within TOTAL_S seconds, the most telling first, so that a slow step leaves the others
# their turn; a step at its limit gets Ctrl-C (its trials end FAIL, as a user's would). Printed,
# and written to $OUT/gpu-check.log with what the steps measured (6 files):
#   1. the card, Python, torch and Optuna;
#   2. bench --nets: each default net's training step on the card (forward, backward, optimizer,
#      images/s, GFLOP/s, share of a matrix product's rate), eager float32 and bfloat16 (torch.compile
#      is measured on the CPU only: search/training_net.py, can_compile);
#   3. studies/pareto.toml (the GPU study file) as a whole study, search then confirmation, under short
#      hard time budgets, with 4 and then 1 worker processes sharing the card: after each, the rungs,
#      image-epochs and confirmation runs it trained, how busy the card was (nvidia-smi every 5 s,
#      utilization-wN.csv) and its storage (journal.log, study.db);
#   4. bench: our pipeline against the seed's on the card;
#   5. a full 15-epoch reproduction of front3991-onecycle on seed 1, eager, float32 (its accuracy
#      against the CPU's 99.36 % on seed 1; front3991-onecycle.json).
# A dry run on this machine's CPU, with the project's virtual environment active:
#   DEVICE=cpu SEARCH_S=30 CONFIRM_S=30 bash docs/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
search_s=${SEARCH_S:-60}
confirm_s=${CONFIRM_S:-30}
total_s=${TOTAL_S:-420}
out=${OUT:-runs/gpu-check}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SEARCH_CACHE_DIR="$work/cache"
if ! "$python" -c "import optuna, optuna_dashboard" 2>/dev/null; then  # the card machine's image lacks them
    [ -d .gpu/wheels ] || { echo "error: no .gpu/wheels: run bash docs/gpu-prepare.sh here and carry .gpu" >&2; exit 2; }
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="$work/site"
fi
if [ -z "${SEARCH_DATA_DIR:-}" ]; then  # the card machine has no data: the files docs/gpu-prepare.sh packed
    [ -f .gpu/mnist.tar.gz ] || { echo "error: no .gpu/mnist.tar.gz: run bash docs/gpu-prepare.sh here and carry .gpu" >&2; exit 2; }
    tar -xzf .gpu/mnist.tar.gz -C "$work" || exit 1
    export SEARCH_DATA_DIR="$work"
fi

step() {  # step SECONDS COMMAND...: run it for at most SECONDS (less if the check's total runs short) and say how it ended
    local limit=$(( $1 < total_s - SECONDS ? $1 : total_s - SECONDS )); shift
    if [ "$limit" -lt 10 ]; then echo "== skipped, the check's $total_s s are spent: $*"; echo "$*" >> "$work/failed"; return; fi
    echo "== $* (limit $limit s)"
    timeout -s INT -k 15 "$limit" "$@"
    local code=$?
    echo "== exit code $code at $SECONDS s of the check"
    [ "$code" = 0 ] || echo "$*" >> "$work/failed"
}

trained() {  # trained STORAGE: what the study gpu-check trained there
    "$python" - "$1" <<'EOF'
import sys, optuna
from search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(sys.argv[1])
names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
if "gpu-check" not in names:
    sys.exit("no study (the step did not start it)")
study = optuna.load_study(study_name="gpu-check", storage=storage)
trials = study.get_trials(deepcopy=False)
rungs = [r for t in trials for r in t.user_attrs.get("rungs", [])]
epochs = study.user_attrs["spec"]["training"]["epochs"]
runs = optuna.load_study(study_name="gpu-check.confirm", storage=storage).get_trials(deepcopy=False) if "gpu-check.confirm" in names else []
print(f"{len(rungs)} rungs, {sum(r['images'] for r in rungs) * epochs:,} image-epochs in the search; "
      f"{sum(t.state.name == 'COMPLETE' for t in trials)} trials COMPLETE; {sum(t.state.name == 'COMPLETE' for t in runs)} confirmation runs")
EOF
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi: device $device"
    "$python" -c "import sys, torch, optuna; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'optuna', optuna.__version__)"
    step 60 "$python" -m search bench --nets --device "$device" --steps 20 --rounds 3 --warmup 1
    # the GPU study file with short hard time budgets for its search and its confirmation
    sed -E -e '/^timeout *=/d' -e "/^seed *=/a timeout = $search_s" -e "/^\[confirm\]/a timeout = $confirm_s" \
        studies/pareto.toml > "$work/pareto-check.toml"
    for workers in 4 1; do
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > "$out/utilization-w$workers.csv" 2>/dev/null &
        monitor=$!
        step $((search_s + confirm_s + 30)) "$python" -m search run "$work/pareto-check.toml" --study gpu-check \
            --out "$work/w$workers" --workers "$workers" --device "$device"
        kill "$monitor" 2>/dev/null
        if [ "$workers" = 1 ]; then storage="$work/w1/study.db"; url="sqlite:///$storage"; else storage="$work/w$workers/journal.log"; url=$storage; fi
        echo "workers $workers: $(trained "$url" 2>&1 | tail -n 1); card busy (nvidia-smi every 5 s): $(tr '\n' ' ' < "$out/utilization-w$workers.csv")"
        [ -f "$storage" ] && cp "$storage" "$out/"
    done
    step 50 "$python" -m search bench --device "$device" --rounds 5 --warmup 1
    step 90 "$python" -m search reproduce studies/reference/front3991-onecycle.json --seeds 1 --device "$device" \
        --out "$work/front3991-onecycle.json"
    [ -f "$work/front3991-onecycle.json" ] && cp "$work/front3991-onecycle.json" "$out/"
} 2>&1 | tee "$out/gpu-check.log"
status=$([ -f "$work/failed" ] && echo 1 || echo 0)  # 1: a step failed or ran out of its time (its line says which)
rm -rf "$work"
exit "$status"
