"""``trainframe resume RUN_DIR [KEY=VALUE ...]``: continue a run from its newest good checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainframe.cli.launch import check_nproc, claim, describe_run, fit, nproc_arg, start
from trainframe.config import load_config
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import rundir
from trainframe.fileio import write_text_atomic
from trainframe.logging import truncate_metrics


def resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory written by `trainframe train`")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides, e.g. trainer.max_steps=20000 to continue a WSD run for longer")
    nproc_arg(p)


def resume_main(args: argparse.Namespace) -> int:
    from trainframe.plugins import current

    check_nproc(args.nproc)
    plugins = current()
    rundir.check_resumable(args.run_dir)
    cfg = load_config(args.run_dir / "config.yaml", args.overrides, plugins.registry)
    return start(args.nproc, cfg, ["resume", args.run_dir, *args.overrides],
                 lambda world: _resume(cfg, plugins, args, world))


def _resume(cfg, plugins, args: argparse.Namespace, world) -> int:
    from trainframe.engine.build import build_trainer

    trainer = build_trainer(cfg, plugins, args.run_dir, world)
    held = claim(args.run_dir, world, new=False)
    try:
        return _continue(trainer, cfg, plugins, args, world)
    finally:
        trainer.detach_listeners()  # resume attached them; a run with nothing to do never fits
        held.release()


def _continue(trainer, cfg, plugins, args: argparse.Namespace, world) -> int:
    config_file = args.run_dir / "config.yaml"
    say = print if world.is_main else (lambda *a, **k: None)
    if ckpt.step_checkpoints(args.run_dir / "checkpoints"):
        path, old_max = trainer.resume()
        if trainer.resumed_stop is not None and cfg.trainer.max_steps <= old_max:
            # Stopped by a component (trainer.request_stop): done within its budget; a larger one goes on.
            say(f"run stopped at step {trainer.step}: {trainer.resumed_stop}; nothing to do "
                "(raise trainer.max_steps to continue)")
            return 0
        say(f"resuming from {path} at step {trainer.step}")
    else:  # killed before its first checkpoint: the same run from the start, its metric rows dropped
        if world.is_main:
            truncate_metrics(args.run_dir, 0)
        old_max = cfg.trainer.max_steps
        trainer.resumed_from = 0
        say(f"resuming {args.run_dir} from step 0: it stopped before its first checkpoint")
    if old_max != cfg.trainer.max_steps:
        name, schedule_cfg = cfg.component("schedule")
        old = plugins.registry.get("schedule", name).factory(schedule_cfg, old_max)
        say(f"trainer.max_steps changed from {old_max} to {cfg.trainer.max_steps}: the '{name}' schedule is "
            f"recomputed for the new length; lr factor at step {trainer.step} was {old(trainer.step):.4f}, "
            f"is now {trainer.schedule(trainer.step):.4f}")
    if args.overrides and world.is_main:
        write_text_atomic(config_file, cfg.to_yaml())
    if trainer.step >= trainer.max_steps:
        say(f"the run is complete ({trainer.step} steps); raise trainer.max_steps to continue it")
        return 0
    if world.is_main:
        describe_run(trainer)
    return fit(trainer)
