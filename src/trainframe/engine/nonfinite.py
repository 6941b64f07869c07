"""What a full step with a NaN/Inf loss or grad norm does: its update is skipped and counted, and
``trainer.max_bad_steps`` of them in a row stop the run. One policy per run, chosen by the trainer:

- :class:`DeviceSkip`: the check runs on the device and the optimizer skips the update there
  (``optimizer.found_inf``); the step's loss, grad norm and skip flag stay on the device until the
  next log step (``flush``), so no step waits for the host.
- :class:`HostCheck`: the loss and grad norm are read back every step (one host sync) and the
  update is skipped on the host.
"""

from __future__ import annotations

import math
import sys

import torch


def skips_on_device(optimizer) -> bool:
    """Whether the optimizer skips a step whose ``found_inf`` flag (a 0-dim device tensor) is set,
    without a host sync: fused Adam/AdamW, an optimizer that says so (``skips_on_device = True``,
    e.g. ``StackedMuon``), or a combined optimizer all of whose members do."""
    members = getattr(optimizer, "optimizers", None)
    if members is not None:
        return all(skips_on_device(m) for m in members)
    if getattr(optimizer, "skips_on_device", False) is True:
        return True
    return isinstance(optimizer, torch.optim.Adam) and bool(optimizer.defaults.get("fused"))


def settle(trainer, step: int, skipped: bool) -> None:
    """Count step ``step`` (1-based) as skipped, or end a run of skipped ones."""
    loop = trainer.loop
    if not skipped:
        loop.bad_steps = 0
        return
    loop.bad_steps += 1
    loop.bad_steps_total += 1
    if trainer.world.is_main:
        print(f"trainframe: step {step}: non-finite loss or gradient, update skipped "
              f"({loop.bad_steps} in a row)", file=sys.stderr, flush=True)
    if loop.bad_steps >= trainer.config.trainer.max_bad_steps:
        trainer.stop_reason = "nonfinite"


class HostCheck:
    def check(self, trainer, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[float, float, bool]:
        """(loss, grad norm, whether to update) of a full step, before its optimizer step."""
        # One host sync per step, for the loss, the grad norm and the finite check together.
        loss_value, norm_value = torch.stack([loss, grad_norm]).tolist()
        finite = math.isfinite(loss_value) and math.isfinite(norm_value)
        settle(trainer, trainer.loop.step + 1, not finite)
        return loss_value, norm_value, finite

    def reported(self, loss: torch.Tensor) -> float:
        """A forward-only step's loss as the step reports it."""
        return loss.item()

    def flush(self, trainer) -> None:
        pass


class DeviceSkip:
    def __init__(self):
        self.pending: list[torch.Tensor] = []  # per step since the last flush: (loss, grad norm, skipped)

    def check(self, trainer, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        skipped = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        trainer.optimizer.found_inf = skipped  # the fused kernel leaves weights and moments as they are
        self.pending.append(torch.stack([loss, grad_norm, skipped]))
        return loss, grad_norm, True

    def reported(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def flush(self, trainer) -> None:
        """Read back the steps' values (one host sync) and settle their skip counts."""
        if not self.pending:
            return
        rows = torch.stack(self.pending).tolist()
        self.pending = []
        first = trainer.loop.step - len(rows) + 1
        for i, (_, _, skipped) in enumerate(rows):
            settle(trainer, first + i, bool(skipped))
