#!/usr/bin/env bash
# Predictive training, round 2 (docs/results-predictive.md), on one GPU: plain training at budgets
# fit to 0.5x / 0.75x / 1x of 2,000 steps against outer Nesterov (plain and gated), stale-loss
# selective backprop and the round-1 controllers, on tct-small (both workflow corpora) and on the
# text config (Tiny Shakespeare, bytes, batch 16).
#
#   benchmarks/predictive_round2.sh smoke OUT        every new recipe for 100 steps (does it run here?)
#   benchmarks/predictive_round2.sh grid tct|text OUT SEEDS (2) seeds: plain at 0.5x/0.75x/1x budgets and at
#                                                     half and twice its lr; outer K x momentum x outer lr
#   benchmarks/predictive_round2.sh final tct|text OUT
#                                                     SEEDS (3) seeds: plain budgets, the grid's best outer
#                                                     setting (BEST='K MOMENTUM OUTER_LR'), its gated form
#                                                     and that form with the step size fixed at 1
#   benchmarks/predictive_round2.sh more tct|text OUT SEEDS (2) seeds: skip and plain at twice the lr, and on
#                                                     tct selective backprop and its random control
#   benchmarks/predictive_round2.sh retuned tct|text OUT
#                                                     SEEDS (2) seeds at the inner lr LR: plain budgets,
#                                                     plain at twice LR, BEST outer and gated; tct also
#                                                     selective and its random control
#   benchmarks/predictive_round2.sh skipcost tct|text OUT
#                                                     1 seed, one bench at a time: plain, skip, and skip that
#                                                     never predicts (its full-step path alone): the lean
#                                                     skip's own cost
# LR sets the inner lr (default: tct 4e-4, text 1e-3).
#
# A stage runs several benches side by side (JOBS, default 4) and merges them with
# `bench predictive --summarize`: FLOPs, and so the compute factor, do not depend on what else
# runs on the GPU; wall-clock does, so the final stage runs one bench at a time.
# Extra KEY=VALUE arguments go to every run; with seed=N a stage's seeds start at N, so seeds run in
# separate calls join up in `bench predictive --summarize DIR DIR ...`.
set -euo pipefail
stage=${1:?usage: predictive_round2.sh smoke|grid|final|more|retuned|skipcost [tct|text] OUT_DIR [KEY=VALUE ...]}
if [[ $stage == smoke ]]; then work=tct; else work=${2:?expected tct or text}; shift; fi
out=${2:?usage: predictive_round2.sh smoke|grid|final|more|retuned|skipcost [tct|text] OUT_DIR [KEY=VALUE ...]}
shift 2
steps=2000
[[ $stage == smoke ]] && steps=100
jobs=${JOBS:-4}
every=$((steps / 20))
case "$work" in
  tct) lr=${LR:-4.0e-4}; cfg=(configs/tct-small.yaml trainer.eval_batches=20) ;;
  # batch 16 (8.2M tokens in 2,000 steps, 8 epochs): at batch 64 the model overfits before 2,000 steps
  text) lr=${LR:-1.0e-3}; cfg=(configs/hybrid-shakespeare.yaml model.dropout=0.2 trainer.batch_size=16
                              trainer.eval_batches=16 trainer.cuda_graphs=auto 'phases={name: full}') ;;
  *) echo "unknown workload '$work': expected tct or text" >&2; exit 2 ;;
esac
cfg+=(trainer.max_steps=$steps schedule.warmup_steps=$((steps / 20)) optim.lr=$lr "$@")
mkdir -p "$out"

bench() {  # bench NAME ARGS... : one bench in the background (at most JOBS at once), logged to OUT/NAME.log
  local name=$1; shift
  while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
  echo "$(date +%T) start $name" >&2
  trainframe bench predictive "${cfg[@]}" "$@" --eval-every "$every" --out "$out/$name" > "$out/$name.log" 2>&1 &
}

outer() {  # outer K MOMENTUM OUTER_LR -> a --recipe argument
  echo "outer-k$1-m$2-lr$3 'phases={name: outer, every: $1, momentum: $2, outer_lr: $3}'"
}

