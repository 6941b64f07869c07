"""``trainframe bench throughput`` and ``bench target``: the arguments and the printing around
``bench.run_bench`` and ``bench_target.run``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from trainframe.bench import run_bench
from trainframe.bench_target import (TOLERANCE, Recipe, budget_argument, parse_budgets, parse_recipe, read_recipes,
                                     run, summarize_again)
from trainframe.errors import UserError
from trainframe.plugins import current


def throughput_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (the run to time)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. trainer.batch_size=64 model.preset=medium")
    p.add_argument("--steps", type=int, default=50, help="timed steps (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first, compile included (default 10)")
    p.add_argument("--data", choices=("random", "real"), default="random",
                   help="random tokens (like the reference loop) or the config's dataset (default random)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--profile", type=Path, metavar="TRACE.json",
                   help="run torch.profiler over the timed steps: write a Chrome/Perfetto trace here (rank r of "
                        "several: TRACE.rank<r>.json) and list the operators that took the most time; "
                        "the profiler slows the steps a little")


def throughput_main(args: argparse.Namespace) -> int:
    # With --json, stdout holds the one JSON object: the dataset's log lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = run_bench(args.config, args.overrides, args.steps, args.warmup, args.data, profile=args.profile)
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports for all
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (peak unknown for this device)"
    mem = f"{result['peak_mem_gb']:.2f} GB" if result["peak_mem_gb"] is not None else "n/a (CPU)"
    print(f"{result['name']}: {result['params_m']:.1f}M params, batch {result['batch_size']} x accum "
          f"{result['grad_accum']} x context {result['context']}, {args.data} data, {result['device']}, "
          f"torch {result['torch']}")
    print(f"  tokens/s     {result['tokens_per_s']:,.0f}")
    print(f"  targets/s    {result['target_tokens_per_s']:,.0f}   (counted targets: padding left out)")
    print(f"  ms/step      {result['ms_per_step']:.2f}   ({args.steps} steps after {args.warmup} warm-up)")
    print(f"  MFU          {mfu}")
    print(f"  peak memory  {mem}")
    if "profile" in result:
        where = "GPU" if result["peak_mem_gb"] is not None else "CPU"
        print(f"\n  most {where} time per step (self time; trace: {result['profile']['trace']})")
        for row in result["profile"]["top"]:
            print(f"  {row['ms_per_step']:9.3f} ms  x{row['calls_per_step']:<6.1f} {row['name'][:90]}")
    return 0


def target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config: every recipe's unless a --recipes entry names its own")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied to every recipe, before the recipe's own")
    p.add_argument("--recipe", action="append", default=[], metavar='"NAME [KEY=VALUE ...]"',
                   help="a recipe: a name and its overrides in one quoted string; repeat for more. The first "
                        "recipe is the baseline (make it the plain one: AdamW, padded windows, compile on, no "
                        "CUDA graphs); with no recipe at all, CONFIG is the only one")
    p.add_argument("--recipes", type=Path, metavar="FILE.yaml",
                   help="recipes from a file: 'recipes: [{name: N, config: PATH (default CONFIG), overrides: "
                        "[KEY=VALUE, ...]}]'; they come before any --recipe; paths are relative to the "
                        "current directory, as CONFIG is")
    p.add_argument("--seeds", type=int, default=3, help="runs per recipe, seeds seed, seed+1, ... (default 3)")
    budget_argument(p, default="")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between val evals (default each recipe's max_steps/20); also at 50/75/100%%")
    p.add_argument("--stop-at-target", action="store_true",
                   help="run the baseline's seeds first, then stop every other recipe at its first eval that "
                        "reaches the 100%% target (the baseline's final val loss)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help=f"a run reaches a target within this share of it (default {TOLERANCE}: 0.1%%)")
    p.add_argument("--summarize", type=Path, nargs="+", metavar="DIR",
                   help="train nothing: summarize DIR/results.json of an earlier bench again (with this "
                        "--tolerance) and rewrite its table and plot; CONFIG is then not needed. Several DIRs "
                        "(benches of one config run side by side) are merged into one summary, the first DIR's "
                        "first recipe the baseline, written to --out (default the first DIR); a recipe in several "
                        "keeps each seed once, so seeds run apart (seed=N) join up")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for results.json, results.md, curves.png (default runs/bench-target-TIME)")


def target_main(args: argparse.Namespace) -> int:
    if not 0 <= args.tolerance < 1:
        raise UserError(f"--tolerance: expected a share of the loss in [0, 1), got {args.tolerance}")
    if args.summarize:
        return summarize_again(args.summarize, args.tolerance, args.json, out=args.out)
    if args.config is None:
        raise UserError("bench target: expected CONFIG (or --summarize DIR)")
    recipes = read_recipes(args.recipes, args.config) if args.recipes else []
    recipes += [parse_recipe(text, args.config) for text in args.recipe]
    out = args.out or Path("runs") / f"bench-target-{time.strftime('%Y%m%d-%H%M%S')}"
    return run(recipes or [Recipe("baseline", args.config)], args.overrides, current(), seeds=args.seeds,
               eval_every=args.eval_every, stop_at_target=args.stop_at_target, out=out, as_json=args.json,
               tolerance=args.tolerance, budgets=parse_budgets(args.budgets))
