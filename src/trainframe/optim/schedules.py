"""Learning-rate schedules: a factory returns ``f(step) -> multiplier of the peak lr``.

Schedules are pure functions of (step, max_steps). That is what lets a WSD run resumed from a
stable-phase checkpoint continue with a new ``trainer.max_steps``: the decay simply moves.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

from pydantic import Field, model_validator

from trainframe.config import ComponentConfig

Schedule = Callable[[int], float]


def _warmup(step: int, warmup: int) -> float:
    # Step 0 gets a small non-zero lr: a zero-lr first step is a wasted step.
    return (step + 1) / warmup if step < warmup else 1.0


class ConstantConfig(ComponentConfig):
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup from 0 to 1")


def build_constant(cfg: ConstantConfig, max_steps: int) -> Schedule:
    return lambda step: _warmup(step, cfg.warmup_steps)


class CosineConfig(ComponentConfig):
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup from 0 to 1")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="factor reached at max_steps (a share of optim.lr)")


def build_cosine(cfg: CosineConfig, max_steps: int) -> Schedule:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return _warmup(step, cfg.warmup_steps)
        span = max(1, max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class WSDConfig(ComponentConfig):
    warmup_fraction: float = Field(0.01, ge=0, lt=1, description="share of max_steps spent in linear warmup")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="share of max_steps, at the end, spent decaying")
    decay_shape: Literal["linear", "cosine", "sqrt"] = Field(
        "linear", description="shape of the decay from 1 to min_lr_ratio")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="factor reached on the last step")

    @model_validator(mode="after")
    def _fractions(self):
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError("warmup_fraction + decay_fraction must be at most 1")
        return self


def wsd_phases(cfg: WSDConfig, max_steps: int) -> tuple[int, int]:
    """(warmup steps, first decay step)."""
    warmup = round(cfg.warmup_fraction * max_steps)
    decay_start = max_steps - round(cfg.decay_fraction * max_steps)
    return warmup, max(warmup, decay_start)


def build_wsd(cfg: WSDConfig, max_steps: int) -> Schedule:
    warmup, decay_start = wsd_phases(cfg, max_steps)

    def f(step: int) -> float:
        if step < warmup:
            return _warmup(step, warmup)
        if step < decay_start:
            return 1.0
        # Progress runs to 1 at the last step, so the final step trains at exactly min_lr.
        progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
        if cfg.decay_shape == "linear":
            left = 1 - progress
        elif cfg.decay_shape == "cosine":
            left = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            left = 1 - math.sqrt(progress)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * left

    return f
