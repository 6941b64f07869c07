"""``trainframe train CONFIG [KEY=VALUE ...]``: a new run in a new or empty run directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trainframe.cli.config import config_args
from trainframe.cli.launch import check_nproc, claim, describe_run, fit, nproc_arg, start
from trainframe.config import load_config
from trainframe.engine import rundir
from trainframe.fileio import write_text_atomic


def train_args(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--run-dir", type=Path, help="where the run is written (default runs/NAME-TIMESTAMP)")
    nproc_arg(p)


def train_main(args: argparse.Namespace) -> int:
    from trainframe.plugins import current

    check_nproc(args.nproc)
    plugins = current()
    cfg = load_config(args.config, args.overrides, plugins.registry)
    run_dir = args.run_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rundir.check_new(run_dir)
    return start(args.nproc, cfg, ["train", args.config, *args.overrides, "--run-dir", run_dir],
                 lambda world: _train(cfg, plugins, run_dir, world))


def _train(cfg, plugins, run_dir: Path, world) -> int:
    # Its own function so the trainer is garbage once it returns, before the process group goes.
    from trainframe.engine import distributed
    from trainframe.engine.build import build_trainer

    run_dir = distributed.broadcast_object(run_dir, world)  # one name, even if ranks read the clock apart
    trainer = build_trainer(cfg, plugins, run_dir, world)
    held = claim(run_dir, world, new=True)
    try:
        if world.is_main:
            write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
            describe_run(trainer)
        distributed.barrier(world)
        return fit(trainer)
    finally:
        held.release()
