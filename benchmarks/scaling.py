"""Usage: python benchmarks/scaling.py OUT_DIR [N ...] [-- KEY=VALUE ...]   (from the repository root)

Data-parallel scaling of `trainframe bench throughput` on one machine: the 100M shape (768d x 12L,
context 1024, vocab 8192, batch 32 per GPU) on one GPU, on the first and on the last GPU in turn
(GPUs of one machine differ by a few percent), then under torchrun on N GPUs for each N given
(default: 2 and every GPU of the machine). One run at a time, each in its own process. Writes
OUT/scaling.jsonl (a line per run, as soon as it ends) and OUT/scaling.md. Overrides after `--`
go to every run (e.g. trainer.ddp_bucket_mb=25). REF_DIR, if set, names a folder with the
reference DDP loop ref_ddp.py, which then runs the same way. configs/bench-ref.yaml builds its text
dataset even for random tokens: where its default file is missing, pass `-- data.path=FILE`.
SMOKE=1: a tiny shape on the CPU, with gloo, to check the script itself."""
import json
import os
import subprocess
import sys

import torch

SMOKE = bool(os.environ.get("SMOKE"))
SHAPE = ["model.vocab_size=8192", "model.d_model=768", "model.n_layer=12", "model.n_head=12",
         "model.context=1024", "trainer.batch_size=32"]
STEPS, WARMUP = 40, 10
if SMOKE:
    SHAPE = ["model.vocab_size=512", "model.d_model=64", "model.n_layer=2", "model.n_head=2",
             "model.context=64", "trainer.batch_size=4", "trainer.device=cpu"]
    STEPS, WARMUP = 3, 1


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    out, rest = argv[0], argv[1:]
    extra = rest[rest.index("--") + 1:] if "--" in rest else []
    counts = [int(n) for n in (rest[:rest.index("--")] if "--" in rest else rest)]
    gpus = 2 if SMOKE else torch.cuda.device_count()
    counts = counts or sorted({2, gpus})
    if not SMOKE and (gpus < 2 or max(counts) > gpus):
        print(f"scaling: this machine has {gpus} GPU(s); expected at least {max(counts, default=2)}", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    bench = ["-m", "trainframe", "bench", "throughput", "configs/bench-ref.yaml", *SHAPE, *extra,
             "--steps", str(STEPS), "--warmup", str(WARMUP), "--json"]
    rows = []

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(os.path.join(out, "scaling.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    def run(who, n, gpu, args, cwd="."):
        env = dict(os.environ)
        if n == 1 and not SMOKE:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        launch = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", str(n)]
        proc = subprocess.run([*launch, *args], cwd=cwd, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            log = os.path.join(out, f"{who}-{n}gpu{'' if gpu is None else f'-gpu{gpu}'}.err")
            with open(log, "w") as f:
                f.write(proc.stderr)
            record({"who": who, "gpus": n, "gpu": gpu, "error": f"exit status {proc.returncode}; stderr in {log}"})
            return
        r = json.loads(lines[-1])
        tokens_per_s = r.get("tokens_per_s") or r.get("tok_s_total")
        record({"who": who, "gpus": n, "gpu": gpu, "tokens_per_s": tokens_per_s,
                "ms_per_step": r.get("ms_per_step") or r.get("ms_step"), "mfu": r.get("mfu"),
                "peak_mem_gb": r.get("peak_mem_gb")})

    ref_dir = os.environ.get("REF_DIR")
    for who in ["trainframe", *(["reference"] if ref_dir and not SMOKE else [])]:
        args = bench if who == "trainframe" else ["ref_ddp.py"]
        cwd = "." if who == "trainframe" else ref_dir
        for gpu in [0] if SMOKE else sorted({0, gpus - 1}):  # SMOKE: the CPU has no second GPU to try
            run(who, 1, gpu, args, cwd)
        for n in counts:
            run(who, n, None, args, cwd)

    lines = ["| run | GPUs | tok/s | ms/step | MFU per GPU | scaling (over the mean 1-GPU run) |", "|---|---|---|---|---|---|"]
    for who in dict.fromkeys(r["who"] for r in rows):
        mine = [r for r in rows if r["who"] == who and "tokens_per_s" in r]
        single = [r["tokens_per_s"] for r in mine if r["gpus"] == 1]
        base = sum(single) / len(single) if single else None
        for r in mine:
            where = f"1 (GPU {r['gpu']})" if r["gpus"] == 1 else str(r["gpus"])
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
            scale = f"{r['tokens_per_s'] / base:.3f}x" if base and r["gpus"] > 1 else "-"
            lines.append(f"| {who} | {where} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.2f} | {mfu} | {scale} |")
    table = "\n".join(lines)
    with open(os.path.join(out, "scaling.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
