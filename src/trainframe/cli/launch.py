"""What ``train`` and ``resume`` share: ``--nproc``, starting the run here or under torchrun,
taking the run directory, and the lines and exit status around ``trainer.fit()``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from trainframe.engine import checkpoint as ckpt
from trainframe.engine import rundir
from trainframe.errors import UserError
from trainframe.protocols import SupportsSummary


def nproc_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine, one per GPU (starts torchrun --standalone); "
                        "for several machines run torchrun yourself, see docs/performance.md")


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise UserError(f"--nproc: expected a positive integer, got {nproc}")
    if nproc > 1 and "RANK" in os.environ:
        raise UserError("--nproc: already running under torchrun; leave it out (torchrun's --nproc_per_node sets it)")


def start(nproc: int, cfg, argv: list, body) -> int:
    """``body(world)`` in this process (one rank, or this rank of a torchrun), or, with ``nproc`` > 1,
    ``trainframe ARGV`` in ``nproc`` processes under torchrun; the exit status."""
    from trainframe.engine import distributed

    if nproc > 1:
        return _torchrun(nproc, cfg.trainer.device, argv)
    world = distributed.init(cfg.trainer.device)
    try:
        return body(world)
    finally:
        distributed.shutdown(world)


def _torchrun(nproc: int, device: str, argv: list) -> int:
    """Run ``python -m trainframe ARGV`` in ``nproc`` processes under torchrun; its exit status."""
    if device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < nproc:
        raise UserError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--nproc {nproc}: trainer.device '{device}' needs CUDA, which is not available")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "trainframe", *map(str, argv)]
    proc = subprocess.Popen(command)
    stopped_by = []

    def on_signal(signum, frame):
        stopped_by.append(signum)
        if signum == signal.SIGTERM:
            proc.send_signal(signum)

    # `kill` and `docker stop` signal this process alone: SIGTERM goes on to torchrun, which passes it
    # to every rank; Ctrl-C reaches torchrun and the ranks directly. The ranks save at the next log
    # step and stop; torchrun then exits 1, so the status is ours: 128 + the signal, as in one process.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + stopped_by[0] if stopped_by else status


def claim(run_dir: Path, world, new: bool) -> rundir.RunDirLock:
    """Rank 0 takes the run directory (``new``: train's rule, see engine/rundir.py) and removes the
    temporary files of saves killed mid-write (no other process writes there); a refusal reaches
    every rank, so that all stop."""
    from trainframe.engine import distributed
    from trainframe.engine.loop import check_run_dir

    held, error = rundir.RunDirLock(), None
    if world.is_main:
        try:
            check_run_dir(run_dir)
            held = rundir.lock(run_dir, new)
        except UserError as e:
            error = str(e)
        else:
            count, size = ckpt.remove_stale_temps(run_dir / "checkpoints")
            if count:
                print(f"trainframe: removed {count} temporary file(s) ({size / 1e6:.1f} MB) left in "
                      f"{run_dir / 'checkpoints'} by saves that were killed", file=sys.stderr)
    error = distributed.broadcast_object(error, world)
    if error:
        raise UserError(error)
    return held


def describe_run(trainer) -> None:
    model = trainer.model
    if isinstance(model, SupportsSummary):
        print(f"model: {model.summary()}")
    else:  # a plugin's model: count what we can
        print(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    t = trainer.config.trainer
    ranks = f" x {trainer.world.size} ranks ({t.distributed})" if trainer.world.distributed else ""
    print(f"device: {trainer.device}, batch {t.batch_size} x accum {t.grad_accum}{ranks} x context "
          f"{trainer.context}, {t.max_steps} steps; run dir {trainer.run_dir}", flush=True)


def fit(trainer) -> int:
    from trainframe.engine.loop import TrainingStopped

    try:
        reason = trainer.fit()
    except TrainingStopped as e:
        print(f"trainframe: {e}", file=sys.stderr)
        return 1
    val = f", best val loss {trainer.best_val:.4f}" if trainer.best_val < float("inf") else ""
    stopped = trainer.stop_signal if reason == "interrupted" else None
    if trainer.world.is_main:
        what = {None: "finished", signal.SIGINT: "interrupted"}.get(stopped, "terminated")
        if reason not in ("done", "interrupted"):  # trainer.request_stop(reason): a stop, not an error
            val = f" (best val loss {trainer.best_val:.4f})" if val else ""
            print(f"stopped at step {trainer.step}: {trainer.stop_message or reason}{val}; run dir {trainer.run_dir}")
        else:
            print(f"{what} at step {trainer.step}{val}; run dir {trainer.run_dir}")
    # Stopped by a signal: the status of a process the signal killed (130, 143), so that scripts and
    # schedulers do not take the run for finished; the checkpoint is written, `resume` goes on.
    # Stopped by a component (request_stop): 0, the run ended as its config asked.
    return 128 + stopped if stopped else 0
