#!/usr/bin/env bash
# Time to quality of tct-small on the workflow corpora (docs/performance.md), on one GPU.
#   benchmarks/speed_to_quality.sh sweep OUT    one seed: Muon's lr, and WSD / batch fits, against
#                                               CUDA graphs + packing (stops each at the target)
#   benchmarks/speed_to_quality.sh target OUT   3 seeds: baseline, then each gain stacked on the last
#                                               (benchmarks/tct-small-target.yaml)
# Every run: 1000 steps of batch 32 (16M positions, ~2 epochs), cosine with 100 warm-up steps
# unless a recipe says otherwise. SEEDS=1 and extra KEY=VALUE arguments shorten it (a smoke test).
set -euo pipefail
stage=${1:?usage: speed_to_quality.sh sweep|target OUT_DIR [KEY=VALUE ...]}
out=${2:?usage: speed_to_quality.sh sweep|target OUT_DIR [KEY=VALUE ...]}
shift 2
common=(configs/tct-small.yaml trainer.max_steps=1000 schedule.warmup_steps=100 trainer.cuda_graphs=false "$@")
wsd="schedule={name: wsd, warmup_fraction: 0.1, decay_fraction: 0.25}"
case "$stage" in
  sweep)
    trainframe bench target "${common[@]}" --seeds 1 --stop-at-target --out "$out" \
      --recipe "graphs+pack trainer.cuda_graphs=true data.pack=true" \
      --recipe "muon-0.01 trainer.cuda_graphs=true data.pack=true 'optim={name: muon, lr: 0.01}'" \
      --recipe "muon-0.02 trainer.cuda_graphs=true data.pack=true 'optim={name: muon, lr: 0.02}'" \
      --recipe "muon-0.04 trainer.cuda_graphs=true data.pack=true 'optim={name: muon, lr: 0.04}'" \
      --recipe "wsd-lr2x trainer.cuda_graphs=true data.pack=true optim.lr=4e-4 '$wsd'" \
      --recipe "wsd-lr2x-batch16 trainer.cuda_graphs=true data.pack=true optim.lr=4e-4 '$wsd' trainer.batch_size=16 trainer.max_steps=2000"
    ;;
  target)
    trainframe bench target "${common[@]}" --recipes benchmarks/tct-small-target.yaml --seeds "${SEEDS:-3}" \
      --stop-at-target --out "$out"
    ;;
  *) echo "unknown stage '$stage': expected sweep or target" >&2; exit 2 ;;
esac
