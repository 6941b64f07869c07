"""Built-in loggers. A logger is an object with hook implementations (``trainframe_log`` and any
lifecycle hooks it needs), registered into the plugin manager for the length of a fit."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from pydantic import Field

import trainframe
from trainframe.config import ComponentConfig
from trainframe.fileio import write_text_atomic, writing
from trainframe.progress import Progress

METRICS_FILE = "metrics.jsonl"


class JsonlConfig(ComponentConfig):
    pass


class JsonlLogger:
    """One JSON object per logged step in ``metrics.jsonl``; flushed per line so a kill loses nothing."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.file = None

    @trainframe.hookimpl
    def trainframe_log(self, step, metrics):
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in metrics.items()}}
        with writing(self.path, "the metrics"):
            if self.file is None:
                self.file = open(self.path, "a", buffering=1)
            self.file.write(json.dumps(row) + "\n")

    @trainframe.hookimpl
    def trainframe_fit_end(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (steps a resumed run will redo), atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill, or not one of ours
    write_text_atomic(path, "".join(line + "\n" for line in kept), "the metrics")


class TensorboardConfig(ComponentConfig):
    pass


class TensorboardLogger:
    """The same scalars as metrics.jsonl under ``tb/``."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "tb"
        self.writer = None

    @trainframe.hookimpl
    def trainframe_log(self, step, metrics, kind):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            self.writer = SummaryWriter(str(self.dir))
        group = "val" if kind == "eval" else "train"
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{group}/{key}", value, step)

    @trainframe.hookimpl
    def trainframe_sample(self, step, prompt, text):
        if self.writer is not None:
            self.writer.add_text("sample", f"```\n{prompt}{text}\n```", step)

    @trainframe.hookimpl
    def trainframe_fit_end(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ConsoleConfig(ComponentConfig):
    rich: bool | None = Field(None, description="live progress bar; null = when stdout is a terminal")


class ConsoleLogger:
    """A live progress display (step, loss, tok/s, ETA) on a terminal; plain lines otherwise."""

    def __init__(self, cfg: ConsoleConfig):
        self.rich = sys.stdout.isatty() if cfg.rich is None else cfg.rich
        self.progress = None
        self.task = None
        self.start = None

    @trainframe.hookimpl
    def trainframe_fit_start(self, trainer):
        self.start = (time.time(), trainer.step)
        self.max_steps = trainer.config.trainer.max_steps
        if self.rich:
            self.progress = Progress(True, "{task.fields[info]}", transient=False)
            self.task = self.progress.task("step", self.max_steps, completed=trainer.step, info="")
            self.progress.start()

    def _eta(self, step: int) -> str:
        t0, s0 = self.start
        if step <= s0:
            return "?"
        if step >= self.max_steps:
            return "0m00s"
        left = (time.time() - t0) / (step - s0) * (self.max_steps - step)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    @trainframe.hookimpl
    def trainframe_log(self, step, metrics, kind):
        parts = []
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "val_loss" in metrics:
            parts.append(f"val_loss {metrics['val_loss']:.4f} ppl {metrics['val_ppl']:.2f}")
        if metrics.get("lr") is not None:
            parts.append(f"lr {metrics['lr']:.2e}")
        if metrics.get("tokens_per_s"):
            parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
        if metrics.get("mfu") is not None:
            parts.append(f"mfu {metrics['mfu']:.1%}")
        if metrics.get("phase", "full") != "full":
            parts.append(f"phase {metrics['phase']}")
        info = " | ".join(parts)
        if self.progress is not None:
            if kind == "eval":  # evals stay on screen above the bar
                self.progress.print(f"step {step}: {info}")
            else:
                self.progress.update(self.task, completed=step, info=info)
        else:
            print(f"step {step}/{self.max_steps} | {info} | eta {self._eta(step)}", flush=True)

    @trainframe.hookimpl
    def trainframe_phase_change(self, trainer, step, old, new, reason):
        if trainer.controller.quiet:
            return
        message = f"step {step}: phase {old} -> {new} ({reason})"
        if self.progress is not None:
            self.progress.print(message)
        else:
            print(message, flush=True)

    @trainframe.hookimpl
    def trainframe_fit_end(self):
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def build_jsonl(cfg: JsonlConfig, *, run_dir: Path):
    return JsonlLogger(run_dir)


def build_tensorboard(cfg: TensorboardConfig, *, run_dir: Path):
    return TensorboardLogger(run_dir)


def build_console(cfg: ConsoleConfig, *, run_dir: Path):
    return ConsoleLogger(cfg)