case "$stage" in
  smoke)
    bench smoke --controllers full,selective,skip --seeds 1 --budgets 0.5 --recipe "$(outer 16 0.7 1.0)" \
      --recipe "outer-gated 'phases={name: outer-gated, every: 16}'" \
      --recipe "selective-random 'phases={name: selective, select: random}'"
    wait
    ;;
  grid)
    half=$(python3 -c "print($lr / 2)"); twice=$(python3 -c "print($lr * 2)")
    bench "$work-plain" --controllers full --seeds "${SEEDS:-2}" --budgets 0.5,0.75 \
      --recipe "full-lr$half optim.lr=$half" --recipe "full-lr$twice optim.lr=$twice"
    for k in 16 32 64; do
      recipes=()
      for m in 0.5 0.7 0.9; do for olr in 0.7 1.0; do recipes+=(--recipe "$(outer $k $m $olr)"); done; done
      # each bench's first recipe is its own baseline; the merge keeps the plain bench's runs of it
      bench "$work-k$k" --controllers full --seeds "${SEEDS:-2}" --budgets "" "${recipes[@]}"
    done
    wait
    trainframe bench predictive --summarize "$out/$work-plain" "$out"/$work-k* --out "$out/$work" > "$out/$work.md"
    ;;
  final)
    best=(${BEST:?set BEST=\'K MOMENTUM OUTER_LR\' from the grid})
    gated="outer-gated 'phases={name: outer-gated, every: ${best[0]}, momentum: ${best[1]}, outer_lr: ${best[2]}}'"
    # the gated form's control: the same verification and rollback, the step size fixed at 1
    verified="outer-verified 'phases={name: outer-gated, every: ${best[0]}, momentum: ${best[1]}, outer_lr: ${best[2]}, scales: [1.0]}'"
    jobs=1  # one bench at a time: these wall-clock figures are the headline
    bench "$work-final" --controllers full --seeds "${SEEDS:-3}" --budgets 0.5,0.75 \
      --recipe "$(outer "${best[@]}")" --recipe "$gated" --recipe "$verified"
    wait
    ;;
  more)
    twice=$(python3 -c "print($lr * 2)")
    controllers=full,skip
    more=(--recipe "full-lr$twice optim.lr=$twice")
    if [[ $work == tct ]]; then  # multi-epoch data: selective backprop and its control at equal FLOPs
      controllers=full,selective,skip
      more+=(--recipe "selective-random 'phases={name: selective, select: random}'")
    fi
    bench "$work-more" --controllers $controllers --seeds "${SEEDS:-2}" --budgets "" "${more[@]}"
    wait
    ;;
  retuned)  # everything at one inner lr (LR), in one bench: the plain lr there was the best one found
    best=(${BEST:?set BEST=\'K MOMENTUM OUTER_LR\' from the grid})
    twice=$(python3 -c "print($lr * 2)")
    recipes=(--recipe "$(outer "${best[@]}")"
             --recipe "outer-gated 'phases={name: outer-gated, every: ${best[0]}, momentum: ${best[1]}, outer_lr: ${best[2]}}'"
             --recipe "full-lr$twice optim.lr=$twice")
    controllers=full
    if [[ $work == tct ]]; then
      controllers=full,selective
      recipes+=(--recipe "selective-random 'phases={name: selective, select: random}'")
    fi
    jobs=1
    bench "$work-retuned" --controllers $controllers --seeds "${SEEDS:-2}" --budgets 0.5,0.75 "${recipes[@]}"
    wait
    ;;
  skipcost)
    jobs=1
    bench "$work-skipcost" --controllers full,skip --seeds "${SEEDS:-1}" --budgets "" \
      --recipe "skip-never-predicts 'phases={name: skip, warmup_steps: 1000000}'"
    wait
    ;;
  *) echo "unknown stage '$stage': expected smoke, grid, final, more, retuned or skipcost" >&2; exit 2 ;;
esac
