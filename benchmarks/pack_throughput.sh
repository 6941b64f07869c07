#!/usr/bin/env bash
# Counted (non-padding) target tokens per second of tct-small on the workflow corpora, padded
# windows against packed rows (data.pack), at context 512 and 1024, without and with CUDA graphs,
# one after another on one GPU. Usage: benchmarks/pack_throughput.sh OUT_DIR [EXTRA_OVERRIDES...]
set -euo pipefail
out=${1:?usage: pack_throughput.sh OUT_DIR [KEY=VALUE ...]}
shift
mkdir -p "$out"
steps=${STEPS:-100}
warmup=${WARMUP:-20}
for ctx in 512 1024; do
  for graphs in false true; do
    for pack in false true; do
      name="ctx${ctx}-graphs-${graphs}-pack-${pack}"
      trainframe bench throughput configs/tct-small.yaml --data real --json --steps "$steps" --warmup "$warmup" \
        model.context="$ctx" trainer.cuda_graphs="$graphs" data.pack="$pack" "$@" > "$out/$name.json"
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], f\"{r['tokens_per_s']:,.0f} tok/s, {r['target_tokens_per_s']:,.0f} targets/s, {r['ms_per_step']:.2f} ms/step\")" "$out/$name.json" "$name"
    done
  done
done
