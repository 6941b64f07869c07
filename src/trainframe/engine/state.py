"""The training loop's counters, one object: what a checkpoint's ``loop`` entry holds and a resume
puts back (beside them there: ``max_steps`` and ``world_size``, which the trainer adds)."""

from __future__ import annotations

import dataclasses
import math

from trainframe.phases import Phase


@dataclasses.dataclass
class LoopState:
    step: int = 0  # completed steps: metrics row ``step: 10`` is after 10 steps
    tokens_seen: int = 0  # every rank's
    best_val: float = math.inf  # lowest val loss so far (best.pt)
    bad_steps: int = 0  # consecutive steps with a NaN/Inf loss or grad norm
    bad_steps_total: int = 0
    backward_passes: int = 0
    phase: Phase | None = None  # the last step's

    def state_dict(self) -> dict:
        return {**dataclasses.asdict(self), "phase": self.phase.value if self.phase else None}

    def load_state_dict(self, loop: dict) -> None:
        """From a checkpoint's ``loop`` entry (its other keys are the trainer's)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, loop[f.name])
        self.phase = Phase(loop["phase"]) if loop["phase"] else None


def forwarded(name: str) -> property:
    """``trainer.<name>`` reading and writing ``trainer.loop.<name>``: what callbacks and plugins read."""
    return property(lambda trainer: getattr(trainer.loop, name),
                    lambda trainer, value: setattr(trainer.loop, name, value))
