"""The training loop.

One call of :meth:`Trainer.fit` runs, with hooks (``trainframe_*``) in this order::

    fit_start
    for each step until trainer.max_steps:
        phase = controller.decide(step)          -> phase_change when it differs from the last
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
        every save_every steps: checkpoint        -> save_checkpoint
    final eval, checkpoint and sample              -> sample
    fit_end                                        (exception first, if one escaped)

``step`` in metrics and checkpoints counts completed steps: row ``step: 10`` is after 10 steps.
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
from trainframe.errors import UserError
from trainframe.logging import truncate_metrics
from trainframe.phases import Phase, PhaseController, StepOutcome


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
    def __init__(self, config: RunConfig, plugins, run_dir: Path, *, model, tokenizer, dataset, optimizer,
                 schedule, controller: PhaseController, listeners: list, device: torch.device):
        self.config, self.plugins, self.run_dir = config, plugins, Path(run_dir)
        self.hook = plugins.hook
        self.model, self.tokenizer, self.dataset = model, tokenizer, dataset
        self.optimizer, self.schedule, self.controller = optimizer, schedule, controller
        self.listeners, self.device = listeners, device
        t = config.trainer
        self.max_steps = t.max_steps
        precision = t.precision if t.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())
        use_compile = t.compile if t.compile is not None else device.type == "cuda"
        self.forward_model = torch.compile(model) if use_compile else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.context = model.config.context
        self.flops_per_token = model.flops_per_token() if hasattr(model, "flops_per_token") else None
        self.peak_flops = peak_flops(device)
        self.step = 0
        self.tokens_seen = 0
        self.bad_steps = 0  # consecutive
        self.bad_steps_total = 0
        self.best_val = math.inf
        self.phase: Phase | None = None
        self.stop_reason: str | None = None
        self.backward_passes = 0
        self._window_start = (time.perf_counter(), 0)  # (time, tokens) where tokens/s is measured from

    # ------------------------------------------------------------------------------------ the fit
    def fit(self) -> str:
        """Train to ``max_steps`` (or until stopped). Returns why it ended: done, interrupted."""
        t = self.config.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._attach_listeners()
        previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self.hook.trainframe_fit_start(trainer=self)
            self._window_start = (time.perf_counter(), self.tokens_seen)
            while self.step < self.max_steps and self.stop_reason is None:
                self.train_step()
                if t.eval_every and self.step % t.eval_every == 0 and self.step < self.max_steps:
                    self.evaluate()
                    self._window_start = (time.perf_counter(), self.tokens_seen)  # tokens/s counts training only
                if t.save_every and self.step % t.save_every == 0 and self.step < self.max_steps:
                    self.save()
                    self._window_start = (time.perf_counter(), self.tokens_seen)
            if self.stop_reason is None:
                self.evaluate()
            self.save()
            if self.stop_reason is None:
                self.sample()
        except BaseException as e:
            self.hook.trainframe_exception(trainer=self, exception=e)
            raise
        finally:
            signal.signal(signal.SIGINT, previous_sigint)
            self.hook.trainframe_fit_end(trainer=self)
            for obj in self.listeners:
                self.plugins.manager.unregister(obj)
        if self.stop_reason == "nonfinite":
            raise TrainingStopped(
                f"stopped after {t.max_bad_steps} consecutive steps with a NaN/Inf loss or gradient at step "
                f"{self.step}; the last good weights are in {ckpt.step_path(self.run_dir / 'checkpoints', self.step)}"
                " (lower optim.lr or raise trainer.grad_clip)")
        return self.stop_reason or "done"

    def _attach_listeners(self) -> None:
        """Loggers and callbacks receive hooks from here on (also checkpoint loads on resume)."""
        for obj in self.listeners:
            if not self.plugins.manager.is_registered(obj):
                self.plugins.manager.register(obj)

    def _on_sigint(self, signum, frame):
        if self.stop_reason == "interrupted":  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_reason = "interrupted"
        print("\ntrainframe: interrupted; saving a checkpoint after this step (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    # ---------------------------------------------------------------------------------- one step
    def train_step(self) -> None:
        t = self.config.trainer
        step = self.step
        phase, reason = self.controller.decide(step)
        if self.phase is not None and phase != self.phase:
            self.hook.trainframe_phase_change(trainer=self, step=step, old=self.phase.value, new=phase.value,
                                              reason=reason)
        self.phase = phase
        lr = self._set_lr(step)
        self.hook.trainframe_step_start(trainer=self, step=step, phase=phase.value)
        batches = [self._to_device(self.dataset.next_batch(t.batch_size)) for _ in range(t.grad_accum)]
        batches = self.controller.batches_for(phase, batches)

        if phase == Phase.FULL:
            loss, grad_norm, update_norms = self._full_step(batches)
        else:
            loss, grad_norm, update_norms = self._forward_only(batches), None, {}
        tokens = sum(int(x.numel()) for x, _ in batches)
        self.tokens_seen += tokens
        outcome = StepOutcome(step, phase, loss, lr, grad_norm, update_norms, batches)
        metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "phase": phase.value}
        metrics.update(self.controller.observe(outcome, self) or {})
        self.step += 1
        self.hook.trainframe_step_end(trainer=self, step=self.step, metrics=metrics)
        if self.step % t.log_every == 0 or self.step == self.max_steps:
            self._log_train(metrics)

    def _losses(self, batches, backward: bool) -> torch.Tensor:
        """The step's loss over its micro-batches, running backward per micro-batch when asked.
        Each micro-batch is weighted by its share of counted targets, so accumulation equals one
        big batch even when padding (-1 targets) is uneven."""
        counts = [(y != -1).sum() for _, y in batches]
        total = torch.stack(counts).sum().clamp(min=1)
        loss_sum = torch.zeros((), device=self.device)
        for (x, y), n in zip(batches, counts):
            self.hook.trainframe_batch_ready(trainer=self, batch=(x, y))
            with self.autocast:
                loss = self.forward_model(x, y)
            self.hook.trainframe_after_loss(trainer=self, loss=loss)
            weighted = loss.float() * (n / total)
            if backward:
                weighted.backward()
            loss_sum += weighted.detach()
        return loss_sum

    def _full_step(self, batches) -> tuple[float, float | None, dict]:
        t = self.config.trainer
        loss_sum = self._losses(batches, backward=True)
        self.backward_passes += len(batches)
        clip = t.grad_clip if t.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        # One host sync per step, for the loss, the grad norm and the finite check together.
        loss_value, norm_value = torch.stack([loss_sum, grad_norm.float()]).tolist()
        update_norms = {}
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            self.bad_steps = 0
            self.hook.trainframe_before_optimizer_step(trainer=self)
            before = self._snapshot() if self.controller.wants_update_norms else None
            self.optimizer.step()
            if before is not None:
                update_norms = self._update_norms(before)
            self.hook.trainframe_after_optimizer_step(trainer=self)
        else:
            self.bad_steps += 1
            self.bad_steps_total += 1
            print(f"trainframe: step {self.step + 1}: non-finite loss or gradient, update skipped "
                  f"({self.bad_steps} in a row)", file=sys.stderr, flush=True)
            if self.bad_steps >= t.max_bad_steps:
                self.stop_reason = "nonfinite"
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, update_norms

    @torch.no_grad()
    def _forward_only(self, batches) -> float:
        return self._losses(batches, backward=False).item()

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
            g.setdefault("base_lr", g["lr"])
            g["lr"] = g["base_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def _to_device(self, batch):
        x, y = batch
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def _log_train(self, metrics: dict) -> None:
        now = time.perf_counter()
        t0, tok0 = self._window_start
        tokens_per_s = (self.tokens_seen - tok0) / max(now - t0, 1e-9)
        self._window_start = (now, self.tokens_seen)
        row = {**metrics, "tokens": self.tokens_seen, "tokens_per_s": tokens_per_s,
               "backward_passes": self.backward_passes, "skipped_steps": self.bad_steps_total}
        if self.peak_flops and self.flops_per_token:
            row["mfu"] = tokens_per_s * self.flops_per_token / self.peak_flops
        self.hook.trainframe_log(trainer=self, step=self.step, metrics=row)

    # ----------------------------------------------------------------------------- eval, sample
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        t = self.config.trainer
        self.model.eval()
        loss_sum, count = 0.0, 0
        for batch in self.dataset.val_batches(t.batch_size, t.eval_batches):
            x, y = self._to_device(batch)
            with self.autocast:
                loss = self.forward_model(x, y)
            n = int((y != -1).sum())
            loss_sum += float(loss) * n
            count += n
        self.model.train()
        if count == 0:
            return None
        val_loss = loss_sum / count
        metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
        chars_per_token = getattr(self.dataset, "chars_per_token", None)
        if chars_per_token:  # bits per character: comparable across tokenizers
            metrics["val_bpc"] = val_loss / math.log(2) / chars_per_token
        self.hook.trainframe_eval_end(trainer=self, step=self.step, metrics=metrics)
        self.hook.trainframe_log(trainer=self, step=self.step, metrics=dict(metrics))
        if val_loss < self.best_val:
            self.best_val = val_loss
            self.save(self.run_dir / "checkpoints" / "best.pt")
        return metrics

    @torch.no_grad()
    def sample(self) -> str | None:
        t = self.config.trainer
        if not t.sample_tokens or not hasattr(self.model, "generate"):
            return None
        try:
            prompt_ids = self.tokenizer.encode(t.sample_prompt) or [getattr(self.tokenizer, "eos_id", 0)]
        except ValueError:  # a structured tokenizer (e.g. schema) cannot encode a free-text prompt
            return None
        idx = torch.tensor([prompt_ids], device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.model.eval()
        out = self.model.generate(idx, t.sample_tokens, temperature=t.sample_temperature, top_k=t.sample_top_k,
                                  eos_id=getattr(self.tokenizer, "eos_id", None), generator=gen)
        self.model.train()
        text = self.tokenizer.decode(out[0, len(prompt_ids):].tolist())
        if not isinstance(text, str):  # tokenizers whose decode is structured sample elsewhere
            return None
        with open(self.run_dir / "samples.txt", "a") as f:
            f.write(f"--- step {self.step}, prompt {t.sample_prompt!r}\n{t.sample_prompt}{text}\n")
        self.hook.trainframe_sample(trainer=self, step=self.step, prompt=t.sample_prompt, text=text)
        return text

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loop": {"step": self.step, "tokens_seen": self.tokens_seen, "best_val": self.best_val,
                     "bad_steps": self.bad_steps, "bad_steps_total": self.bad_steps_total,
                     "backward_passes": self.backward_passes, "max_steps": self.max_steps,
                     "phase": self.phase.value if self.phase else None},
            "data": self.dataset.state_dict(),
            "rng": ckpt.rng_state(),
            "controller": self.controller.state_dict(),
            "config": self.config.to_yaml(),
        }

    def save(self, path: Path | None = None) -> Path:
        """Write a checkpoint: by default the step checkpoint, pruning old ones."""
        state = self.state_dict()
        self.hook.trainframe_save_checkpoint(trainer=self, state=state)
        ckpt_dir = self.run_dir / "checkpoints"
        ckpt.save_atomic(state, path or ckpt.step_path(ckpt_dir, self.step))
        if path is None:
            ckpt.prune(ckpt_dir, self.config.trainer.keep_last)
        return path or ckpt.step_path(ckpt_dir, self.step)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        loop = state["loop"]
        self.step, self.tokens_seen, self.best_val = loop["step"], loop["tokens_seen"], loop["best_val"]
        self.bad_steps, self.bad_steps_total = loop["bad_steps"], loop["bad_steps_total"]
        self.backward_passes = loop["backward_passes"]
        self.phase = Phase(loop["phase"]) if loop["phase"] else None
        self.dataset.load_state_dict(state["data"])
        self.controller.load_state_dict(state["controller"])
        ckpt.set_rng_state(state["rng"])
        self.hook.trainframe_load_checkpoint(trainer=self, state=state)

    def resume(self) -> tuple[Path, int]:
        """Load the newest good checkpoint of this run. Returns (its path, the max_steps it had)."""
        # On the CPU first: RNG states must stay CPU tensors; model and optimizer loads move the rest.
        path, state = ckpt.load_latest_good(self.run_dir / "checkpoints")
        self._attach_listeners()
        self.load_state_dict(state)
        truncate_metrics(self.run_dir, self.step)
        return path, state["loop"]["max_steps"]


def check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: run directory is not writable ({e.strerror})") from None
