"""The training loop.

One call of :meth:`Trainer.fit` runs, with hooks (``trainframe_*``) in this order::

    fit_start -> controller.start
    for each step until trainer.max_steps:
        phase = controller.decide(step)          -> phase_change when it differs from the last (the engine only)
        step_start(step, phase)
        for each micro-batch:                      (grad_accum of them)
            batch_ready(batch)
            forward                                -> after_loss(loss)
            backward                               (full steps only)
        full steps: clip -> before_optimizer_step -> optimizer.step -> after_optimizer_step
                    (a NaN/Inf loss or grad norm skips the update and is counted)
        controller.observe(outcome)               (predict/correct steps move weights here)
        step_end(step, metrics) -> log(step, metrics) every log_every steps
        every eval_every steps: eval -> eval_end, log
        every save_every steps, and save_every_minutes after the last: checkpoint -> save_checkpoint
    final eval, checkpoint and sample              -> sample
    fit_end                                        (exception first, if one escaped)

``step`` in metrics and checkpoints counts completed steps: row ``step: 10`` is after 10 steps.
Every hook's ``step`` is that number too: the 10th step's ``phase_change``, ``step_start`` and
``step_end`` all get ``step=10`` (``controller.decide``, the schedule and ``StepOutcome.step`` take
the 0-based index, ``trainer.step`` before the step: 9).
The loop's counters (step, tokens_seen, best_val, bad_steps, bad_steps_total, backward_passes,
phase) are one object, ``Trainer.loop`` (``engine/state.py``): a checkpoint's ``loop`` entry.
``trainer.step`` and the others read and write it.

SIGINT (Ctrl-C) or SIGTERM: the step finishes, a checkpoint is written, ``fit`` returns
``interrupted`` (``stop_signal`` says which); under data parallelism the ranks agree on it, and
on a checkpoint due by the clock, at the next log step (``flush``).

A component ends a run early with ``trainer.request_stop(reason)``: the same path (the step
finishes, a checkpoint is written), ``fit`` returns ``stopped``, ``trainer.stop_message`` is the
reason, kept in the checkpoint's ``loop`` entry (``stopped``) so that ``resume`` leaves the run
stopped unless ``trainer.max_steps`` is raised. Under data parallelism the ranks agree on it in
``flush``, with the signals.

No host sync in the hot path. What a NaN/Inf step does is one policy, chosen once
(``Trainer.nonfinite``, ``engine/nonfinite.py``): with an optimizer that can skip an update on the
device (fused AdamW, the CUDA default) and a controller that does not read each step's outcome,
``DeviceSkip``: the finite check runs on the device and the loss, grad norm and skip counts are read
back once per log step (``Trainer.flush``). Between log steps ``step_end`` sees the loss and grad
norm as 0-dim device tensors; a run of ``max_bad_steps`` NaN steps is noticed at the next log step.
Otherwise (other optimizers, controllers whose ``wants_host_values`` or ``wants_update_norms`` is
true, FSDP2), ``HostCheck``: they are read back every step.

Eval (``Trainer.evaluate``) is the token-weighted mean loss over the val batches, with its
perplexity and bits per character, computed by ``engine/evaluation.py`` as ``trainframe eval`` does.

A batch is ``(inputs, targets)`` or, from a packed dataset, ``(inputs, targets, positions)``;
``Trainer.forward`` builds a packed batch's document mask outside torch.compile.

Training batches are made in a background thread while the device computes
(``trainframe.engine.prefetch``); checkpoints hold the data position of the batches trained on.
Checkpoint files are ``engine/checkpoint.py``'s; under FSDP2, sharded ones and the model and
optimizer state dicts are ``engine/sharded.py``'s.

Under data parallelism (``trainframe.engine.distributed``) every rank runs this loop on its shard
of the data; the loss is the mean over ranks, loggers and checkpoint writes are on rank 0 only.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from pathlib import Path

import torch

from trainframe.config import RunConfig
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import distributed, evaluation
from trainframe.engine import sharded as sharded_ckpt
from trainframe.engine.distributed import World
from trainframe.engine.nonfinite import DeviceSkip, HostCheck, skips_on_device
from trainframe.engine.prefetch import Prefetcher, pinned
from trainframe.engine.state import LoopState, forwarded
from trainframe.errors import UserError
from trainframe.logging import truncate_metrics
from trainframe.phases import Phase, PhaseController, StepOutcome
from trainframe.protocols import HasCharsPerToken, SupportsFlopsPerToken, SupportsGenerate, SupportsTrainingMemory


class TrainingStopped(Exception):
    """The run stopped itself for a reason that is not a bug (too many NaN steps)."""


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the device, for MFU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("A100", 312e12),
                       ("L40", 181e12), ("4090", 165e12), ("3090", 71e12)):
        if key in name:
            return flops
    return None


class Trainer:
    # The counters live in ``self.loop``; these names are what callbacks and plugins read.
    step, tokens_seen, best_val, bad_steps, bad_steps_total, backward_passes, phase = map(
        forwarded, ("step", "tokens_seen", "best_val", "bad_steps", "bad_steps_total", "backward_passes", "phase"))

    @property
    def defer_sync(self) -> bool:
        """Whether the loop reads each step's values back only at log steps (the ``DeviceSkip`` policy)."""
        return isinstance(self.nonfinite, DeviceSkip)

    def __init__(self, config: RunConfig, plugins, run_dir: Path, *, model, tokenizer, dataset, optimizer,
                 schedule, controller: PhaseController, listeners: list, device: torch.device,
                 world: World | None = None, wrapped_model=None):
        self.config, self.plugins, self.run_dir = config, plugins, Path(run_dir)
        self.hook = plugins.hook
        self.model, self.tokenizer, self.dataset = model, tokenizer, dataset
        self.optimizer, self.schedule, self.controller = optimizer, schedule, controller
        self.listeners, self.device, self.world = listeners, device, world or World()
        t = config.trainer
        self.max_steps = t.max_steps
        precision = t.precision if t.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())
        if device.type == "cuda":  # TF32 for the float32 matmuls that autocast leaves (and fp32 runs)
            torch.backends.cuda.matmul.allow_tf32 = True
        use_compile = t.compile if t.compile is not None else device.type == "cuda"
        set_training_memory(model, t)  # before compile, which traces what it sets
        self.cuda_graphs = use_cuda_graphs(t, use_compile, device, self.world)
        # DDP or FSDP2 around the model when world.size > 1 (see engine/build.py), else the model
        self.wrapped_model = wrapped_model if wrapped_model is not None else model
        self.forward_model = (torch.compile(self.wrapped_model, mode="reduce-overhead" if self.cuda_graphs else None)
                              if use_compile else self.wrapped_model)
        self.sharded = self.world.distributed and t.distributed == "fsdp2"
        # Host values per step only where something needs them each step (see the module docstring).
        # (Not under FSDP2: its sharded parameters and a plain found_inf flag do not mix in the kernel.)
        on_device = (skips_on_device(optimizer) and not controller.wants_update_norms
                     and not controller.wants_host_values and not self.sharded)
        self.nonfinite = DeviceSkip() if on_device else HostCheck()
        self._batches: Prefetcher | None = None  # the training batches while fit() runs
        self.stop_signal: int | None = None  # SIGINT or SIGTERM, once one arrived
        self._last_save = time.monotonic()  # of a step checkpoint, for save_every_minutes
        self._save_agreed = False  # under data parallelism: the ranks agreed a checkpoint is due
        self.params = [p for p in model.parameters() if p.requires_grad]
        for g in optimizer.param_groups:  # set before any checkpoint load: the group keys must match
            g.setdefault("base_lr", g["lr"])
        self.context = model.config.context
        self.flops_per_token = model.flops_per_token() if isinstance(model, SupportsFlopsPerToken) else None
        self.peak_flops = peak_flops(device)
        self.loop = LoopState()
        self.stop_reason: str | None = None
        self.stop_message: str | None = None  # the reason given to request_stop
        self.resumed_from: int | None = None  # the step of the checkpoint resumed from (fit_start's)
        self.resumed_stop: str | None = None  # that checkpoint's stop_message: the run was stopped there
        self._window_start = (time.perf_counter(), 0)  # (time, tokens) where tokens/s is measured from

    # ------------------------------------------------------------------------------------ the fit
    def fit(self, finish: bool = True) -> str:
        """Train to ``max_steps`` (or until stopped). Returns why it ended: done, interrupted, stopped.
        ``finish=False`` leaves out the final eval, checkpoint and sample (the throughput benchmark)."""
        t, loop = self.config.trainer, self.loop
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._attach_listeners()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.hook.trainframe_fit_start(trainer=self, resumed_from=self.resumed_from)
            self.controller.start(self)
            # Started after fit_start, any resume and the controller's start, so it reads ahead from
            # the restored position.
            self._batches = Prefetcher(self.dataset, t.batch_size, depth=2 * t.grad_accum, device=self.device)
            self._window_start = (time.perf_counter(), loop.tokens_seen)
            self._last_save = time.monotonic()
            while loop.step < self.max_steps and self.stop_reason is None:
                self.train_step()
                if t.eval_every and loop.step % t.eval_every == 0 and loop.step < self.max_steps:
                    self.evaluate()
                    self._window_start = (time.perf_counter(), loop.tokens_seen)  # tokens/s counts training only
                if self._checkpoint_due() and loop.step < self.max_steps:
                    self.save()
                    self._window_start = (time.perf_counter(), loop.tokens_seen)
            self.flush()
            if finish:
                if self.stop_reason is None:
                    self.evaluate()
                self.save()
                if self.stop_reason is None:
                    self.sample()
        except BaseException as e:
            self.hook.trainframe_exception(trainer=self, exception=e)
            raise
        finally:
            if self._batches is not None:
                self._batches.close()
                self._batches = None
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.hook.trainframe_fit_end(trainer=self)
            self.detach_listeners()
        if self.stop_reason == "nonfinite":
            raise TrainingStopped(
                f"stopped after {t.max_bad_steps} consecutive steps with a NaN/Inf loss or gradient at step "
                f"{loop.step}; the last good weights are in {ckpt.step_path(self.run_dir / 'checkpoints', loop.step)}"
                " (lower optim.lr or raise trainer.grad_clip)")
        return self.stop_reason or "done"

    def _attach_listeners(self) -> None:
        """Loggers and callbacks receive hooks from here on (also checkpoint loads on resume)."""
        for obj in self.listeners:
            if not self.plugins.manager.is_registered(obj):
                self.plugins.manager.register(obj)

    def detach_listeners(self) -> None:
        """Loggers and callbacks receive no more hooks: when a fit ends, or a resume has nothing to do."""
        for obj in self.listeners:
            if self.plugins.manager.is_registered(obj):
                self.plugins.manager.unregister(obj)

    def _on_signal(self, signum, frame):
        """SIGINT or SIGTERM (kill, docker stop, SLURM, Kubernetes): save after the step, then stop."""
        if self.stop_signal is not None:
            # A second one aborts at once, in one process. Under torchrun a rank often gets the same
            # signal twice (from the terminal or scheduler, and forwarded by torchrun), so it is
            # ignored there; torchrun's --shutdown-timeout ends a rank that takes too long.
            if not self.world.distributed:
                raise KeyboardInterrupt
            return
        self.stop_signal = signum
        # Ranks stop together, at the next log step (flush), so that none waits on a collective alone.
        if not self.world.distributed:
            self.stop_reason = "interrupted"
        when = "the next log step" if self.world.distributed else "this step"
        what = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
        again = "" if self.world.distributed else \
            f" ({'Ctrl-C' if signum == signal.SIGINT else 'the same signal'} again to abort)"
        if self.world.is_main:
            print(f"\ntrainframe: {what}; saving a checkpoint after {when}{again}", file=sys.stderr, flush=True)

    def request_stop(self, reason: str) -> None:
        """End the run after the current step for ``reason`` (one line; printed, and kept in the
        checkpoint so that ``resume`` knows). The way for a callback or logger to stop a run: it
        goes the way a signal does (checkpoint, no final eval or sample), but exits 0. The first
        request wins; under data parallelism the ranks stop together at the next log step (``flush``)."""
        reason = " ".join(str(reason).split())
        if not reason:
            raise ValueError("request_stop: give a reason (a short line, e.g. 'val loss rose 3 evals in a row')")
        if self.stop_message is None:
            self.stop_message = reason
        if not self.world.distributed:
            self.stop_reason = self.stop_reason or "stopped"

    def _checkpoint_due(self) -> bool:
        """A step checkpoint after this step: every ``save_every`` steps, and once ``save_every_minutes``
        passed since the last (one clock read per step, on the host; under data parallelism as the
        ranks agreed at the last log step, so that all save at the same step)."""
        t = self.config.trainer
        if t.save_every and self.loop.step % t.save_every == 0:
            return True
        return self._save_agreed if self.world.distributed else self._minutes_due()

    def _minutes_due(self) -> bool:
        minutes = self.config.trainer.save_every_minutes
        return minutes is not None and time.monotonic() - self._last_save >= 60 * minutes

    # ---------------------------------------------------------------------------------- one step
    def train_step(self) -> None:
        t, loop = self.config.trainer, self.loop
        phase, reason = self.controller.decide(loop.step)
        number = loop.step + 1  # a hook's ``step`` names this step as step_end, logs and checkpoints will
        if loop.phase is not None and phase != loop.phase:
            self.hook.trainframe_phase_change(trainer=self, step=number, old=loop.phase.value, new=phase.value,
                                              reason=reason)
        loop.phase = phase
        lr = self._set_lr(loop.step)
        self.hook.trainframe_step_start(trainer=self, step=number, phase=phase.value)
        batches = [self._to_device(self._next_batch()) for _ in range(t.grad_accum)]
        batches = self.controller.batches_for(phase, batches)

        row_losses = [] if self.controller.wants_row_losses else None  # filled by the forward passes
        if phase == Phase.FULL:
            loss, grad_norm, update_norms = self._full_step(batches, row_losses)
        else:
            with torch.no_grad():
                loss = self.nonfinite.reported(self._losses(batches, backward=False, row_losses=row_losses))
            grad_norm, update_norms = None, {}
        loop.tokens_seen += sum(int(b[0].numel()) for b in batches) * self.world.size  # every rank's
        outcome = StepOutcome(loop.step, phase, loss, lr, grad_norm, update_norms, batches, row_losses or [])
        metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "phase": phase.value}
        metrics.update(self.controller.observe(outcome, self) or {})
        loop.step += 1
        self.hook.trainframe_step_end(trainer=self, step=loop.step, metrics=metrics)
        if loop.step % t.log_every == 0 or loop.step == self.max_steps:
            self.flush()
            self._log_train(metrics)

    def _full_step(self, batches, row_losses: list | None = None) -> tuple[float, float | None, dict]:
        t = self.config.trainer
        loss = self._losses(batches, backward=True, row_losses=row_losses)
        self.loop.backward_passes += len(batches)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip is not None else math.inf)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        loss, grad_norm, update = self.nonfinite.check(self, loss, grad_norm.float())
        update_norms = {}
        if update:  # DeviceSkip: always, the optimizer skips on the device where found_inf is set
            self.hook.trainframe_before_optimizer_step(trainer=self)
            before = self._snapshot() if self.controller.wants_update_norms else None
            self.optimizer.step()
            if before is not None:
                update_norms = self._update_norms(before)
            self.hook.trainframe_after_optimizer_step(trainer=self)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, update_norms

    def _losses(self, batches, backward: bool, row_losses: list | None = None) -> torch.Tensor:
        """The step's loss over its micro-batches, running backward per micro-batch when asked.
        Each micro-batch is weighted by its share of counted targets, so accumulation equals one
        big batch even when padding (-1 targets) is uneven. ``row_losses``: a list to append each
        micro-batch's per-row mean losses to (same forward pass, ``reduction="none"``)."""
        counts = [(b[1] != -1).sum() for b in batches]
        total = torch.stack(counts).sum().clamp(min=1)
        loss_sum = torch.zeros((), device=self.device)
        for i, (batch, n) in enumerate(zip(batches, counts)):
            self.hook.trainframe_batch_ready(trainer=self, batch=batch)
            with self._grad_sync(backward and i == len(batches) - 1):
                if row_losses is None:
                    loss = self.forward(*batch)
                else:  # per-token losses from the same pass: the batch's mean and each row's
                    per_token = self.forward(*batch, reduction="none")
                    loss = per_token.sum() / n.clamp(min=1)
                    row_losses.append(per_token.detach().sum(1) / (batch[1] != -1).sum(1).clamp(min=1))
            self.hook.trainframe_after_loss(trainer=self, loss=loss)
            weighted = loss.float() * (n / total)
            if backward:
                weighted.backward()
            loss_sum += weighted.detach()
        return distributed.mean(loss_sum, self.world)

    def forward(self, x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """The loss of one micro-batch through the (compiled, wrapped) model, under autocast
        (``reduction="none"``: per target, (B, T)). ``positions``: a packed batch; its document
        mask is built here, outside torch.compile."""
        packed = {} if positions is None else {"positions": positions,
                                               "doc_mask": self.model.document_mask(positions)}
        if self.cuda_graphs:  # a new replay: the last one's outputs (loss, gradients) have been used
            torch.compiler.cudagraph_mark_step_begin()
        if reduction != "mean":
            packed["reduction"] = reduction
        with self.autocast:
            return self.forward_model(x, y, **packed)

    def flush(self) -> None:
        """Read back the deferred per-step values (one host sync) and settle the skip counters;
        under data parallelism also agree on a stop signal, a ``request_stop`` and a checkpoint due by
        the clock (any rank's), so every rank stops and saves after the same step."""
        self.nonfinite.flush(self)
        if self.world.distributed:
            flags = torch.tensor([self.stop_signal == signal.SIGINT, self.stop_signal == signal.SIGTERM,
                                  self._minutes_due(), self.stop_message is not None],
                                 dtype=torch.float32, device=self.device)
            sigint, sigterm, save_due, requested = distributed.total(flags, self.world).tolist()
            if sigint or sigterm:
                self.stop_signal = signal.SIGTERM if sigterm else signal.SIGINT
                self.stop_reason = self.stop_reason or "interrupted"
            if requested and self.stop_reason is None:  # stop_reason is the same on every rank here
                self.stop_message = distributed.first_given(self.stop_message, self.world)
                self.stop_reason = "stopped"
            self._save_agreed = save_due > 0

    def _next_batch(self):
        if self._batches is not None:
            return self._batches.next_batch()
        return self.dataset.next_batch(self.config.trainer.batch_size)  # train_step outside fit()

    def _grad_sync(self, sync: bool):
        """Gradients are reduced across ranks on the last micro-batch only (``no_sync`` before)."""
        if not self.world.distributed or sync:
            if self.sharded:
                self.wrapped_model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.sharded:
            self.wrapped_model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.wrapped_model.no_sync()

    def apply_weight_delta(self, deltas, alpha: float = 1.0) -> None:
        """The one way a phase controller changes weights: ``p += alpha * delta`` for each
        ``(parameter, delta)`` pair. Deltas computed from identical state are identical on every
        data-parallel rank, so ranks stay in step."""
        with torch.no_grad():
            for p, d in (deltas.items() if isinstance(deltas, dict) else deltas):
                p.add_(d.to(p.dtype), alpha=alpha)

    def _snapshot(self) -> list[list[torch.Tensor]]:
        return [[p.detach().clone() for p in g["params"]] for g in self.optimizer.param_groups]

    def _update_norms(self, before) -> dict[str, float]:
        norms = {}
        for i, (g, old) in enumerate(zip(self.optimizer.param_groups, before)):
            sq = sum(((p.detach() - o).float().pow(2).sum() for p, o in zip(g["params"], old)),
                     torch.zeros((), device=self.device))
            norms[g.get("name", str(i))] = sq.sqrt().item()
        return norms

    def _set_lr(self, step: int) -> float:
        factor = self.schedule(step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def _to_device(self, batch):
        """(inputs, targets) or, packed, (inputs, targets, positions) on the device."""
        if self.device.type == "cuda":  # a prefetched batch is pinned already (pinning it again is free)
            return tuple(t.to(self.device, non_blocking=True) for t in pinned(batch))
        return tuple(t.to(self.device) for t in batch)

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation per device at ``tokens_per_s`` over all ranks (None: peak unknown)."""
        if not (self.peak_flops and self.flops_per_token):
            return None
        return tokens_per_s / self.world.size * self.flops_per_token / self.peak_flops

    def peak_mem_gb(self) -> float:
        """Peak CUDA memory since the last reset of the peak, GB: of tensors, or under CUDA graphs of
        the allocator's reservation, since the graphs' tensors live in a pool reserved once at capture."""
        peak = torch.cuda.max_memory_reserved if self.cuda_graphs else torch.cuda.max_memory_allocated
        return peak(self.device) / 1e9

    def _log_train(self, metrics: dict) -> None:
        """A log step's row; the loss and grad norm as floats (device tensors under ``DeviceSkip``)."""
        loop, now = self.loop, time.perf_counter()
        t0, tok0 = self._window_start
        tokens_per_s = (loop.tokens_seen - tok0) / max(now - t0, 1e-9)
        self._window_start = (now, loop.tokens_seen)
        floats = {k: float(metrics[k]) for k in ("loss", "grad_norm") if isinstance(metrics[k], torch.Tensor)}
        row = {**metrics, **floats, "tokens": loop.tokens_seen, "tokens_per_s": tokens_per_s,
               "backward_passes": loop.backward_passes, "skipped_steps": loop.bad_steps_total}
        mfu = self.mfu(tokens_per_s)
        if mfu is not None:
            row["mfu"] = mfu
        if self.device.type == "cuda":
            row["peak_mem_gb"] = self.peak_mem_gb()
        self.hook.trainframe_log(trainer=self, step=loop.step, metrics=row, kind="train")

    # ----------------------------------------------------------------------------- eval, sample
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        t = self.config.trainer
        self.flush()
        self.model.eval()
        batches = list(self.dataset.val_batches(t.batch_size, t.eval_batches))
        if self.world.distributed:  # the same number of batches on every rank (FSDP2 gathers per forward)
            n_batches = torch.tensor([len(batches)], device=self.device)
            torch.distributed.all_reduce(n_batches, op=torch.distributed.ReduceOp.MIN)
            batches = batches[: int(n_batches.item())]
        loss_sum, count = distributed.total(self.loss_sums(batches), self.world).tolist()
        self.model.train()
        if count == 0:
            return None
        scores = evaluation.scores(loss_sum / count,
                                   self.dataset.chars_per_token if isinstance(self.dataset, HasCharsPerToken) else None)
        metrics = {f"val_{k}": v for k, v in scores.items()}  # val_loss, val_ppl, val_bpc
        self.hook.trainframe_eval_end(trainer=self, step=self.loop.step, metrics=metrics)
        self.hook.trainframe_log(trainer=self, step=self.loop.step, metrics=dict(metrics), kind="eval")
        if metrics["val_loss"] < self.loop.best_val:
            self.loop.best_val = metrics["val_loss"]
            self.save(self.run_dir / "checkpoints" / "best.pt")
        return metrics

    def loss_sums(self, batches) -> torch.Tensor:
        """(loss x counted targets, counted targets) over ``batches``, this rank's, on the device
        (no host sync: the caller reads it back once)."""
        return evaluation.loss_sums(self.forward, map(self._to_device, batches), self.device)

    @torch.no_grad()
    def sample(self) -> str | None:
        t = self.config.trainer
        if not t.sample_tokens or not isinstance(self.model, SupportsGenerate):
            return None
        if not (self.world.is_main or self.sharded):
            return None
        try:
            prompt_ids = self.tokenizer.encode(t.sample_prompt) or [getattr(self.tokenizer, "eos_id", 0)]
        except ValueError:  # a structured tokenizer (e.g. schema) cannot encode a free-text prompt
            return None
        idx = torch.tensor([prompt_ids], device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.model.eval()
        if self.sharded:  # generate() bypasses the root's forward, which gathers the root's own weights
            self.model.unshard()
        try:
            out = self.model.generate(idx, t.sample_tokens, temperature=t.sample_temperature, top_k=t.sample_top_k,
                                      eos_id=getattr(self.tokenizer, "eos_id", None), generator=gen)
        finally:
            if self.sharded:
                self.model.reshard()
        self.model.train()
        text = self.tokenizer.decode(out[0, len(prompt_ids):].tolist())
        if not isinstance(text, str) or not self.world.is_main:  # structured decodes sample elsewhere
            return None
        with open(self.run_dir / "samples.txt", "a") as f:
            f.write(f"--- step {self.loop.step}, prompt {t.sample_prompt!r}\n{t.sample_prompt}{text}\n")
        self.hook.trainframe_sample(trainer=self, step=self.loop.step, prompt=t.sample_prompt, text=text)
        return text

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self, sharded: bool = False) -> dict:
        """The whole run state. Under FSDP2 every rank must call this (it gathers the shards), unless
        ``sharded``: then model and optimizer are this rank's shards (DTensors, as
        torch.distributed.checkpoint writes them) and the rest is this rank's own (no collective)."""
        if self.sharded:
            model_state, optim_state = sharded_ckpt.model_optimizer_state(self.model, self.optimizer, full=not sharded)
        else:
            model_state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        rng = ckpt.rng_state()
        extra = {}
        if self.world.distributed and not sharded:  # each rank's own streams (dropout masks differ per rank)
            # all_gather, not gather: gather_object to rank 0 aborted a gloo rank now and then (1 run in 4).
            rng_ranks = [None] * self.world.size
            torch.distributed.all_gather_object(rng_ranks, rng)
            extra = {"rng_ranks": rng_ranks}
        return {
            "model": model_state,
            "optimizer": optim_state,
            # "stopped": request_stop's reason, only in the checkpoints of a stopped run (resume reads it)
            "loop": {**self.loop.state_dict(), "max_steps": self.max_steps, "world_size": self.world.size,
                     **({"stopped": self.stop_message} if self.stop_reason == "stopped" else {})},
            "data": self._batches.state_dict() if self._batches is not None else self.dataset.state_dict(),
            "rng": rng,  # rank 0's: the single-process format, and what checkpoints without rng_ranks hold
            **extra,
            "controller": self.controller.state_dict(),
            "config": self.config.to_yaml(),
        }

    def save(self, path: Path | None = None) -> Path:
        """Write a checkpoint (rank 0): by default the step checkpoint, pruning old ones. Under FSDP2
        every rank writes its own shard into a checkpoint directory (``engine/sharded.py``), in the
        background during ``fit`` except for the last save of the fit."""
        self.flush()
        if self.sharded:
            return self._save_sharded(path)
        state = self.state_dict()
        self.hook.trainframe_save_checkpoint(trainer=self, state=state)
        ckpt_dir = self.run_dir / "checkpoints"
        target = path or ckpt.step_path(ckpt_dir, self.loop.step)
        if self.world.is_main:
            ckpt.save_atomic(state, target)
            if path is None:
                ckpt.prune(ckpt_dir, self.config.trainer.keep_last)
        distributed.barrier(self.world)  # no rank runs ahead of a checkpoint it might resume from
        if path is None:
            self._last_save, self._save_agreed = time.monotonic(), False
        return target

    def _save_sharded(self, path: Path | None) -> Path:
        state = self.state_dict(sharded=True)
        self.hook.trainframe_save_checkpoint(trainer=self, state=state)
        shards = {key: state.pop(key) for key in ("model", "optimizer")}
        ckpt_dir = self.run_dir / "checkpoints"
        target = ckpt.sharded_path(path) if path else ckpt.step_path(ckpt_dir, self.loop.step, sharded=True)
        # In the background while training goes on; the fit's last save (and one outside fit) completes here.
        last = self._batches is None or self.loop.step >= self.max_steps or self.stop_reason is not None
        if "_dcp_writer" not in self.__dict__:
            self._dcp_writer = sharded_ckpt.Writer(self.world)
        self._dcp_writer.save(shards, {**state, "format": sharded_ckpt.FORMAT}, target,
                              keep_last=None if path else self.config.trainer.keep_last, wait=last)
        distributed.barrier(self.world)
        if path is None:
            self._last_save, self._save_agreed = time.monotonic(), False
        return target

    def load_state_dict(self, state: dict, path: Path | None = None) -> None:
        """``state``: a checkpoint's; of a sharded one, its metadata, with ``path`` its directory
        (every rank then reads its own shards from there)."""
        loop = state["loop"]
        saved_world = loop.get("world_size", 1)
        if saved_world != self.world.size:
            raise UserError(f"checkpoint at step {loop['step']} was written by {saved_world} process(es); "
                            f"resume it with the same number (this run has {self.world.size})")
        if state.get("format") == sharded_ckpt.FORMAT:
            if not self.sharded or path is None:
                raise UserError(f"checkpoint at step {loop['step']} is sharded (trainer.distributed=fsdp2); resume "
                                "it with trainer.distributed=fsdp2, or read it with eval or export")
            sharded_ckpt.load_into(path, self.model, self.optimizer, loop["step"])
        elif self.sharded:
            sharded_ckpt.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            ckpt.load_into(self.model, self.optimizer, state)
        self.loop.load_state_dict(loop)
        self.dataset.load_state_dict(state["data"])
        self.controller.load_state_dict(state["controller"])
        # Rank r gets rank r's states back. Its CUDA entry holds every visible device's state as rank r
        # saw it, so its own device (the only one it draws from) gets its own stream.
        rng_ranks = state.get("rng_ranks")
        ckpt.set_rng_state(rng_ranks[self.world.rank] if rng_ranks else state["rng"])
        self.hook.trainframe_load_checkpoint(trainer=self, state=state)

    def resume(self) -> tuple[Path, int]:
        """Load the newest good checkpoint of this run. Returns (its path, the max_steps it had)."""
        # On the CPU first: RNG states must stay CPU tensors; model and optimizer loads move the rest.
        loader = None
        if self.sharded:  # a sharded checkpoint: this rank's metadata now, its shards in load_state_dict
            sharded_ckpt.drain()  # a save of this process still being written

            def loader(p: Path) -> dict:
                return sharded_ckpt.read_meta(p, self.world.rank) if p.is_dir() else ckpt.load(p)
        path, state = ckpt.load_latest_good(self.run_dir / "checkpoints", loader=loader)
        self._attach_listeners()
        self.load_state_dict(state, path)
        self.resumed_from, self.resumed_stop = self.loop.step, state["loop"].get("stopped")
        if self.world.is_main:
            truncate_metrics(self.run_dir, self.loop.step)
        return path, state["loop"]["max_steps"]


def set_training_memory(model, t) -> None:
    """``trainer.activation_checkpointing`` and ``trainer.loss_chunk`` reach the model through its
    ``set_training_memory(activation_checkpointing=, loss_chunk=)`` (the built-in GPT has it); a model
    plugin without it runs with the defaults only."""
    if t.activation_checkpointing == "none" and t.loss_chunk is None:
        if isinstance(model, SupportsTrainingMemory):
            model.set_training_memory(activation_checkpointing="none", loss_chunk=None)
        return
    if not isinstance(model, SupportsTrainingMemory):
        which = "trainer.activation_checkpointing" if t.activation_checkpointing != "none" else "trainer.loss_chunk"
        raise UserError(f"{which}: the model ({type(model).__name__}) has no set_training_memory method, so it "
                        "cannot recompute blocks or chunk its loss; leave the option at its default")
    model.set_training_memory(activation_checkpointing=t.activation_checkpointing, loss_chunk=t.loss_chunk)


def use_cuda_graphs(t, use_compile: bool, device: torch.device, world: World) -> bool:
    """``trainer.cuda_graphs``: ``auto`` replays where replay is correct, ``true`` there or one clear
    error. Correct: the graphs' outputs, gradients included, live in memory that the next replay
    overwrites, so a second micro-batch's backward would overwrite the first's gradients instead of
    adding to them; DDP's all-reduce hooks run outside the graphs."""
    if t.cuda_graphs is False:
        return False
    if device.type != "cuda" or not use_compile:
        problem = (f"trainer.cuda_graphs needs a CUDA device and trainer.compile on (this run: {device.type}, "
                   f"compile {'on' if use_compile else 'off'}); set trainer.cuda_graphs=false")
    elif t.grad_accum != 1:
        problem = (f"trainer.cuda_graphs needs trainer.grad_accum=1 (got {t.grad_accum}): raise "
                   "trainer.batch_size instead, or set trainer.cuda_graphs=false")
    elif world.distributed:
        problem = "trainer.cuda_graphs runs in one process only; set trainer.cuda_graphs=false under torchrun"
    elif t.activation_checkpointing != "none" or t.loss_chunk is not None:
        # Untested together, and CUDA graph trees and checkpointed recomputation have known conflicts
        # (pytorch/pytorch#154306); the chunked loss runs outside the compiled graphs anyway. Graphs pay
        # for small models bound by kernel launches, these options for models short of memory.
        which = "trainer.activation_checkpointing" if t.activation_checkpointing != "none" else "trainer.loss_chunk"
        problem = (f"trainer.cuda_graphs does not combine with {which} (graphs pay for small models, {which} "
                   "for large ones short of memory); set trainer.cuda_graphs=false or auto, or leave out " + which)
    else:
        return True
    if t.cuda_graphs == "auto":
        return False
    raise UserError(problem)


def check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: run directory is not writable ({e.strerror})") from None
