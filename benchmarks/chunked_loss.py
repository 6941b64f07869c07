"""Peak memory and step time of trainer.loss_chunk and trainer.activation_checkpointing.

    python benchmarks/chunked_loss.py --out chunked_loss.json            # one GPU: tritter-100m, tritter-500m
    python benchmarks/chunked_loss.py --tiny --out /tmp/tiny.json         # a tiny config on the CPU, in seconds

For each preset and batch size it runs four variants, the whole logits or ``trainer.loss_chunk``,
each without and with ``trainer.activation_checkpointing: blocks``, each in a process of its own
(so one variant's allocator and compile caches do not colour the next), through the real Trainer
as ``trainframe train`` builds it: bf16 autocast and torch.compile as the trainer defaults them on
CUDA, fused AdamW, random tokens (``trainframe bench throughput --data random``). ``--warmup``
steps run untimed (compile happens there), then ``--steps`` steps are timed between two device
syncs. Figures per variant:

- ms/step, tokens/s: the whole optimizer step (forward, backward, clip, AdamW);
- peak GB: CUDA ``max_memory_allocated`` over the timed steps (CPU: the process's peak RSS, VmHWM,
  reset at the first timed step); over start: that peak minus what was allocated when the timed
  steps began (weights, gradients' buffers, optimizer state), i.e. activations and the loss;
- loss 1: the first step's loss, the same weights and batch in every variant, so the four agree to
  bf16 rounding (a check that the options change no result);
- a variant that runs out of memory is a row with ``OOM``.

The table (markdown) goes to stdout, every row as JSON to ``--out`` (rewritten after each row).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trainframe

BATCHES = {"tritter-100m": [8, 16, 32], "tritter-500m": [2, 4, 8]}
TINY = {"preset": "tiny", "model": {"d_model": 64, "n_layer": 2, "n_head": 4, "context": 64, "vocab_size": 4096}}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="benchmarks/chunked_loss.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON file for the results (rewritten after each row)")
    p.add_argument("--presets", default="tritter-100m,tritter-500m",
                   help="comma-separated model presets (default tritter-100m,tritter-500m)")
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated micro-batch sizes for every preset (default: tritter-100m 8,16,32; "
                        "tritter-500m 2,4,8)")
    p.add_argument("--loss-chunk", type=int, default=None,
                   help="trainer.loss_chunk (tokens) of the chunked rows (default 4096; 32 with --tiny)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, compile included (default 3)")
    p.add_argument("--device", default="auto", help="trainer.device (default auto: CUDA when available)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile; auto = the trainer's default (on for CUDA)")
    p.add_argument("--checkpointing", choices=("both", "none", "blocks"), default="both",
                   help="trainer.activation_checkpointing of the rows: both (default), or only none / blocks")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every variant, e.g. --set model.dropout=0 (repeatable)")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny model (64d x 2L, vocab 4096, context 64) on the CPU, batch 2, chunks of 32 tokens, "
                        "1 + 2 steps: to check the script")
    p.add_argument("--same-process", action="store_true",
                   help="run every variant in this process instead of one process each: quicker (no start-up per "
                        "variant), but compile caches and the allocator carry over between variants")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one variant, in its own process
    args = p.parse_args(argv)
    if args.tiny:
        args.presets, args.device = "tiny", "cpu"
        args.loss_chunk = 32 if args.loss_chunk is None else args.loss_chunk
        args.batch_sizes = args.batch_sizes or "2"
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    args.loss_chunk = 4096 if args.loss_chunk is None else args.loss_chunk
    for name in ("steps", "loss_chunk"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup: expected an integer >= 0, got {args.warmup}")
    try:
        args.batch_list = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    except ValueError:
        p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    if args.batch_list is not None and min(args.batch_list) < 1:
        p.error(f"--batch-sizes: expected positive integers, got {args.batch_sizes!r}")
    args.preset_list = [s for s in args.presets.split(",") if s]
    return args


# ------------------------------------------------------------------------------ one variant (worker)

def rss(field: str) -> int:
    """A line of /proc/self/status in bytes (VmRSS: now, VmHWM: the peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Probe:
    """Clock and memory over the timed steps; the first step's loss."""

    def __init__(self, device, warmup: int, last: int):
        self.device, self.warmup, self.last = device, warmup, last
        self.start = self.end = self.first_loss = None
        self.base = self.peak = 0

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @trainframe.hookimpl
    def trainframe_step_start(self, step):
        if step != self.warmup + 1:  # the first timed step (hooks number steps from 1)
            return
        import torch

        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = rss("VmRSS")
            try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        self.start = time.perf_counter()

    @trainframe.hookimpl
    def trainframe_step_end(self, step, metrics):
        if step == 1:
            self.first_loss = float(metrics["loss"])
        if step == self.last:
            import torch

            self._sync()
            self.end = time.perf_counter()
            self.peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else rss("VmHWM")


def write_config(folder: Path, spec: dict) -> Path:
    """A run config for the variant, with a small generated text file for the dataset it must build
    (the steps themselves read random tokens)."""
    context = spec["context_hint"]
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 8))) for _ in range(500)]
    text = " ".join(rng.choice(words) for _ in range(max(2000, 3 * (context + 1))))
    (folder / "text.txt").write_text(text)
    model = {"name": "gpt", "preset": spec["preset"], **spec.get("model", {})}
    trainer = {"max_steps": spec["warmup"] + spec["steps"], "batch_size": spec["batch_size"], "eval_every": 0,
               "eval_batches": 1, "log_every": 10**6, "save_every": 0, "save_every_minutes": None,
               "sample_tokens": 0, "device": spec["device"], "loss_chunk": spec["loss_chunk"],
               "activation_checkpointing": spec["activation_checkpointing"]}
    if spec["compile"] != "auto":
        trainer["compile"] = spec["compile"] == "on"
    config = {"name": "bench-chunked-loss", "seed": 1, "model": model, "tokenizer": {"name": "bytes"},
              "data": {"name": "textfile", "path": str(folder / "text.txt"), "val_fraction": 0.4},
              "optim": {"name": "adamw", "lr": 6.0e-4}, "loggers": [], "trainer": trainer}
    path = folder / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_variant(spec: dict) -> dict:
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's start-up lines stay out of the table
        return _run_variant(spec)


