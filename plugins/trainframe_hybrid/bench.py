"""``trainframe bench predictive``: does skipping backward passes pay, in wall-clock?

``bench target`` (``trainframe.bench_target``: its clock, targets and outputs) with one recipe per
phase controller, ``full`` first: it is the baseline whose val losses are the targets, and it runs
again at the ``--budgets`` shares of its steps (schedules fit to each) so that every controller gets
a compute factor against plain training at a budget fit to it. Only ``phases`` differs between
recipes (``--recipe`` adds any other); the controllers run with ``time_overhead`` on where they have
it, so their own time is measured (it is inside the wall-clock either way) and also reported apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trainframe.bench_target import (
    TOLERANCE,
    Recipe,
    View,
    budget_argument,
    parse_budgets,
    parse_recipe,
    run,
    summarize_again,
)
from trainframe.config import apply_overrides, load_raw
from trainframe.errors import UserError

VIEW = View(label="controller", x2="backward_passes",
            run_fields=lambda trainer: {"divergences": getattr(trainer.controller, "divergences", 0)},
            summed=("divergences",),
            columns=(("optimizer steps", lambda r: f"{r['optimizer_steps']:.0f}"),
                     ("backward passes", lambda r: f"{r['backward_passes']:.0f}"),
                     ("FLOPs", lambda r: f"{r['flops']:.3g}"),
                     ("controller s", lambda r: f"{r['controller_s']:.2f}"),
                     ("divergences", lambda r: str(r["divergences"]))))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config: model, data and budget (trainer.max_steps)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied to every run")
    p.add_argument("--seeds", type=int, default=3, help="runs per controller (seeds seed, seed+1, ...)")
    p.add_argument("--controllers", default="full,hybrid,skip,extrapolate",
                   help="comma-separated phase controllers; 'full' is required (it sets the targets)")
    p.add_argument("--recipe", action="append", default=[], metavar='"NAME [KEY=VALUE ...]"',
                   help="one more recipe after the controllers: a name and its overrides in one quoted string "
                        "(e.g. \"outer-k16 'phases={name: outer, every: 16}'\"); repeat for more")
    budget_argument(p, default="0.5,0.75")
    p.add_argument("--eval-every", type=int, default=None, help="steps between val evals (default max_steps/20)")
    p.add_argument("--summarize", type=Path, nargs="+", metavar="DIR",
                   help="train nothing: merge and summarize the results.json of earlier benches (run side by "
                        "side on one config), the first DIR's first recipe the baseline; written to --out "
                        "(default the first DIR). A recipe in several keeps each seed once, so seeds run apart "
                        "(seed=N) join up")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for results.json, results.md, curves.png (default runs/bench-predictive-TIME)")


def main(args: argparse.Namespace) -> int:
    from trainframe.plugins import current

    if args.summarize:
        return summarize_again(args.summarize, TOLERANCE, args.json, VIEW, out=args.out)
    if args.config is None:
        raise UserError("bench predictive: expected CONFIG (or --summarize DIR)")
    plugins = current()
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    known = plugins.registry.names("phases")
    for c in controllers:
        if c not in known:
            raise UserError(f"--controllers: unknown phase controller '{c}'; registered: {', '.join(known)}")
    if "full" not in controllers:
        raise UserError("--controllers: 'full' is required: its val losses are the targets")
    if len(set(controllers)) != len(controllers):
        raise UserError(f"--controllers: a controller is listed twice in '{args.controllers}'")
    recipes = [Recipe(c, str(args.config), [phases_override(args.config, args.overrides, c, plugins.registry)])
               for c in ["full"] + [c for c in controllers if c != "full"]]
    recipes += [parse_recipe(text, args.config) for text in args.recipe]
    out = args.out or Path("runs") / f"bench-predictive-{time.strftime('%Y%m%d-%H%M%S')}"
    return run(recipes, args.overrides, plugins, seeds=args.seeds, eval_every=args.eval_every,
               stop_at_target=False, out=out, as_json=args.json, view=VIEW, budgets=parse_budgets(args.budgets))


def phases_override(path, overrides: list[str], controller: str, registry) -> str:
    """``phases`` switched to ``controller``. The config's other phases keys (``phases.warmup_steps=50``
    ...) go to every controller that has them (the hybrid family shares one set), not to ``full``."""
    data, origins = load_raw(path)
    section = dict(apply_overrides(data, origins, overrides).get("phases") or {})
    # time_overhead: the controllers wait for the GPU after their work, so overhead_s holds its time
    if controller == "full":
        section = {"name": "full"}
    else:  # the keys this controller has (outer and selective share none with the hybrid family)
        fields = registry.get("phases", controller).config.model_fields
        section = {**{k: v for k, v in section.items() if k in fields}, "name": controller}
        if "time_overhead" in fields:
            section["time_overhead"] = True
    return f"phases={json.dumps(section)}"
