"""The plugin API: every hook trainframe calls, one docstring each.

Implement a hook by defining a function of the same name decorated with ``@trainframe.hookimpl``
in a module listed under the ``trainframe`` entry-point group, or on a logger or callback object.
Arguments are passed by name; an implementation may accept any subset of them. ``trainer`` is the
running :class:`trainframe.engine.loop.Trainer`; its attributes (``model``, ``optimizer``,
``config``, ``step``, ``run_dir``, ...) are documented in docs/plugins.md.

A step runs these hooks in order (``step_start`` ... ``step_end``); see trainframe/engine/loop.py.

``step`` means one thing in every hook: a step's number counted from 1, which is the number of
completed steps once that step is done, the ``step`` column of metrics.jsonl and the number in
checkpoint names. The first step's ``phase_change``, ``step_start`` and ``step_end`` all get
``step=1``; during ``step_start``, ``trainer.step`` is still the count before it (``step - 1``).

The annotations are for readers and type checkers (``trainframe.protocols`` types the components).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from trainframe.engine.loop import Trainer
    from trainframe.registry import Registry

hookspec = pluggy.HookspecMarker("trainframe")


@hookspec
def trainframe_register(registry: Registry) -> None:
    """Add components and CLI commands: ``registry.add(kind, name, factory, ConfigModel)`` and
    ``registry.add_command(name, run, add_arguments)``. Called once when the plugin manager starts."""


@hookspec
def trainframe_fit_start(trainer: Trainer, resumed_from: int | None) -> None:
    """Training is about to run its first step. ``resumed_from``: the step of the checkpoint a
    ``resume`` continues from (rows a logger wrote after that step are redone: drop or skip them),
    else None."""


@hookspec
def trainframe_fit_end(trainer: Trainer) -> None:
    """Training finished or stopped (max steps, SIGINT/SIGTERM, ``request_stop``, bad-step limit); the
    final checkpoint is saved."""


@hookspec
def trainframe_exception(trainer: Trainer, exception: BaseException) -> None:
    """An exception escaped the training loop; it is re-raised after every implementation ran."""


@hookspec
def trainframe_step_start(trainer: Trainer, step: int, phase: str) -> None:
    """Step ``step`` (counted from 1 over steps of every phase: the number its ``step_end`` gets)
    begins; ``phase`` is the step kind the phase controller decided ('full', 'predict', ...)."""


@hookspec
def trainframe_batch_ready(trainer: Trainer, batch: tuple[torch.Tensor, ...]) -> None:
    """A micro-batch ``(inputs, targets)``, packed ``(inputs, targets, positions)``, is on the
    device, before its forward pass."""


@hookspec
def trainframe_after_loss(trainer: Trainer, loss: torch.Tensor) -> None:
    """The loss of a micro-batch is computed (a tensor, before backward and before scaling for
    gradient accumulation)."""


@hookspec
def trainframe_before_optimizer_step(trainer: Trainer) -> None:
    """Gradients are final (accumulated, unscaled, clipped) and may still be edited in place."""


@hookspec
def trainframe_after_optimizer_step(trainer: Trainer) -> None:
    """The optimizer has updated the weights of a full step."""


@hookspec
def trainframe_step_end(trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
    """Step ``step`` is done (``trainer.step`` is now ``step``); ``metrics`` (a dict: loss, lr,
    grad_norm, phase, ...) may be extended in place before it is logged."""


@hookspec
def trainframe_phase_change(trainer: Trainer, step: int, old: str, new: str, reason: str) -> None:
    """Step ``step`` starts phase ``new`` after ``old``, for ``reason`` (a short text). Only the
    engine fires it, before that step's ``step_start``."""


@hookspec
def trainframe_eval_end(trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
    """Validation finished; ``metrics`` holds ``val_loss`` and ``val_ppl``."""


@hookspec
def trainframe_sample(trainer: Trainer, step: int, prompt: str, text: str) -> None:
    """A text sample was generated from ``prompt``."""


@hookspec
def trainframe_log(trainer: Trainer, step: int, metrics: dict[str, Any], kind: str) -> None:
    """Write ``metrics`` (a flat dict of numbers and strings) for ``step``; ``kind`` is 'train' (a log
    step's row) or 'eval' (a validation's). Loggers implement this."""


@hookspec
def trainframe_save_checkpoint(trainer: Trainer, state: dict[str, Any]) -> None:
    """A checkpoint is being written: add your own entries to ``state`` (a dict of tensors and plain
    Python values; it is loaded with ``weights_only=True``)."""


@hookspec
def trainframe_load_checkpoint(trainer: Trainer, state: dict[str, Any]) -> None:
    """A checkpoint was loaded into model, optimizer, data and controller: read your own entries."""
