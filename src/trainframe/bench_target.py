"""``trainframe bench target``: the wall-clock, tokens, steps and FLOPs each recipe needs to reach a
target validation loss.

A recipe is a name, a config and overrides; the first one is the baseline. Every recipe trains with
the same seeds (seed, seed+1, ...) to its own ``trainer.max_steps``, and its loss on the config's
fixed val set is measured every ``--eval-every`` steps and at 50%, 75% and 100% of its budget. The
targets are the val losses the baseline reaches at 50/75/100% of its budget, paired by seed: the
n-th seed of a recipe is held to the n-th seed of the baseline (seed-to-seed spread, 0.2% of the
loss in docs/performance.md, would otherwise leave half the seeds of a recipe that changes no math
short of a median target), and reaches it within ``--tolerance`` (a share of the loss: kernels
that differ, e.g. under CUDA graphs, move the same run's loss in the fourth digit).
``bench predictive`` (the hybrid plugin) is this machinery with one recipe per phase controller.

Budget-fit controls (``--budgets 0.5,0.75``): the baseline again at shorter budgets, its schedule
fit to each (schedules are functions of ``trainer.max_steps``). Together with the baseline they
give plain training's loss per FLOP, and with it each recipe's *compute factor*: the FLOPs plain
training at a budget fit to it needs to reach the recipe's final val loss, over the recipe's FLOPs
(interpolated between the plain budgets in log FLOPs; marked ``~`` where extrapolated). Above 1, the
recipe buys more loss per FLOP than plain training; 0.75x the time needs 1.33. The *time factor* is
the same in wall-clock.

The clock, and why:
- Compile (and CUDA-graph recording) happens in a warm-up before it starts, so no recipe pays for it;
  the warm-up's steps are then undone (weights, optimizer, data position, RNG), so it changes no result.
- It times ``Trainer.fit``, the loop ``trainframe train`` runs (batches prefetched, the config's
  logging cadence), and synchronises the device only at eval points: a sync per step would slow
  the recipes that avoid host syncs (CUDA graphs, deferred loss reads).
- Eval is outside it and reported apart (``eval_s``); so is the warm-up (``compile_s``).
- A phase controller's own work is inside: it is part of the recipe's cost. A controller that times
  it (an ``overhead_s`` attribute, seconds) also has it converted to FLOPs: what the model computes
  in that time at the run's measured FLOP rate.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

import trainframe
from trainframe.bench import _device_name
from trainframe.config import load_config
from trainframe.errors import UserError
from trainframe.fileio import atomic_path, write_text_atomic, writing
from trainframe.phases import FullController, Phase

TARGETS = (("50%", 0.5), ("75%", 0.75), ("100%", 1.0))
TOLERANCE = 0.001  # default --tolerance
WARMUP_STEPS = 3  # compile, then CUDA-graph warm-up and recording: three calls of each path
# Every bench run: no logs, samples or checkpoints in the scratch dir, no evals but the bench's own.
BENCH_OVERRIDES = ("loggers=[]", "callbacks=[]", "trainer.sample_tokens=0", "trainer.save_every=0",
                   "trainer.save_every_minutes=null", "trainer.eval_every=0")
# summary key -> curve key: the amounts it took to reach each target
TO_TARGET = {"time": "wall_s", "tokens": "tokens", "useful_tokens": "useful_tokens", "steps": "step",
             "optimizer_steps": "optimizer_steps", "backward_passes": "backward_passes", "flops": "flops"}
MEDIANS = ("steps", "optimizer_steps", "predict_steps", "correct_steps", "backward_passes", "tokens",
           "useful_tokens", "flops", "controller_flops", "controller_s", "wall_s", "eval_s", "compile_s",
           "final_val_loss")


@dataclass
class Recipe:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    budget: float | None = None  # the baseline at this share of its steps (1.0: the baseline itself)


@dataclass(frozen=True)
class View:
    """What a bench built on this one adds (``bench predictive``: controllers, divergences)."""

    label: str = "recipe"  # what a recipe is called in the table and plot
    run_fields: Callable | None = None  # trainer -> extra per-run fields, read after its run
    summed: tuple[str, ...] = ()  # of those, the ones summed over seeds in the summary
    columns: tuple = ()  # extra table columns: (header, row -> text)
    x2: str = "tokens"  # the x axis of the plot's second panel (a curve key)


def budget_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--budgets", default=default, metavar="F,F,...",
                   help="budget-fit controls: the baseline again at these shares of its trainer.max_steps, "
                        f"its schedule fit to each; they give each recipe's compute factor (default: "
                        f"{default or 'none'})")


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise UserError(f"--budgets: expected shares of the baseline's steps like 0.5,0.75, got {text!r}") from None
    for f in budgets:
        if not 0 < f < 1:
            raise UserError(f"--budgets: expected shares in (0, 1), got {f:g}")
    return budgets


def summarize_again(dirs: list[Path], tolerance: float, as_json: bool, view: View = View(),
                    out: Path | None = None) -> int:
    """The summary, table and plot of the runs in each ``DIR/results.json``, made anew. A recipe
    found in several keeps each seed's first run, so seeds run apart (``seed=`` overrides) join up;
    its settings are the first one's."""
    runs, meta = {}, None
    for path in dirs:
        where = path / "results.json"
        try:
            old = json.loads(where.read_text())
            if meta is None:
                meta = {key: old[key] for key in ("config", "eval_every", "stop_at_target", "torch")}
                meta["recipes"] = {}
            for name, row in old["recipes"].items():
                if name not in runs:
                    runs[name] = []
                    meta["recipes"][name] = {k: row.get(k) for k in ("config", "overrides", "max_steps", "budget")}
                seen = {r["seed"] for r in runs[name]}
                runs[name] += [r for r in row["runs"] if r["seed"] not in seen]
        except OSError as e:
            raise UserError(f"--summarize: {where}: cannot read: {e.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"--summarize: {where}: not the results of a bench ({e!r})") from None
    for name in runs:  # the n-th seed of a recipe is paired with the n-th of the baseline
        runs[name].sort(key=lambda r: r["seed"])
    summary = summarize(runs, {**meta, "tolerance": tolerance}, view)
    table = markdown_table(summary, view)
    out = out or dirs[0]
    with writing(out, "the bench results"):
        out.mkdir(parents=True, exist_ok=True)
    _write(summary, table, out, view)
    print(json.dumps(summary, indent=2) if as_json else table)
    return 0


def parse_recipe(text: str, config) -> Recipe:
    """``"NAME KEY=VALUE ..."`` (shell quoting) -> a recipe of ``config``."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UserError(f"--recipe {text!r}: {e}") from None
    if not words or "=" in words[0]:
        raise UserError(f"--recipe {text!r}: expected a name first, then KEY=VALUE overrides")
    return Recipe(words[0], str(config), words[1:])


def read_recipes(path: Path, config) -> list[Recipe]:
    where = f"--recipes: {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{where}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    items = data.get("recipes") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: expected 'recipes:' and a list of {{name, config, overrides}}")
    recipes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise UserError(f"{where}: recipes[{i}]: expected a mapping with a name")
        unknown = sorted(set(item) - {"name", "config", "overrides"})
        if unknown:
            raise UserError(f"{where}: recipes[{i}]: unknown key '{unknown[0]}' (expected name, config, overrides)")
        overrides = item.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise UserError(f"{where}: recipes[{i}].overrides: expected a list of KEY=VALUE strings")
        recipes.append(Recipe(item["name"], str(item.get("config") or config), overrides))
    return recipes


# ---------------------------------------------------------------------------------- the bench
def run(recipes: list[Recipe], overrides: list[str], plugins, *, seeds: int, eval_every: int | None,
        stop_at_target: bool, out: Path, as_json: bool, view: View = View(), tolerance: float = TOLERANCE,
        budgets: list[float] = ()) -> int:
    """Run every recipe ``seeds`` times, write the results to ``out`` after every run, print them.
    ``budgets``: budget-fit controls, the baseline at these shares of its steps, run after it."""
    if seeds < 1:
        raise UserError(f"--seeds: expected a positive integer, got {seeds}")
    if eval_every is not None and eval_every < 1:
        raise UserError(f"--eval-every: expected a positive integer, got {eval_every}")
    names = [r.name for r in recipes]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"recipe '{name}' is named twice; recipe names must differ")
    configs = {r.name: _load(r, overrides, plugins.registry) for r in recipes}  # every typo before any run
    baseline = names[0]
    if budgets:
        base = recipes[0]
        steps = configs[baseline].trainer.max_steps
        controls = [Recipe(f"{baseline}@{f:g}x", base.config, [*base.overrides, f"trainer.max_steps={round(f * steps)}"],
                           budget=f) for f in budgets]
        base.budget = 1.0
        configs.update({r.name: _load(r, overrides, plugins.registry) for r in controls})
        recipes = [base, *controls, *recipes[1:]]
        names = [r.name for r in recipes]
    order = [(name, s) for s in range(seeds) for name in names]  # seed by seed: a cut-off run has every recipe
    if stop_at_target:  # the targets must be known before the other recipes run
        order = [(baseline, s) for s in range(seeds)] + [(n, s) for s in range(seeds) for n in names[1:]]
    meta = {"config": configs[baseline].name, "eval_every": eval_every, "stop_at_target": stop_at_target,
            "tolerance": tolerance, "torch": torch.__version__,
            "recipes": {r.name: {"config": r.config, "overrides": [*overrides, *r.overrides],
                                 "max_steps": configs[r.name].trainer.max_steps, "budget": r.budget}
                        for r in recipes}}
    with writing(out, "the bench results"):
        out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    summary = None
    # With --json, stdout holds the one JSON object: a dataset's log lines go to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet, tempfile.TemporaryDirectory(prefix="trainframe-bench-") as scratch:
        for i, (name, s) in enumerate(order):
            cfg = configs[name].model_copy(update={"seed": configs[name].seed + s})
            # budget-fit controls run to their end: their final losses are the plain curve
            stop_at = (reach_at(summary, s, "100%") if stop_at_target and name != baseline
                       and meta["recipes"][name]["budget"] is None else None)
            result = run_one(cfg, plugins, Path(scratch) / str(i), eval_every, stop_at, view.run_fields)
            if name == baseline and result["steps"] < cfg.trainer.max_steps:
                raise UserError(f"baseline '{name}' (seed {cfg.seed}) stopped at step {result['steps']} of "
                                f"{cfg.trainer.max_steps} ({result['stopped']}): its val losses are the targets")
            runs.setdefault(name, []).append(result)
            summary = summarize(runs, meta, view)
            table = markdown_table(summary, view)
            _write(summary, table, out, view)  # after every run: a cut-off bench keeps what it measured
            print(_progress(name, result, reach_at(summary, s, "100%")), file=sys.stderr, flush=True)
    print(json.dumps(summary, indent=2) if as_json else table)
    print(f"results in {out}", file=sys.stderr)
    return 0


def _load(recipe: Recipe, overrides: list[str], registry):
    try:
        return load_config(recipe.config, [*overrides, *recipe.overrides, *BENCH_OVERRIDES], registry)
    except UserError as e:
        raise UserError("\n".join(f"recipe '{recipe.name}': {line}" for line in str(e).splitlines())) from None


def reach_at(summary: dict, seed_index: int, label: str) -> float:
    """The val loss at which the ``seed_index``-th run of a recipe has reached target ``label``."""
    return summary["seed_targets"][label][seed_index] * (1 + summary["tolerance"])


def _progress(name: str, run: dict, target: float) -> str:
    reached = _first_reach(run["curve"], target, "wall_s")
    controller = f", controller {run['controller_s']:.2f} s" if run["controller_s"] else ""
    return (f"{name} seed {run['seed']}: {run['steps']} steps, {run['backward_passes']} backward passes, final val "
            f"loss {run['final_val_loss']:.4f}, {run['wall_s']:.2f} s (eval {run['eval_s']:.2f} s, warm-up "
            f"{run['compile_s']:.2f} s{controller}), "
            + ("100% target not reached" if reached is None else f"100% target at {reached:.2f} s")
            + (" (stopped there)" if run["stopped"] == "target" else ""))


def _synced_now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def val_loss(trainer) -> float:
    """Mean loss over the fixed val set (the engine's eval, without its hooks and checkpoint)."""
    t = trainer.config.trainer
    trainer.model.eval()
    total, count = trainer.loss_sums(trainer.dataset.val_batches(t.batch_size, t.eval_batches)).tolist()
    trainer.model.train()
    return total / max(count, 1)


def warm_up(trainer) -> float:
    """Run each path the clock will time a few times (train steps, the forward-only passes of
    predict/correct steps, eval), then put the whole run state back. Returns its seconds."""
    start = time.perf_counter()
    state = copy.deepcopy(trainer.state_dict())
    # A controller that says so warms up itself (its batch shapes and forward calls get compiled);
    # others see none of these steps: their state before the first step need not round-trip through
    # their state_dict (the hybrid one sets itself up on first sight).
    controller = trainer.controller
    if not controller.warms_up_itself:
        trainer.controller = FullController()
    try:
        for _ in range(WARMUP_STEPS):
            trainer.train_step()
        trainer.flush()
        # Forward only (loss_sums runs without grad) in train mode: the predict/correct steps' graph.
        trainer.loss_sums(trainer.dataset.val_batches(trainer.config.trainer.batch_size, WARMUP_STEPS))
        val_loss(trainer)
    finally:
        trainer.controller = controller
    trainer.load_state_dict(state)
    return _synced_now(trainer.device) - start


class Clock:
    """A listener on the run's ``fit``: counts each step's FLOPs, and at eval points stops the clock,
    measures the val loss, and ends the run when it reached ``stop_at``."""

    def __init__(self, trainer, eval_at: set[int], stop_at: float | None):
        self.eval_at, self.stop_at = eval_at, stop_at
        n_params = sum(p.numel() for p in trainer.model.parameters())
        self.flops_per_token = trainer.flops_per_token or 6.0 * n_params  # forward 1/3, backward 2/3
        self.phases: Counter = Counter()
        self.model_flops = self.wall = self.eval_s = 0.0
        self.tokens = trainer.tokens_seen
        self.useful = torch.zeros((), dtype=torch.long, device=trainer.device)  # counted targets, on the device
        self.start: float | None = None
        self.curve: list[dict] = []
        self.measure(trainer)

    def overhead(self, trainer) -> tuple[float, float]:
        """The controller's seconds so far, and them in FLOPs at the run's model FLOP rate."""
        seconds = getattr(trainer.controller, "overhead_s", 0.0)
        model_s = self.wall - seconds
        return seconds, (seconds * self.model_flops / model_s if model_s > 0 else 0.0)

    def measure(self, trainer) -> float:
        begin = time.perf_counter()
        loss = val_loss(trainer)
        self.eval_s += time.perf_counter() - begin
        self.curve.append({"step": trainer.step, "wall_s": self.wall, "tokens": trainer.tokens_seen,
                           "useful_tokens": int(self.useful) * trainer.world.size,  # synced by the eval
                           "optimizer_steps": self.phases[Phase.FULL], "backward_passes": trainer.backward_passes,
                           "flops": self.model_flops + self.overhead(trainer)[1], "val_loss": loss})
        return loss

    def pause(self, trainer) -> None:
        if self.start is not None:
            self.wall += _synced_now(trainer.device) - self.start
            self.start = None

    @trainframe.hookimpl
    def trainframe_step_start(self, trainer):
        if self.start is None:  # the first step (after an eval the clock restarts at once)
            self.start = _synced_now(trainer.device)

    @trainframe.hookimpl
    def trainframe_batch_ready(self, batch):
        self.useful += (batch[1] != -1).sum()  # not padding; read back at eval points only

    @trainframe.hookimpl
    def trainframe_step_end(self, trainer, step):
        # Host-side counts only: reading anything from the device here would sync every step.
        self.phases[trainer.phase] += 1
        tokens, self.tokens = trainer.tokens_seen - self.tokens, trainer.tokens_seen
        self.model_flops += tokens * self.flops_per_token * (1 if trainer.phase == Phase.FULL else 1 / 3)
        if step in self.eval_at:
            self.pause(trainer)
            loss = self.measure(trainer)
            if self.stop_at is not None and loss <= self.stop_at:
                trainer.stop_reason = "target"  # fit() ends after this step
            elif step < trainer.max_steps:
                self.start = time.perf_counter()  # the eval synchronised the device

    def finish(self, trainer) -> None:
        """After fit: a run stopped between eval points (NaN steps) gets its last point."""
        self.pause(trainer)
        if self.curve[-1]["step"] != trainer.step:
            self.measure(trainer)


def run_one(cfg, plugins, run_dir: Path, eval_every: int | None = None, stop_at: float | None = None,
            run_fields: Callable | None = None) -> dict:
    """Train ``cfg`` to its budget (or until its val loss reaches ``stop_at``) on the bench's clock."""
    from trainframe.engine.build import build_trainer
    from trainframe.engine.loop import TrainingStopped

    trainer = build_trainer(cfg, plugins, run_dir)
    max_steps = trainer.max_steps
    every = eval_every or max(1, max_steps // 20)
    eval_at = set(range(every, max_steps + 1, every)) | {round(max_steps * f) for _, f in TARGETS}
    compile_s = warm_up(trainer)
    clock = Clock(trainer, eval_at, stop_at)
    trainer.listeners.append(clock)
    try:
        stopped = trainer.fit(finish=False)
    except TrainingStopped:
        stopped = "nonfinite"
    if stopped == "interrupted":
        raise KeyboardInterrupt
    clock.finish(trainer)
    controller_s, controller_flops = clock.overhead(trainer)
    return {"seed": cfg.seed, "steps": trainer.step, "optimizer_steps": clock.phases[Phase.FULL],
            "forward_steps": clock.phases[Phase.FORWARD], "predict_steps": clock.phases[Phase.PREDICT],
            "correct_steps": clock.phases[Phase.CORRECT],
            "backward_passes": trainer.backward_passes, "tokens": trainer.tokens_seen,
            "useful_tokens": clock.curve[-1]["useful_tokens"],
            "flops": clock.curve[-1]["flops"], "controller_flops": controller_flops, "controller_s": controller_s,
            "wall_s": clock.wall, "eval_s": clock.eval_s, "compile_s": compile_s,
            "final_val_loss": clock.curve[-1]["val_loss"], "stopped": stopped, "device": _device_name(trainer.device),
            **(run_fields(trainer) if run_fields else {}), "curve": clock.curve}


# ------------------------------------------------------------------------------------ results
def _median(values) -> float | None:
    """Median where a run that never got there counts as infinitely late; None if the median did not."""
    m = statistics.median(math.inf if v is None else v for v in values)
    return None if m == math.inf else m


def _first_reach(curve: list[dict], target: float, key: str):
    return next((p[key] for p in curve if p["val_loss"] <= target), None)


def summarize(runs: dict[str, list[dict]], meta: dict, view: View = View()) -> dict:
    """Medians over seeds per recipe, and the amounts each needed to reach the baseline's targets.
    ``runs``: recipe -> its runs so far, the baseline first; ``meta``: what ``run`` was given."""
    baseline = next(iter(runs))
    max_steps = meta["recipes"][baseline]["max_steps"]

    def loss_at(run: dict, step: int) -> float:
        return next(p["val_loss"] for p in run["curve"] if p["step"] == step)

    seed_targets = {label: [loss_at(r, round(max_steps * f)) for r in runs[baseline]] for label, f in TARGETS}
    # median_high: with an even number of seeds the target shown is a loss the baseline really reached
    targets = {label: statistics.median_high(values) for label, values in seed_targets.items()}
    summary = {"config": meta["config"], "device": runs[baseline][0]["device"], "torch": meta["torch"],
               "seeds": len(runs[baseline]), "baseline": baseline, "max_steps": max_steps,
               "eval_every": meta["eval_every"], "stop_at_target": meta["stop_at_target"],
               "tolerance": meta["tolerance"], "targets": targets, "seed_targets": seed_targets, "recipes": {}}
    for name, rs in runs.items():
        row = dict(meta["recipes"][name])
        row.update({key: statistics.median(r[key] for r in rs) for key in MEDIANS})
        row.update({key: sum(r[key] for r in rs) for key in view.summed})
        for key, point in TO_TARGET.items():
            # a recipe's n-th run (seed) against the baseline's n-th; runs past the baseline's have no pair yet
            row[f"{key}_to_target"] = {label: _median([_first_reach(r["curve"], reach_at(summary, i, label), point)
                                                       for i, r in enumerate(rs[:len(runs[baseline])])])
                                       for label in targets}
        reached = row["time_to_target"]["100%"]
        # the baseline's row comes first, and is its own reference
        base = summary["recipes"][baseline]["time_to_target"]["100%"] if summary["recipes"] else reached
        row["time_vs_baseline"] = reached / base if reached is not None and base else None
        row["stopped_at_target"] = sum(r["stopped"] == "target" for r in rs)
        row["runs"] = rs
        summary["recipes"][name] = row
    plain = [r for r in summary["recipes"].values() if r.get("budget")]
    for row in summary["recipes"].values():
        for factor, key in (("compute_factor", "flops"), ("time_factor", "wall_s")):
            needed, extrapolated = plain_needs([(r[key], r["final_val_loss"]) for r in plain], row["final_val_loss"])
            row[factor] = needed / row[key] if needed is not None and row[key] > 0 else None
            row[f"{factor}_extrapolated"] = extrapolated
    return summary


def plain_needs(points: list[tuple[float, float]], loss: float) -> tuple[float | None, bool]:
    """The amount (FLOPs, seconds) plain training needs to end at ``loss``, from its budget-fit runs'
    ``(amount, final loss)``: linear in log amount between neighbouring budgets, extrapolated from
    the nearest two outside them (then the flag is true). A budget that ends no better than a
    smaller one does not count (overfitting: the smaller budget is the cheaper way there)."""
    envelope: list[tuple[float, float]] = []
    for amount, final in sorted(points):
        if amount > 0 and math.isfinite(final) and (not envelope or final < envelope[-1][1]):
            envelope.append((amount, final))
    if len(envelope) < 2 or not math.isfinite(loss):
        return None, False
    pairs = list(zip(envelope, envelope[1:]))
    inside = next(((a, b) for a, b in pairs if b[1] <= loss <= a[1]), None)
    (a0, l0), (a1, l1) = inside or (pairs[-1] if loss < envelope[-1][1] else pairs[0])
    t = (l0 - loss) / (l0 - l1)
    return math.exp(math.log(a0) + t * (math.log(a1) - math.log(a0))), inside is None


def _fmt(v, spec=".2f") -> str:
    return "not reached" if v is None else format(v, spec)


def _factor(row: dict, key: str) -> str:
    value = row.get(key)
    return "-" if value is None else ("~" if row[f"{key}_extrapolated"] else "") + f"{value:.2f}"


def markdown_table(summary: dict, view: View = View()) -> str:
    t = summary["targets"]
    stop = (" Recipes after the baseline stop at their first eval that reaches the 100% target (marked *)."
            if summary["stop_at_target"] else "")
    lines = [(f"Config `{summary['config']}` on {summary['device']}, torch {summary['torch']}; median over "
              f"{summary['seeds']} seed(s). Targets (the val loss of the baseline `{summary['baseline']}` at "
              f"50/75/100% of its {summary['max_steps']} steps, median): {t['50%']:.4f} / {t['75%']:.4f} / "
              f"{t['100%']:.4f}; each seed of a recipe is held to the same seed of the baseline, within "
              f"{summary['tolerance']:.2%}. "
              "Wall-clock counts training only: the compile warm-up and eval are excluded, a phase "
              f"controller's own time is included.{stop}{_factor_note(summary)}"), ""]
    headers = [view.label, "steps", "tokens", "wall s", "eval s", "final val loss", "s to 50%", "s to 75%",
               "s to 100%", "tokens to 100%", "FLOPs to 100%", "time vs baseline", *(h for h, _ in view.columns)]
    budgeted = any(r.get("budget") and r["budget"] < 1 for r in summary["recipes"].values())
    if budgeted:
        headers += ["compute factor", "time factor"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, r in summary["recipes"].items():
        tt, ratio = r["time_to_target"], r["time_vs_baseline"]
        cells = [name + ("*" if r["stopped_at_target"] else ""), f"{r['steps']:.0f}", f"{r['tokens']:,.0f}",
                 f"{r['wall_s']:.2f}", f"{r['eval_s']:.2f}", f"{r['final_val_loss']:.4f}", _fmt(tt["50%"]),
                 _fmt(tt["75%"]), _fmt(tt["100%"]), _fmt(r["tokens_to_target"]["100%"], ",.0f"),
                 _fmt(r["flops_to_target"]["100%"], ".3g"), "not reached" if ratio is None else f"{ratio:.2f}x",
                 *(cell(r) for _, cell in view.columns)]
        if budgeted:
            cells += [_factor(r, "compute_factor"), _factor(r, "time_factor")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _factor_note(summary: dict) -> str:
    shares = sorted(r["budget"] for r in summary["recipes"].values() if r.get("budget"))
    if len(shares) < 2:
        return ""
    return (" Compute (time) factor: the FLOPs (seconds) plain training needs to reach the recipe's final val "
            f"loss, from the baseline's budget-fit runs at {', '.join(f'{f:g}x' for f in shares)} of its steps, "
            "over the recipe's own; ~: extrapolated beyond those budgets.")


AXES = {"wall_s": "wall-clock s (training only)", "tokens": "tokens", "backward_passes": "backward passes"}


def plot(summary: dict, path: Path, view: View = View()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in summary["recipes"].items():
        curves = [run["curve"] for run in r["runs"]]
        n = min(len(cv) for cv in curves)  # a run stopped at the target has fewer points
        loss = [statistics.median(cv[i]["val_loss"] for cv in curves) for i in range(n)]
        for ax, key in zip(axes, ("wall_s", view.x2)):
            ax.plot([statistics.median(cv[i][key] for cv in curves) for i in range(n)], loss, marker=".", label=name)
    for ax, key in zip(axes, ("wall_s", view.x2)):
        ax.axhline(summary["targets"]["100%"], color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(top=summary["targets"]["50%"] * 1.25)  # the approach to the targets, not the first steps
        ax.set_xlabel(AXES.get(key, key))
        ax.set_ylabel("val loss (median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{summary['config']}: val loss by {view.label}")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def _write(summary: dict, table: str, out: Path, view: View) -> None:
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "results.md", table)
    plot(summary, out / "curves.png", view)
