#!/usr/bin/env bash
# The runs behind docs/results.md, on one GPU:
#   small       tct-small on both workflow corpora; 100 samples at three token budgets; held-out
#               loss, completion and eval-workflows on the validation repositories
#   fim         tct-small-fim (fill in the middle): held-out loss, completion and infill
#   medium      tct-medium-512
# usage: benchmarks/workflow_results.sh STAGE OUT [STEPS]   (run from the repository root)
# Everything a stage writes but the checkpoints is packed into OUT/STAGE.tar.gz. SMOKE=1 runs every command tiny, on
# the CPU, to check the script.
set -uo pipefail
stage=$1 out=$2
work=$(mktemp -d)/$stage
runs=$work/runs
mkdir -p "$runs" "$out"
if [[ ${SMOKE:-0} == 1 ]]; then
    tiny=(model.d_model=32 model.n_layer=1 model.n_head=2 model.context=64 trainer.max_steps=4 trainer.batch_size=4
          trainer.eval_every=2 trainer.eval_batches=2 trainer.device=cpu trainer.compile=false)
    n=4 batch=4 cuts=3 budgets=(24 48) free=48
else
    tiny=(trainer.cuda_graphs=true trainer.eval_every=1000)
    n=100 batch=50 cuts=64 budgets=(128 512 1024) free=1024
fi
# Packed after every step, so a stage cut short by a time limit still returns what it finished.
pack() { tar czf "$out/$stage.tar.gz" --exclude=runs -C "$(dirname "$work")" "$stage"; }
log() { pack; echo "== $(date +%T) $*" | tee -a "$work/steps.log"; }
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" > "$work/env.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$work/env.txt" 2>/dev/null

samples() {  # RUN NAME: constrained samples at each budget and unconstrained ones, then eval-workflows
    local run=$1 name=$2 dirs=()
    for mt in "${budgets[@]}"; do
        log "$name: $n constrained samples, --max-tokens $mt"
        trainframe generate "$run" --checkpoint best --n $n --batch-size $batch --max-tokens "$mt" --constrained \
            --out "$work/samples/$name-constrained-$mt" 2>&1 | tail -1 | tee -a "$work/steps.log"
        dirs+=("$work/samples/$name-constrained-$mt")
    done
    log "$name: $n unconstrained samples, --max-tokens $free"
    trainframe generate "$run" --checkpoint best --n $n --batch-size $batch --max-tokens $free \
        --out "$work/samples/$name-free-$free" 2>&1 | tail -1 | tee -a "$work/steps.log"
    dirs+=("$work/samples/$name-free-$free")
    trainframe eval-workflows "${dirs[@]}" > "$work/$name-eval-workflows.txt"
    trainframe eval-workflows "${dirs[@]}" --json > "$work/$name-eval-workflows.json"
}

held_out() {  # RUN NAME INFILLS: loss, completion (and infill) on the validation repositories
    log "$1: eval, eval-completion"
    trainframe eval "$1" --checkpoint best --json > "$work/$2-eval.json"
    trainframe eval-completion "$1" --cuts $cuts --infills "$3" --json > "$work/$2-eval-completion.json" \
        2> "$work/$2-eval-completion.log"
}

train() {  # CONFIG NAME OVERRIDES...
    local config=$1 name=$2; shift 2
    log "train $name"
    trainframe train "$config" --run-dir "$runs/$name" "${tiny[@]}" "$@" > "$work/$name-train.log" 2>&1
    tail -2 "$work/$name-train.log" | tee -a "$work/steps.log"
    trainframe plot "$runs/$name" --out "$work/$name-curve.png"
    cp "$runs/$name/metrics.jsonl" "$work/$name-metrics.jsonl"
    cp "$runs/$name/config.yaml" "$work/$name-config.yaml"
}

case $stage in
small)
    train configs/tct-small.yaml tct-small
    samples "$runs/tct-small" tct-small
    held_out "$runs/tct-small" tct-small 0
    ;;
fim)
    train configs/tct-small-fim.yaml tct-small-fim trainer.max_steps="${3:-10000}"
    held_out "$runs/tct-small-fim" tct-small-fim $cuts
    log "tct-small-fim: one infill and one completion, shown"
    example=$(mktemp --suffix=.yml)
    python3 - "$example" "$work/typed-example.yml" <<'PY'
import sys, yaml
sys.path.insert(0, "plugins")
doc = {"name": "CI", "on": {"push": {"branches": ["main"]}, "pull_request": None},
       "jobs": {"test": {"runs-on": "ubuntu-latest", "steps": [
           {"uses": "actions/checkout@v4"}, {"uses": "actions/setup-python@v5", "with": {"python-version": "3.12"}},
           {"run": "pip install -e .[test]"}, {"run": "pytest"}]}}}
text = yaml.safe_dump(doc, sort_keys=False)
open(sys.argv[1], "w").write(text)
open(sys.argv[2], "w").write(text[: text.index("setup-py") + len("setup-py")])  # typed up to mid-word
PY
    trainframe generate "$runs/tct-small-fim" --checkpoint best --infill "$example" --at 'jobs.test.steps[1]' \
        --n 3 --temperature 0.6 --max-tokens 128 > "$work/infill-example.txt" 2>&1
    trainframe generate "$runs/tct-small-fim" --checkpoint best --prefix-from "$work/typed-example.yml" \
        --n 2 --temperature 0.6 --max-tokens 512 > "$work/completion-example.txt" 2>&1
    ;;
medium)
    train configs/tct-medium-512.yaml tct-medium-512 trainer.max_steps="${3:-8000}" schedule.warmup_steps=500
    trainframe eval "$runs/tct-medium-512" --checkpoint best --json > "$work/tct-medium-512-eval.json"
    ;;
*) echo "unknown stage $stage (small, fim, medium)"; exit 2 ;;
esac
log done
pack
ls -la "$out"
