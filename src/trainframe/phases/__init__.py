"""Phase controllers decide, step by step, what kind of step the engine runs.

- ``full``: forward, backward, clip, optimizer step.
- ``forward``: forward only, nothing updated: a step that only measures (the loss on this step's
  batch, row losses) and leaves the weights alone.
- ``predict``: forward only; the controller moves the weights itself (a predicted delta).
- ``correct``: forward only; the controller applies a correction.

Every step kind but ``full`` runs the same forward-only pass; the kinds differ in what the logs
and ``bench`` count them as.

A controller sees each step's outcome through :class:`StepOutcome`, reads anything else from the
trainer (``trainer.optimizer.state`` for moments, ``trainer.optimizer.param_groups`` for groups
and their names and lrs), and changes weights only through ``trainer.apply_weight_delta`` so that
every data-parallel rank applies the same change. Only the engine fires ``trainframe_phase_change``,
when the phase ``decide`` returns differs from the previous step's (with ``decide``'s reason); the
console prints each one unless the controller sets ``quiet = True`` (routine switches, e.g. a
forward step every k steps; the hook still fires and every metrics row carries its ``phase``).

What a controller asks of the engine is declared, so the engine keeps its fast path otherwise:
``wants_host_values`` (each step's loss and grad norm as Python floats: a host sync per step; by
default, whether ``observe`` is overridden), ``wants_update_norms`` (a weight copy per step),
``wants_row_losses`` (each row's mean loss, from the same forward pass). ``start`` runs once
when ``fit`` starts, before the first batch is read ahead (after a resume has loaded the state):
the place to draw batches of its own from ``trainer.dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from trainframe.config import ComponentConfig


class Phase(str, Enum):
    FULL = "full"
    FORWARD = "forward"
    PREDICT = "predict"
    CORRECT = "correct"


@dataclass
class StepOutcome:
    step: int
    phase: Phase
    loss: float
    lr: float
    grad_norm: float | None = None  # full steps only
    # Per parameter-group norm of the weight change the optimizer made (full steps only), filled
    # when the controller sets ``wants_update_norms``: it costs a copy of the weights per step.
    update_norms: dict[str, float] = field(default_factory=dict)
    batches: list = field(default_factory=list)  # the step's micro-batches, on the device
    # Per micro-batch, each row's mean loss over its counted targets, (B,) on the device, filled
    # when the controller sets ``wants_row_losses``.
    row_losses: list = field(default_factory=list)


class PhaseController:
    """Base class and protocol. Subclasses override what they need."""

    wants_update_norms = False
    wants_row_losses = False
    # ``bench target`` warms compile up with this controller (its batch shapes, its forward calls)
    # and then restores its state_dict; False: with a plain full-step controller instead.
    warms_up_itself = False
    quiet = False  # True: the console does not print this controller's phase changes

    @property
    def wants_host_values(self) -> bool:
        """Whether ``observe`` reads ``outcome.loss``/``grad_norm`` as floats every step. If not, the
        engine hands them over as 0-dim device tensors and reads them back at log steps only."""
        return type(self).observe is not PhaseController.observe

    def start(self, trainer) -> None:
        """Once per ``fit``, before any step (and after a resume loaded the state)."""

    def decide(self, step: int) -> tuple[Phase, str]:
        """The phase of ``step`` and a short reason (logged when the phase changes)."""
        return Phase.FULL, "full training"

    def batches_for(self, phase: Phase, batches: list) -> list:
        """The micro-batches a step of ``phase`` runs on; a controller may substitute held ones."""
        return batches

    def observe(self, outcome: StepOutcome, trainer) -> dict:
        """Called after every step; may call ``trainer.apply_weight_delta``. Returns extra metrics."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FullConfig(ComponentConfig):
    pass


class FullController(PhaseController):
    """Every step is a full step: the default."""


def build_full(cfg: FullConfig) -> PhaseController:
    return FullController()
