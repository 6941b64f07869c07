"""``trainframe bench predictive``: does skipping backward passes pay, in wall-clock?

Every controller trains the same model on the same data (same config, same seeds). The val loss is
measured on a fixed val set every ``--eval-every`` steps and at 50%, 75% and 100% of the budget;
eval time and the compile warm-up are excluded from wall-clock, controller time is included. The
targets are the val losses ``full`` reaches at 50%, 75% and 100% of its budget (median over seeds),
and each controller is scored by the wall-clock it needed to reach them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainframe.config import apply_overrides, load_config, load_raw
from trainframe.errors import UserError
from trainframe.fileio import atomic_path, write_text_atomic
from trainframe.phases import Phase

TARGETS = (("50%", 0.5), ("75%", 0.75), ("100%", 1.0))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run config: model, data and budget (trainer.max_steps)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied to every run")
    p.add_argument("--seeds", type=int, default=3, help="runs per controller (seeds seed, seed+1, ...)")
    p.add_argument("--controllers", default="full,hybrid,skip,extrapolate",
                   help="comma-separated phase controllers; 'full' is required (it sets the targets)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between val evals (default max_steps/20)")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for results.json, results.md, curves.png (default runs/bench-predictive-TIME)")


def main(args: argparse.Namespace) -> int:
    from trainframe.plugins import current

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
    if args.seeds < 1:
        raise UserError(f"--seeds: expected a positive integer, got {args.seeds}")
    if args.eval_every is not None and args.eval_every < 1:
        raise UserError(f"--eval-every: expected a positive integer, got {args.eval_every}")
    controllers = ["full"] + [c for c in controllers if c != "full"]

    configs = {c: _config_for(args.config, args.overrides, c, plugins.registry) for c in controllers}
    out = args.out or Path("runs") / f"bench-predictive-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {c: [] for c in controllers}
    with tempfile.TemporaryDirectory() as scratch:
        for seed_index in range(args.seeds):
            for c in controllers:
                cfg = configs[c].model_copy(update={"seed": configs[c].seed + seed_index})
                run = run_one(cfg, plugins, Path(scratch) / f"{c}-{seed_index}", args.eval_every)
                runs[c].append(run)
                print(f"seed {cfg.seed} {c}: {run['optimizer_steps']} optimizer steps, {run['backward_passes']} "
                      f"backward passes, final val loss {run['final_val_loss']:.4f}, {run['wall_s']:.1f} s "
                      f"(controller {run['controller_s']:.1f} s), {run['divergences']} divergences",
                      file=sys.stderr, flush=True)
            summary, table = write_results(runs, configs["full"], out)  # after every seed: a cut-off run keeps them
    print(json.dumps(summary, indent=2) if args.json else table)
    print(f"results in {out}", file=sys.stderr)
    return 0


def write_results(runs: dict[str, list[dict]], full_cfg, out: Path) -> tuple[dict, str]:
    summary = summarize(runs, full_cfg)
    table = markdown_table(summary)
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "results.md", table)
    plot(summary, out / "curves.png")
    return summary, table


def _config_for(path, overrides: list[str], controller: str, registry):
    """The run config with ``phases`` switched to ``controller``. The config's other phases keys
    (``phases.warmup_steps=50`` ...) go to every controller of the hybrid family, which share one
    set of keys, and not to ``full``."""
    data, origins = load_raw(path)
    section = dict(apply_overrides(data, origins, overrides).get("phases") or {})
    # time_overhead: the controllers wait for the GPU after their work, so overhead_s holds its time
    section = {"name": "full"} if controller == "full" else {**section, "name": controller, "time_overhead": True}
    extra = [f"phases={json.dumps(section)}", "loggers=[]", "callbacks=[]", "trainer.sample_tokens=0",
             "trainer.save_every=0"]
    return load_config(path, [*overrides, *extra], registry)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def val_loss(trainer) -> float:
    """Mean val loss over the fixed val set (the engine's eval, without its hooks and saves)."""
    t = trainer.config.trainer
    trainer.model.eval()
    total, count = trainer.loss_sums(trainer.dataset.val_batches(t.batch_size, t.eval_batches)).tolist()
    trainer.model.train()
    return total / max(count, 1)


def _warm_up(trainer) -> None:
    """Compile (or otherwise initialise) the train and forward-only paths on a val batch before
    the clock starts, so no controller pays for it; the weights and the data position are unchanged."""
    x, y = trainer._to_device(next(iter(trainer.dataset.val_batches(trainer.config.trainer.batch_size, 1))))
    trainer.forward(x, y).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        trainer.forward(x, y)
    val_loss(trainer)
    _sync(trainer.device)


def run_one(cfg, plugins, run_dir: Path, eval_every: int | None) -> dict:
    from trainframe.engine.build import build_trainer

    trainer = build_trainer(cfg, plugins, run_dir)
    t = cfg.trainer
    max_steps = t.max_steps
    every = eval_every or max(1, max_steps // 20)
    eval_at = set(range(every, max_steps + 1, every)) | {round(max_steps * f) for _, f in TARGETS}
    n_params = sum(p.numel() for p in trainer.model.parameters())
    forward_per_token = (trainer.flops_per_token / 3) if trainer.flops_per_token else 2.0 * n_params
    _warm_up(trainer)
    controller = trainer.controller

    def overhead() -> float:
        return getattr(controller, "overhead_s", 0.0)

    wall = full_time = full_overhead = model_flops = full_flops = 0.0
    forward_passes = 0
    curve = [{"step": 0, "wall_s": 0.0, "backward_passes": 0, "flops": 0.0, "val_loss": val_loss(trainer)}]
    while trainer.step < max_steps and trainer.stop_reason is None:
        _sync(trainer.device)
        start, before = time.perf_counter(), overhead()
        tokens_before = trainer.tokens_seen
        trainer.train_step()
        _sync(trainer.device)
        elapsed = time.perf_counter() - start
        wall += elapsed
        tokens = trainer.tokens_seen - tokens_before
        forward_passes += t.grad_accum
        step_flops = tokens * forward_per_token * (3 if trainer.phase == Phase.FULL else 1)
        model_flops += step_flops
        if trainer.phase == Phase.FULL:
            full_time += elapsed
            full_overhead += overhead() - before
            full_flops += step_flops
        if trainer.step in eval_at:
            rate = full_flops / max(full_time - full_overhead, 1e-9)
            curve.append({"step": trainer.step, "wall_s": wall, "backward_passes": trainer.backward_passes,
                          "flops": model_flops + overhead() * rate, "val_loss": val_loss(trainer)})
    # Controller time in FLOPs: what the model would have computed in it at the measured full-step rate.
    rate = full_flops / max(full_time - full_overhead, 1e-9) if full_time else 0.0
    counts = getattr(controller, "counts", {"full": trainer.step})
    return {"seed": cfg.seed, "steps": trainer.step, "optimizer_steps": counts.get("full", trainer.step),
            "predict_steps": counts.get("predict", 0), "correct_steps": counts.get("correct", 0),
            "backward_passes": trainer.backward_passes, "forward_passes": forward_passes,
            "flops": model_flops + overhead() * rate, "controller_flops": overhead() * rate,
            "controller_s": overhead(), "wall_s": wall, "final_val_loss": curve[-1]["val_loss"],
            "divergences": getattr(controller, "divergences", 0),
            "stopped": trainer.stop_reason, "curve": curve}


def _median(values) -> float | None:
    """Median where a run that never got there counts as infinitely late; None if the median did not."""
    m = statistics.median(math.inf if v is None else v for v in values)
    return None if m == math.inf else m


def _first_reach(curve: list[dict], target: float, key: str):
    for point in curve:
        if point["val_loss"] <= target:
            return point[key]
    return None


def summarize(runs: dict[str, list[dict]], full_cfg) -> dict:
    max_steps = full_cfg.trainer.max_steps
    targets = {}
    for label, fraction in TARGETS:
        step = round(max_steps * fraction)
        # median_high: with an even number of seeds the target is one full actually reached
        targets[label] = statistics.median_high(next(p["val_loss"] for p in r["curve"] if p["step"] == step)
                                           for r in runs["full"])
    summary = {"config": full_cfg.name, "max_steps": max_steps, "seeds": len(runs["full"]),
               "targets": targets, "controllers": {}}
    full_time = None
    for c, rs in runs.items():
        row = {key: statistics.median(r[key] for r in rs)
               for key in ("steps", "optimizer_steps", "predict_steps", "correct_steps", "backward_passes",
                           "forward_passes", "flops", "controller_flops", "controller_s", "wall_s",
                           "final_val_loss")}
        row["divergences"] = sum(r["divergences"] for r in rs)
        row["time_to_target"] = {label: _median([_first_reach(r["curve"], v, "wall_s") for r in rs])
                                 for label, v in targets.items()}
        row["backward_passes_to_target"] = {label: _median([_first_reach(r["curve"], v, "backward_passes")
                                                            for r in rs]) for label, v in targets.items()}
        if c == "full":
            full_time = row["time_to_target"]["100%"]
        reached = row["time_to_target"]["100%"]
        row["time_to_full_final_vs_full"] = (reached / full_time) if reached and full_time else None
        row["runs"] = rs
        summary["controllers"][c] = row
    return summary


def _fmt(v, digits=1) -> str:
    return "not reached" if v is None or v == math.inf else f"{v:.{digits}f}"


def markdown_table(summary: dict) -> str:
    t = summary["targets"]
    lines = [(f"Config `{summary['config']}`, {summary['max_steps']} steps, median over {summary['seeds']} "
              f"seeds. Targets (full's val loss at 50/75/100% of its budget): {t['50%']:.4f} / {t['75%']:.4f} / "
              f"{t['100%']:.4f}. Wall-clock excludes eval and compile warm-up, includes controller time."), "",
             ("| controller | optimizer steps | backward passes | FLOPs | wall s | controller s | final val loss "
              "| s to 50% | s to 75% | s to 100% | time to full's final loss / full's | divergences |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, r in summary["controllers"].items():
        tt = r["time_to_target"]
        ratio = r["time_to_full_final_vs_full"]
        lines.append(f"| {c} | {r['optimizer_steps']:.0f} | {r['backward_passes']:.0f} | {r['flops']:.3g} | "
                     f"{r['wall_s']:.1f} | {r['controller_s']:.1f} | {r['final_val_loss']:.4f} | {_fmt(tt['50%'])} | "
                     f"{_fmt(tt['75%'])} | {_fmt(tt['100%'])} | {_fmt(ratio, 2)} | {r['divergences']} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for c, r in summary["controllers"].items():
        curves = [run["curve"] for run in r["runs"]]
        n = min(len(cv) for cv in curves)
        loss = [statistics.median(cv[i]["val_loss"] for cv in curves) for i in range(n)]
        for ax, key in zip(axes, ("wall_s", "backward_passes")):
            ax.plot([statistics.median(cv[i][key] for cv in curves) for i in range(n)], loss, marker=".", label=c)
    for ax, label in zip(axes, ("wall-clock s (training only)", "backward passes")):
        ax.axhline(summary["targets"]["100%"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("val loss (median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{summary['config']}: val loss by controller")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