def _run_variant(spec: dict) -> dict:
    import torch

    from trainframe.bench import RandomTokens
    from trainframe.config import load_config
    from trainframe.engine.build import build_trainer
    from trainframe.plugins import load_plugins

    with tempfile.TemporaryDirectory(prefix="bench-chunked-loss-") as tmp:
        folder = Path(tmp)
        os.environ["TRAINFRAME_CACHE"] = str(folder / "cache")
        plugins = load_plugins()
        cfg = load_config(write_config(folder, spec), spec.get("overrides", []), plugins.registry)
        trainer = build_trainer(cfg, plugins, folder / "run")
        vocab = trainer.model.config.vocab_size
        trainer.dataset = RandomTokens(vocab, trainer.context, spec["batch_size"], pin=trainer.device.type == "cuda")
        probe = Probe(trainer.device, spec["warmup"], spec["warmup"] + spec["steps"])
        trainer.listeners.append(probe)
        row = {"context": trainer.context, "vocab": vocab,
               "compile": trainer.forward_model is not trainer.wrapped_model,
               "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu"}
        try:
            trainer.fit(finish=False)
        except torch.OutOfMemoryError:
            return {**row, "error": "out of memory"}
        seconds = (probe.end - probe.start) / spec["steps"]
        tokens = spec["batch_size"] * trainer.context
        return {**row, "ms_per_step": seconds * 1e3, "tokens_per_s": tokens / seconds,
                "peak_gb": probe.peak / 1e9, "peak_over_start_gb": (probe.peak - probe.base) / 1e9,
                "memory": "cuda max_memory_allocated" if trainer.device.type == "cuda" else "cpu peak RSS (VmHWM)",
                "first_loss": probe.first_loss}


# ------------------------------------------------------------------------------------- the table

def table(rows: list[dict]) -> str:
    lines = ["| preset | batch | loss_chunk | act. ckpt | ms/step | vs whole, none | tok/s | peak GB | over start GB "
             "| loss 1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in rows:
        if r["loss_chunk"] is None and r["activation_checkpointing"] == "none" and "ms_per_step" in r:
            base[(r["preset"], r["batch_size"])] = r["ms_per_step"]
    for r in rows:
        head = (f"| {r['preset']} | {r['batch_size']} | {r['loss_chunk'] or 'whole'} | "
                f"{r['activation_checkpointing']} |")
        if "error" in r:
            lines.append(f"{head} {'OOM' if 'memory' in r['error'] else 'failed'}: {r['error'][:60]} | | | | | |")
            continue
        ref = base.get((r["preset"], r["batch_size"]))
        ratio = f"{r['ms_per_step'] / ref:.2f}x" if ref else ""
        lines.append(f"{head} {r['ms_per_step']:.1f} | {ratio} | {r['tokens_per_s']:,.0f} | {r['peak_gb']:.2f} | "
                     f"{r['peak_over_start_gb']:.2f} | {r['first_loss']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_variant(json.loads(args.worker))), flush=True)
        return 0
    if not args.out.parent.is_dir():
        print(f"--out: {args.out.parent} is not a directory", file=sys.stderr)
        return 2
    rows: list[dict] = []
    meta = {"steps": args.steps, "warmup": args.warmup, "device": args.device, "compile": args.compile,
            "overrides": args.set}
    for preset in args.preset_list:
        if preset != "tiny" and preset not in BATCHES and args.batch_list is None:
            print(f"--presets: no default batch sizes for '{preset}'; give --batch-sizes", file=sys.stderr)
            return 2
        for batch in args.batch_list or BATCHES[preset]:
            for chunk in (None, args.loss_chunk):
                for ac in (("none", "blocks") if args.checkpointing == "both" else (args.checkpointing,)):
                    spec = {"preset": preset, "batch_size": batch, "loss_chunk": chunk, "activation_checkpointing": ac,
                            "steps": args.steps, "warmup": args.warmup, "device": args.device, "compile": args.compile,
                            "overrides": args.set,
                            **(TINY if args.tiny else {}),
                            "context_hint": TINY["model"]["context"] if args.tiny else 8192}
                    if args.same_process:
                        result = run_variant(spec)
                    else:
                        proc = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--worker",
                                               json.dumps(spec)], capture_output=True, text=True)
                        found = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                        if proc.returncode == 0 and found:
                            result = json.loads(found[-1])
                        elif proc.returncode < 0:  # the kernel's OOM killer sends SIGKILL
                            result = {"error": f"killed by signal {-proc.returncode}"
                                               f"{' (out of memory?)' if proc.returncode == -9 else ''}"}
                        else:
                            result = {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
                    row = {"preset": preset, "batch_size": batch, "loss_chunk": chunk, "activation_checkpointing": ac,
                           **result}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    return 0 if all("error" not in r or "memory" in r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
