"""Usage: python benchmarks/vs_reference.py run|table OUT_DIR   (from the repository root, on a GPU)

REF_DIR names the folder holding the hand-written reference loop ref_gpt.py (default
../shared/bench); PERF_DATA the text file for the real-data run. SMOKE=1 runs a tiny shape on CPU.

One GPU, one process: the reference loop (ref_gpt.py) and `trainframe bench throughput`
(the same function, trainframe.bench.run_bench), with its defaults and with trainer.cuda_graphs=true,
at each shape, interleaved, then real vs random data at one shape. Writes OUT/results.jsonl (one
line per run, as soon as it ends) and OUT/table.md.
Real and random data are compared at 768d x 10L, batch 64, twice each and interleaved: that shape
is bound by the GPU, so run-to-run noise is well under the 2% to be resolved. At the launch-bound
384d batch-32 shape (~12 ms a step) the same run scattered by 10-25% between repeats. The data
shape runs first (a timeout then costs another shape, not that comparison)."""
import gc
import json
import os
import sys
import time

import torch

from trainframe.bench import run_bench
from trainframe.plugins import load_plugins

OUT = sys.argv[-1]
TABLE_ONLY = sys.argv[1] == "table"  # `perf.py table OUT`: the tables from OUT/results.jsonl (after a timeout too)
SMOKE = bool(os.environ.get("SMOKE"))
CUDA = torch.cuda.is_available()
DATA = os.environ.get("PERF_DATA", "../shared/data/text/tinyshakespeare.txt")
# name, vocab, d_model, layers, heads, context, batch
SHAPES = [
    ("384d x 8L, V 8192, ctx 512, b 128", 8192, 384, 8, 6, 512, 128),
    ("768d x 10L, V 8192, ctx 512, b 64", 8192, 768, 10, 12, 512, 64),
    ("768d x 12L, V 65536, ctx 1024, b 32", 65536, 768, 12, 12, 1024, 32),
    ("384d x 8L, V 8192, ctx 512, b 32", 8192, 384, 8, 6, 512, 32),
]
if SMOKE:
    SHAPES = [("smoke 64d x 2L, V 512, ctx 64, b 4", 512, 64, 2, 2, 64, 4)]
STEPS, WARMUP = (3, 1) if SMOKE else (60, 10)
DATA_SHAPE = SHAPES[0] if SMOKE else SHAPES[1]  # where real and random data are compared
DATA_REPEATS = 2
RUN_ORDER = [DATA_SHAPE, *[s for s in SHAPES if s != DATA_SHAPE]]
torch.backends.cuda.matmul.allow_tf32 = True
plugins = load_plugins()
results = []


def record(row):
    results.append(row)
    print(json.dumps(row), flush=True)
    with open(os.path.join(OUT, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def free():
    gc.collect()
    torch._dynamo.reset()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def ours(shape, data, repeat=0, cuda_graphs=False):
    name, V, d, L, h, T, B = shape
    overrides = [f"model.vocab_size={V}", f"model.d_model={d}", f"model.n_layer={L}", f"model.n_head={h}",
                 f"model.context={T}", f"trainer.batch_size={B}", f"data.path={DATA}"]
    if SMOKE:
        overrides.append("trainer.device=cpu")
    if cuda_graphs:
        overrides.append("trainer.cuda_graphs=true")
    t0 = time.time()
    r = run_bench("configs/bench-ref.yaml", overrides, STEPS, WARMUP, data, plugins)
    who = "trainframe+graphs" if cuda_graphs else "trainframe"
    record({"who": who, "shape": name, "data": data, "repeat": repeat, "wall_s": round(time.time() - t0, 1),
            "command": "trainframe bench throughput configs/bench-ref.yaml " + " ".join(overrides)
            + f" --steps {STEPS} --warmup {WARMUP} --data {data} --json", **r})
    free()


if TABLE_ONLY:
    path = os.path.join(OUT, "results.jsonl")
    with open(path) if os.path.exists(path) else open(os.devnull) as f:
        results = [json.loads(line) for line in f]
    SHAPES = [s for s in SHAPES if any(r["shape"] == s[0] for r in results)] or SHAPES
else:
    sys.path.insert(0, os.environ.get("REF_DIR", "../shared/bench"))
    import ref_gpt  # only to run: the tables need just results.jsonl

    print(torch.__version__, torch.cuda.get_device_name() if CUDA else "cpu", flush=True)
for shape in [] if TABLE_ONLY else RUN_ORDER:
    if CUDA:  # the reference loop is CUDA-only
        t0 = time.time()
        r = ref_gpt.run(*shape, steps=STEPS, compile_=True)
        record({"who": "reference", "shape": shape[0], "data": "random", "wall_s": round(time.time() - t0, 1),
                "tokens_per_s": r["tok_s"], "ms_per_step": r["ms_step"], "mfu": r["mfu_vs_989"],
                "peak_mem_gb": r["mem_GB"]})
        free()
    ours(shape, "random")
    if CUDA:  # CUDA graphs need CUDA
        ours(shape, "random", cuda_graphs=True)
    if shape == DATA_SHAPE:
        for repeat in range(DATA_REPEATS):
            if repeat:
                ours(shape, "random", repeat)
            ours(shape, "real", repeat)
if not TABLE_ONLY:
    sys.exit(0)

# ---- tables
def find(who, shape, data="random", repeat=0):
    return next((r for r in results if r["who"] == who and r["shape"] == shape and r["data"] == data
                 and r.get("repeat", 0) == repeat), None)


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def ratio(a, b):
    return a["tokens_per_s"] / b["tokens_per_s"] if a and b else None


lines = [("| shape | reference tok/s | trainframe tok/s | ratio | ref MFU | trainframe MFU | ref mem GB | trainframe mem GB "
          "| + CUDA graphs tok/s | ratio | MFU | mem GB (reserved) |"),
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for shape in SHAPES:
    ref, tf, cg = (find(who, shape[0]) for who in ("reference", "trainframe", "trainframe+graphs"))
    lines.append(f"| {shape[0]} | {fmt(ref and ref['tokens_per_s'], ',.0f')} | {fmt(tf and tf['tokens_per_s'], ',.0f')} "
                 f"| {fmt(ratio(tf, ref), '.3f')} | {fmt(ref and ref['mfu'], '.1%')} | {fmt(tf and tf['mfu'], '.1%')} "
                 f"| {fmt(ref and ref['peak_mem_gb'], '.1f')} | {fmt(tf and tf['peak_mem_gb'], '.1f')} "
                 f"| {fmt(cg and cg['tokens_per_s'], ',.0f')} | {fmt(ratio(cg, ref), '.3f')} | {fmt(cg and cg['mfu'], '.1%')} "
                 f"| {fmt(cg and cg['peak_mem_gb'], '.1f')} |")
lines += ["", f"| data ({DATA_SHAPE[0]}) | random tok/s | real tok/s (tinyshakespeare, textfile, bytes) | real / random |",
          "|---|---|---|---|"]
for repeat in range(DATA_REPEATS):
    rand, real = find("trainframe", DATA_SHAPE[0], "random", repeat), find("trainframe", DATA_SHAPE[0], "real", repeat)
    if rand and real:
        lines.append(f"| run {repeat + 1} | {rand['tokens_per_s']:,.0f} | {real['tokens_per_s']:,.0f} | "
                     f"{real['tokens_per_s'] / rand['tokens_per_s']:.3f} |")
table = "\n".join(lines)
with open(os.path.join(OUT, "table.md"), "w") as f:
    f.write(table + "\n")
print(table)
