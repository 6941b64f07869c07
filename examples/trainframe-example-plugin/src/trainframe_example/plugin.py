"""The example plugin. trainframe imports this module through the ``trainframe`` entry point and
calls its ``trainframe_register`` hook, which adds:

- schedule ``linear``: linear warmup to the peak lr, then linear decay to ``min_lr_ratio``;
- callback ``loss_spike``: keeps a running average of the training loss, adds ``loss_ema`` and
  ``loss_spikes`` to the logged metrics and writes ``loss_spikes.json`` into the run directory;
- command ``trainframe example lr``: prints the multipliers of the ``linear`` schedule.

Config usage::

    schedule: {name: linear, warmup_steps: 100, min_lr_ratio: 0.1}
    callbacks:
      - {name: loss_spike, factor: 2.0}
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from pydantic import Field, ValidationError

import trainframe
from trainframe import ComponentConfig, UserError


# ---------------------------------------------------------------------------------- schedule
class LinearConfig(ComponentConfig):
    """Keys of ``schedule: {name: linear, ...}``. ``name`` is handled by trainframe."""

    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup up to the peak lr")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="lr of the last step, as a fraction of the peak")


def build_linear(cfg: LinearConfig, max_steps: int):
    """Return ``f(step) -> multiplier of the peak lr`` for steps 0 .. max_steps - 1.

    The result must depend on ``step`` and ``max_steps`` only: a resumed run calls it again from
    the saved step, and a resume with a new ``trainer.max_steps`` rebuilds it for the new length.
    """
    warmup = cfg.warmup_steps
    decay_steps = max(1, max_steps - 1 - warmup)  # the peak right after warmup, the minimum at the last step

    def linear(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # step 0 trains at 1/warmup of the peak, not at zero
        progress = min(1.0, (step - warmup) / decay_steps)
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress

    return linear


# ---------------------------------------------------------------------------------- callback
class LossSpikeConfig(ComponentConfig):
    """Keys of ``callbacks: [{name: loss_spike, ...}]``."""

    factor: float = Field(2.0, gt=1, description="a loss above factor x the running average is a spike")
    beta: float = Field(0.9, ge=0, lt=1, description="smoothing of the running average (an EMA)")
    warmup_steps: int = Field(10, ge=0, description="steps watched before spikes are counted")
    file: str = Field("loss_spikes.json", description="report written into the run directory at the end")


class LossSpikeWatch:
    """Hook implementations are plain methods marked with ``@trainframe.hookimpl``; each takes only
    the hook arguments it needs. The engine registers this object for the length of one fit."""

    def __init__(self, cfg: LossSpikeConfig, run_dir: Path):
        self.cfg = cfg
        self.path = Path(run_dir) / cfg.file
        self.ema: float | None = None
        self.watched = 0
        self.spikes: list[dict] = []

    @trainframe.hookimpl
    def trainframe_step_end(self, step, metrics):
        loss = metrics.get("loss")
        if loss is not None and math.isfinite(loss):
            if self.ema is not None and self.watched >= self.cfg.warmup_steps and loss > self.cfg.factor * self.ema:
                # A spike does not enter the average, so one spike does not hide the next.
                self.spikes.append({"step": step, "loss": loss, "loss_ema": self.ema})
            else:
                self.ema = loss if self.ema is None else self.cfg.beta * self.ema + (1 - self.cfg.beta) * loss
            self.watched += 1
        # Keys added here are logged with the step (metrics.jsonl, tensorboard, console).
        metrics["loss_ema"] = self.ema
        metrics["loss_spikes"] = len(self.spikes)

    # Saving and loading our state with the checkpoint makes a resumed run continue exactly.
    @trainframe.hookimpl
    def trainframe_save_checkpoint(self, state):
        state["loss_spike"] = {"ema": self.ema, "watched": self.watched, "spikes": list(self.spikes)}

    @trainframe.hookimpl
    def trainframe_load_checkpoint(self, state):
        saved = state.get("loss_spike")
        if saved is not None:  # checkpoints written before the callback was added have none
            self.ema, self.watched, self.spikes = saved["ema"], saved["watched"], list(saved["spikes"])

    @trainframe.hookimpl
    def trainframe_fit_end(self, trainer):
        report = {"step": trainer.step, "watched": self.watched, "factor": self.cfg.factor,
                  "loss_ema": self.ema, "spikes": self.spikes}
        # Write to a temporary name, then rename: a kill never leaves half a file.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp, self.path)


def build_loss_spike(cfg: LossSpikeConfig, *, run_dir: Path) -> LossSpikeWatch:
    return LossSpikeWatch(cfg, run_dir)


# ----------------------------------------------------------------------------------- command
def lr_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--min-lr-ratio", type=float, default=0.0)
    parser.add_argument("--every", type=int, default=10, help="print every N-th step (and the last)")


def lr_main(args: argparse.Namespace) -> int:
    try:
        cfg = LinearConfig(warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio)
    except ValidationError as e:
        err = e.errors()[0]
        # UserError: trainframe prints the message as one line and exits with status 2.
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg'].lower()}") from None
    if args.max_steps <= 0 or args.every <= 0:
        raise UserError("--max-steps and --every: expected positive integers")
    schedule = build_linear(cfg, args.max_steps)
    for step in sorted({*range(0, args.max_steps, args.every), args.max_steps - 1}):
        print(f"{step}\t{schedule(step):.4f}")
    return 0


# ---------------------------------------------------------------------------------- register
@trainframe.hookimpl
def trainframe_register(registry):
    registry.add("schedule", "linear", build_linear, LinearConfig,
                 help="linear warmup, then linear decay to min_lr_ratio")
    registry.add("callback", "loss_spike", build_loss_spike, LossSpikeConfig,
                 help="flag loss spikes; writes loss_spikes.json")
    registry.add_command("example lr", lr_main, lr_arguments, help="print the linear schedule's lr multipliers")
