"""The plugin API: every hook trainframe calls, one docstring each.

Implement a hook by defining a function of the same name decorated with ``@trainframe.hookimpl``
in a module listed under the ``trainframe`` entry-point group, or on a logger or callback object.
Arguments are passed by name; an implementation may accept any subset of them. ``trainer`` is the
running :class:`trainframe.engine.loop.Trainer`; its attributes (``model``, ``optimizer``,
``config``, ``step``, ``run_dir``, ...) are documented in docs/plugins.md.

A step runs these hooks in order (``step_start`` ... ``step_end``); see trainframe/engine/loop.py.
"""

import pluggy

hookspec = pluggy.HookspecMarker("trainframe")


@hookspec
def trainframe_register(registry):
    """Add components and CLI commands: ``registry.add(kind, name, factory, ConfigModel)`` and
    ``registry.add_command(name, run, add_arguments)``. Called once when the plugin manager starts."""


@hookspec
def trainframe_fit_start(trainer, resumed_from):
    """Training is about to run its first step. ``resumed_from``: the step of the checkpoint a
    ``resume`` continues from (rows a logger wrote after that step are redone: drop or skip them),
    else None."""


@hookspec
def trainframe_fit_end(trainer):
    """Training finished or stopped (max steps, SIGINT/SIGTERM, ``request_stop``, bad-step limit); the
    final checkpoint is saved."""


@hookspec
def trainframe_exception(trainer, exception):
    """An exception escaped the training loop; it is re-raised after every implementation ran."""


@hookspec
def trainframe_step_start(trainer, step, phase):
    """Step ``step`` (0-based, counting steps of every phase) begins; ``phase`` is 'full', 'predict'
    or 'correct' as decided by the phase controller."""


@hookspec
def trainframe_batch_ready(trainer, batch):
    """A micro-batch ``(inputs, targets)``, packed ``(inputs, targets, positions)``, is on the
    device, before its forward pass."""


@hookspec
def trainframe_after_loss(trainer, loss):
    """The loss of a micro-batch is computed (a tensor, before backward and before scaling for
    gradient accumulation)."""


@hookspec
def trainframe_before_optimizer_step(trainer):
    """Gradients are final (accumulated, unscaled, clipped) and may still be edited in place."""


@hookspec
def trainframe_after_optimizer_step(trainer):
    """The optimizer has updated the weights of a full step."""


@hookspec
def trainframe_step_end(trainer, step, metrics):
    """Step ``step`` is done; ``metrics`` (a dict: loss, lr, grad_norm, phase, ...) may be extended
    in place before it is logged."""


@hookspec
def trainframe_phase_change(trainer, step, old, new, reason):
    """The phase controller switched from phase ``old`` to ``new`` for ``reason`` (a short text)."""


@hookspec
def trainframe_eval_end(trainer, step, metrics):
    """Validation finished; ``metrics`` holds ``val_loss`` and ``val_ppl``."""


@hookspec
def trainframe_sample(trainer, step, prompt, text):
    """A text sample was generated from ``prompt``."""


@hookspec
def trainframe_log(trainer, step, metrics, kind):
    """Write ``metrics`` (a flat dict of numbers and strings) for ``step``; ``kind`` is 'train' (a log
    step's row) or 'eval' (a validation's). Loggers implement this."""


@hookspec
def trainframe_save_checkpoint(trainer, state):
    """A checkpoint is being written: add your own entries to ``state`` (a dict of tensors and plain
    Python values; it is loaded with ``weights_only=True``)."""


@hookspec
def trainframe_load_checkpoint(trainer, state):
    """A checkpoint was loaded into model, optimizer, data and controller: read your own entries."""
