"""The hybrid phase controller: warmup / full / predict / correct.

- WARMUP: ``warmup_steps`` full steps; the dynamics model only observes.
- FULL: ``full_steps`` full steps; the dynamics model trains on what it observes.
- PREDICT (when confidence >= ``confidence_threshold``): forward-only steps; before each one the
  controller moves every parameter group g by ``c_g * d_g`` (``d_g``: the group's recent update
  direction, ``c_g``: predicted). A loss above the prediction by more than ``divergence_sigma``
  standard deviations ends the phase at once and forces FULL.
- CORRECT (after each PREDICT): ``correct_steps`` forward-only steps on batches held from the last
  full steps. They probe the loss at 1, 0.5 and 0 times the phase's total predicted move, fit a
  parabola, and the last step sets each group's move to the best scale plus the corrector's
  per-group residual. Then PREDICT again if still confident (at most ``max_consecutive_predict``
  in a row), else FULL.

The predictors: ``gru`` (the learned dynamics ensemble), ``extrapolate`` (coefficient 1: the recent
mean update, no learned model) and ``skip`` (coefficient 0: frozen weights, forward only). The
direction ``d_g`` is an EMA of the group's optimizer updates (``ema``) or, per parameter, the slope
of a least-squares line through the last weight snapshots weighted by its R^2 (``nowcast``), so
parameters that drift steadily are extrapolated and noisy ones are left alone.

``skip`` moves nothing, so it runs lean: no weight copies, no update statistics, and each step's
loss is read ``read_lag`` steps late (when the steps after it are already queued on the device),
so the engine keeps its deferred host sync and the host can run ahead of the GPU. Its phase
decisions take effect ``read_lag`` steps later than the moving predictors'.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator

from trainframe.config import ComponentConfig
from trainframe.phases import Phase, PhaseController, StepOutcome
from trainframe_hybrid.corrector import ResidualCorrector
from trainframe_hybrid.dynamics import Dynamics

LOSS_SCALE = 20.0  # the loss head predicts log-loss offsets in units of 5%: targets near 1
PROBE_SCALES = (1.0, 0.5, 0.0)  # fractions of the predicted move that CORRECT evaluates


class HybridConfig(ComponentConfig):
    warmup_steps: int = Field(200, ge=0, description="full steps before anything is predicted")
    full_steps: int = Field(30, gt=0, description="full steps per FULL phase")
    min_predict_steps: int = Field(5, gt=0, description="fewest steps of a PREDICT phase")
    max_predict_steps: int = Field(50, gt=0, description="most steps of a PREDICT phase (scaled by confidence squared)")
    max_consecutive_predict: int = Field(3, gt=0, description="PREDICT phases in a row (with CORRECT between)")
    correct_steps: int = Field(10, ge=0, description="forward-only steps on held batches after each PREDICT")
    confidence_threshold: float = Field(0.6, ge=0, le=1, description="confidence needed to enter PREDICT")
    divergence_sigma: float = Field(3.0, gt=0, description="a predicted step whose loss exceeds the prediction by "
                                    "this many standard deviations ends PREDICT and takes the move back")
    check_every: int = Field(1, gt=0, description="divergence check every k predicted steps")
    predictor: Literal["gru", "extrapolate", "skip"] = Field(
        "gru", description="gru: coefficients from the dynamics ensemble; extrapolate: coefficient 1 on the "
        "direction; skip: forward only with frozen weights")
    direction: Literal["ema", "nowcast"] = Field(
        "ema", description="per-group direction of predicted moves: an EMA of updates, or a line fit to "
        "weight snapshots")
    direction_beta: float = Field(0.9, ge=0, lt=1, description="EMA of updates for the ema direction")
    nowcast_snapshots: int = Field(8, ge=3, description="weight snapshots the nowcast line is fit to")
    group_by: Literal["layer", "optimizer"] = Field("layer", description="parameter groups of the coefficients")
    history: int = Field(20, ge=4, description="recent steps for loss and grad-norm statistics")
    ensemble: int = Field(3, gt=0, description="members of the dynamics ensemble")
    hidden: int = Field(64, gt=0, description="GRU state size of each dynamics member")
    bptt: int = Field(16, gt=1, description="truncated-BPTT window of the dynamics model")
    train_every: int = Field(4, gt=0, description="full steps between dynamics-model updates")
    dynamics_lr: float = Field(3e-3, gt=0, description="learning rate of the dynamics ensemble")
    kl_weight: float = Field(0.1, ge=0, description="weight of the balanced KL term between latent prior and posterior")
    coefficient_max: float = Field(3.0, gt=0, description="predicted coefficients are clamped to [0, this]")
    corrector_k: int = Field(8, gt=0, description="nearest stored residuals the corrector averages")
    corrector_decay: float = Field(0.98, gt=0, le=1, description="per-entry age decay of retrieval weights")
    correction_clamp: float = Field(0.5, gt=0, description="the corrector's output is clamped to +-this")
    seed: int = Field(0, description="seed of the controller's own randomness (ensemble init, latent samples)")
    read_lag: int = Field(4, gt=0, description="skip only: each step's loss is read this many steps late, so "
                          "the host runs ahead of the device (phase decisions come as much later)")
    time_overhead: bool = Field(False, description="wait for the GPU after the controller's work each step so "
                                "its time is measured (bench predictive turns it on; a stall per step)")

    @model_validator(mode="after")
    def _check(self):
        if self.min_predict_steps > self.max_predict_steps:
            raise ValueError(f"min_predict_steps ({self.min_predict_steps}) must be <= max_predict_steps "
                             f"({self.max_predict_steps})")
        return self


class ExtrapolateConfig(HybridConfig):
    predictor: Literal["gru", "extrapolate", "skip"] = Field(
        "extrapolate", description=HybridConfig.model_fields["predictor"].description)


class SkipConfig(HybridConfig):
    predictor: Literal["gru", "extrapolate", "skip"] = Field(
        "skip", description=HybridConfig.model_fields["predictor"].description)
    correct_steps: int = Field(0, ge=0, description="frozen weights leave nothing to correct")


class NowcastConfig(HybridConfig):
    direction: Literal["ema", "nowcast"] = Field(
        "nowcast", description=HybridConfig.model_fields["direction"].description)


# ------------------------------------------------------------------------------- state machine
@dataclass
class Machine:
    """The phase schedule alone, so it can be tested as a table. ``advance`` runs after each step."""

    cfg: HybridConfig
    state: str = "warmup"  # warmup, full, predict, correct
    remaining: int = 0
    consecutive: int = 0  # PREDICT phases since the last FULL
    reason: str = "warmup"

    def __post_init__(self):
        if self.cfg.warmup_steps == 0:
            self.state, self.remaining, self.reason = "full", self.cfg.full_steps, "no warmup"
        else:
            self.remaining = self.cfg.warmup_steps

    @property
    def phase(self) -> Phase:
        return {"predict": Phase.PREDICT, "correct": Phase.CORRECT}.get(self.state, Phase.FULL)

    def predict_length(self, confidence: float) -> int:
        c = self.cfg
        n = c.max_predict_steps * confidence ** 2 * (1 - min(0.1 * self.consecutive, 0.5))
        return int(min(max(round(n), c.min_predict_steps), c.max_predict_steps))

    def advance(self, confidence: float, diverged: str | None = None) -> str | None:
        """Move one step on; returns the new state's reason when the state changed."""
        c = self.cfg
        if self.state == "predict" and diverged:
            return self._go("full", c.full_steps, f"divergence: {diverged}")
        self.remaining -= 1
        if self.remaining > 0:
            return None
        if self.state == "warmup":
            return self._go("full", c.full_steps, "warmup done")
        if self.state == "predict" and c.correct_steps > 0:
            return self._go("correct", c.correct_steps, "predict phase done")
        if self.state == "full" or self.state in ("predict", "correct"):
            if confidence < c.confidence_threshold:
                return self._go("full", c.full_steps,
                                f"confidence {confidence:.2f} < {c.confidence_threshold:.2f}")
            if self.consecutive >= c.max_consecutive_predict:
                return self._go("full", c.full_steps, f"{self.consecutive} predict phases in a row")
            n = self.predict_length(confidence)
            self.consecutive += 1
            return self._go("predict", n, f"confidence {confidence:.2f}: predicting {n} steps")
        raise AssertionError(self.state)

    def _go(self, state: str, steps: int, reason: str) -> str:
        if state == "full":
            self.consecutive = 0
        self.state, self.remaining, self.reason = state, steps, reason
        return reason

    def state_dict(self) -> dict:
        return {"state": self.state, "remaining": self.remaining, "consecutive": self.consecutive,
                "reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        self.state, self.remaining = state["state"], int(state["remaining"])
        self.consecutive, self.reason = int(state["consecutive"]), state["reason"]


# ---------------------------------------------------------------------------------- helpers
def _on_host(outcome: StepOutcome) -> StepOutcome:
    """A step's outcome with its loss and grad norm as floats (device tensors when the engine
    defers its host sync); lean controllers use no batches."""
    def value(v):
        return None if v is None else float(v)
    return StepOutcome(outcome.step, outcome.phase, value(outcome.loss), outcome.lr, value(outcome.grad_norm))


class LateRead:
    """A step's loss and grad norm on their way to the host. A plain read of a CUDA tensor (``float``,
    ``.item()``) waits for everything queued on the stream, the steps after it included; here the
    values are copied into pinned memory behind the step's own work, and ``read`` waits for that copy
    alone, so the host stays the steps in between ahead of the device."""

    def __init__(self, outcome: StepOutcome):
        self.outcome, self.done = outcome, None
        values = [v for v in (outcome.loss, outcome.grad_norm) if v is not None]
        if any(isinstance(v, torch.Tensor) and v.is_cuda for v in values):
            device = next(v.device for v in values if isinstance(v, torch.Tensor))
            on_device = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in values])
            self.host = torch.empty(len(values), pin_memory=True)
            self.host.copy_(on_device, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record()

    def read(self) -> StepOutcome:
        o = self.outcome
        if self.done is None:
            return _on_host(o)
        self.done.synchronize()
        loss, *grad_norm = self.host.tolist()
        return StepOutcome(o.step, o.phase, loss, o.lr, grad_norm[0] if grad_norm else None)


def group_key(name: str, by_layer: bool, optimizer_group: str) -> str:
    if not by_layer:
        return optimizer_group
    parts = [p for p in name.split(".") if p not in ("module", "_orig_mod")]
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def _slope(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean_t, mean_v = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_t) * (v - mean_v) for i, v in enumerate(values))
    return num / sum((i - mean_t) ** 2 for i in range(n))


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


class HybridController(PhaseController):
    def __init__(self, cfg: HybridConfig):
        self.cfg = cfg
        self.machine = Machine(cfg)
        self.ready = False
        self.pending_state: dict | None = None  # loaded before the trainer was seen
        # Scalars (all in the checkpoint).
        self.log_losses: list[float] = []  # observed log losses, full steps (noise and trend)
        self.log_grad_norms: list[float] = []
        self.abs_errors: list[float] = []  # one-step prediction errors of full steps (log loss)
        self.smooth: float | None = None  # EMA of the log loss
        self.predicted: float | None = None  # predicted log loss of the next step
        self.sigma = 0.0  # its standard deviation
        self.confidence = 0.0
        self.coefficients: list[float] = []
        self.last_update_norms: list[float] = []
        self.moments: list[float] = []
        self.divergences = 0
        self.counts = {"full": 0, "predict": 0, "correct": 0}
        self.scale = 1.0  # current fraction of the predicted move applied (during CORRECT)
        self.probes: list[tuple[float, float]] = []  # (scale, loss) of CORRECT steps
        self.cycle: dict | None = None  # the running predict cycle: start features, losses, length
        self.pending_residual: dict | None = None  # waits for the next full step's update
        self.norm_mean: torch.Tensor | None = None
        self.norm_var: torch.Tensor | None = None
        self.overhead_s = 0.0  # time spent in this controller: the benchmark counts it
        self._prev_base = 0.0  # the smoothed log loss the last prediction was relative to
        self.best_scale = 1.0
        self.applied_norms: list[float] | None = None  # per-group norms of the move made for the next step
        self.held: list[list] = []
        self.lean = cfg.predictor == "skip"
        self.late: list[LateRead] = []  # lean: the steps observed, each processed read_lag steps later

    # ------------------------------------------------------------------- the protocol
    def decide(self, step: int) -> tuple[Phase, str]:
        return self.machine.phase, self.machine.reason

    def batches_for(self, phase: Phase, batches: list) -> list:
        if phase != Phase.CORRECT or not self.held:
            return batches
        index = self.cfg.correct_steps - self.machine.remaining
        held = self.held[(index // len(PROBE_SCALES)) % len(self.held)]
        device = batches[0][0].device
        return [tuple(t.to(device) for t in batch) for batch in held]

    @property
    def wants_update_norms(self) -> bool:
        return False  # the controller measures its own per-group updates (it needs the directions)

    @property
    def wants_host_values(self) -> bool:
        return not self.lean  # lean: each loss is read on the host, read_lag steps late

    def observe(self, outcome: StepOutcome, trainer) -> dict:
        if self.lean:  # process an older step: reading its loss waits for it alone, later ones stay queued
            self.late.append(LateRead(outcome))
            if len(self.late) <= self.cfg.read_lag:
                return {}
            outcome = self.late.pop(0).read()  # the wait is the device's time, not the controller's
        start = time.perf_counter()
        if not self.ready:
            self._setup(trainer)
        metrics = self._observe(outcome, trainer)
        if self.cfg.time_overhead and not self.lean and trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)  # so overhead_s measures the work, not its launch
        self.overhead_s += time.perf_counter() - start
        return metrics

    # -------------------------------------------------------------------------- setup
    def _setup(self, trainer) -> None:
        cfg = self.cfg
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        self.params, keys = [], []
        for i, g in enumerate(trainer.optimizer.param_groups):
            for p in g["params"]:
                if p.requires_grad:
                    self.params.append(p)
                    keys.append(group_key(names.get(id(p), ""), cfg.group_by == "layer", g.get("name", str(i))))
        self.group_names = list(dict.fromkeys(keys))
        self.group_of = [self.group_names.index(k) for k in keys]
        self.device = self.params[0].device
        self.apply_weight_delta = trainer.apply_weight_delta
        self.group_index = torch.tensor(self.group_of, device=self.device)
        self.max_steps = trainer.max_steps
        n_groups = len(self.group_names)
        self.n_opt_groups = len(trainer.optimizer.param_groups)
        self.n_features = 10 + 2 * self.n_opt_groups + n_groups
        # lean: nothing moves, so no direction, no copies (empty lists keep the checkpoint's shape)
        zeros = [] if self.lean else [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.prev = [] if self.lean else [p.detach().float().clone() for p in self.params]  # weights after the last step
        self.direction = zeros  # d_g per parameter
        self.moved = [torch.zeros_like(z) for z in zeros]  # total predicted move of the current cycle
        self.last_delta = [torch.zeros_like(z) for z in zeros]
        self.snapshots: list[list[torch.Tensor]] = []
        # The dynamics model is tiny: it runs on the CPU (one thread), next to the Python-side
        # statistics it reads, and never waits on or queues behind the accelerator.
        self.dynamics = (Dynamics(self.n_features, n_groups, torch.device("cpu"), members=cfg.ensemble, hidden=cfg.hidden,
                                  bptt=cfg.bptt, lr=cfg.dynamics_lr, kl_weight=cfg.kl_weight, seed=cfg.seed)
                         if cfg.predictor == "gru" else None)
        self.corrector = ResidualCorrector(self.n_features, 1 + n_groups, k=cfg.corrector_k,
                                           decay=cfg.corrector_decay, clamp=cfg.correction_clamp)
        self.coefficients = [1.0 if cfg.predictor == "extrapolate" else 0.0] * n_groups
        self.coefficient_targets = [0.0] * n_groups
        self.step_direction = self.direction
        self.last_update_norms = [0.0] * n_groups
        self.moments = [0.0] * (2 * self.n_opt_groups)
        self.ready = True
        if self.pending_state is not None:
            self._load(self.pending_state)
            self.pending_state = None

    # ---------------------------------------------------------------------- one step
    def _observe(self, outcome: StepOutcome, trainer) -> dict:
        cfg, phase = self.cfg, outcome.phase
        self.counts[phase.value] += 1
        loss = outcome.loss
        log_loss = math.log(max(loss, 1e-8)) if math.isfinite(loss) else math.inf
        expected, sigma = self.predicted, self.sigma
        metrics: dict = {}
        if expected is not None:
            metrics["predicted_loss"] = math.exp(expected)

        diverged = None
        if phase == Phase.FULL:
            self._after_full_step(outcome, trainer, log_loss)
        elif phase == Phase.PREDICT:
            if self.cycle is not None and expected is not None and math.isfinite(log_loss):
                self.cycle["residuals"].append(log_loss - expected)
            if not math.isfinite(log_loss):
                diverged = f"loss {loss} is not finite"
            elif (expected is not None and self.counts["predict"] % cfg.check_every == 0
                  and log_loss > expected + cfg.divergence_sigma * sigma):
                diverged = (f"loss {loss:.4f} > predicted {math.exp(expected):.4f} + "
                            f"{cfg.divergence_sigma:g} sigma")
        else:
            self.probes.append((self.scale, loss))

        features = self._features(outcome, log_loss, phase != Phase.FULL)
        self._predict_next(features, phase, log_loss)
        was = self.machine.state
        reason = self.machine.advance(self.confidence, diverged)
        now = self.machine.state
        delta_norms = None
        if diverged:
            self.divergences += 1
            if not self.lean:  # undo the move that diverged (lean: nothing moved)
                self._move(self.last_delta, -1.0)
                torch._foreach_sub_(self.moved, self.last_delta)
            self._finish_cycle()
        elif was == "correct" and now != "correct":
            delta_norms = self._correct(features)
            metrics["correct_scale"] = self.best_scale
        if now == "predict":
            if reason:  # a new phase (also predict -> predict when there are no correct steps)
                self._start_cycle(features)
            delta_norms = self._predicted_move()
            self.last_update_norms = delta_norms
        elif now == "correct":
            index = cfg.correct_steps - self.machine.remaining
            delta_norms = self._set_scale(PROBE_SCALES[index % len(PROBE_SCALES)])
        elif was == "predict" and not diverged:  # no correct steps configured
            self._finish_cycle()
        if not self.lean:
            torch._foreach_copy_(self.prev, [p.detach().float() for p in self.params])
        metrics["confidence"] = self.confidence
        # A step reports the move its forward pass ran with (made at the end of the step before).
        if self.applied_norms is not None:
            metrics["delta_norm"] = math.sqrt(sum(n * n for n in self.applied_norms))
            for name, n in zip(self.group_names, self.applied_norms):
                metrics[f"delta_norm/{name}"] = n
        self.applied_norms = delta_norms
        return metrics

    def _after_full_step(self, outcome: StepOutcome, trainer, log_loss: float) -> None:
        """Measure the optimizer's update per group, its projection on the direction (the target
        of the coefficient head), update the direction, hold the batch, read moment summaries."""
        cfg = self.cfg
        if outcome.grad_norm is not None and math.isfinite(outcome.grad_norm):
            self.log_grad_norms = (self.log_grad_norms + [math.log(outcome.grad_norm + 1e-12)])[-cfg.history:]
        if math.isfinite(log_loss):
            if self.predicted is not None:
                self.abs_errors = (self.abs_errors + [abs(log_loss - self.predicted)])[-cfg.history:]
            self.log_losses = (self.log_losses + [log_loss])[-cfg.history:]
        if self.lean:
            self.pending_residual = None  # nothing moved: no residual to learn
            return
        update = torch._foreach_sub([p.detach().float() for p in self.params], self.prev)
        n_groups = len(self.group_names)
        sq = self._group_sum(torch._foreach_norm(update), square=True)
        dir_sq = self._group_sum(torch._foreach_norm(self.direction), square=True)
        dot = self._group_sum([(u * d).sum() for u, d in zip(update, self.direction)])
        if self.pending_residual is not None:
            moved_sq = self._group_sum(torch._foreach_norm(self.moved), square=True)
            moved_dot = self._group_sum([(u * m).sum() for u, m in zip(update, self.moved)])
        else:
            moved_sq = moved_dot = torch.zeros(n_groups, device=self.device)
        moments = self._moment_summary(trainer.optimizer)
        values = torch.cat([sq.sqrt(), dot / dir_sq.clamp(min=1e-30), moved_dot / moved_sq.clamp(min=1e-30),
                            moments]).tolist()  # one host sync
        self.last_update_norms = values[:n_groups]
        projections = values[n_groups:2 * n_groups]
        moved_projection = values[2 * n_groups:3 * n_groups]
        self.moments = values[3 * n_groups:]
        self.coefficient_targets = [min(max(c, -1.0), cfg.coefficient_max) for c in projections]
        torch._foreach_mul_(self.direction, cfg.direction_beta)
        torch._foreach_add_(self.direction, update, alpha=1 - cfg.direction_beta)
        if cfg.direction == "nowcast":
            self.snapshots.append([p.detach().float().clone() for p in self.params])
            del self.snapshots[:-cfg.nowcast_snapshots]
        self.held.append([tuple(t.detach() for t in batch) for batch in outcome.batches])
        del self.held[:-max(1, math.ceil(cfg.correct_steps / len(PROBE_SCALES)))]
        if self.pending_residual is not None:
            # The first real update after a cycle, projected on the cycle's move: about 1/length
            # when the move was on the trajectory; less (or negative) when it overshot.
            p = self.pending_residual
            per_group = [p["length"] * m - 1.0 for m in moved_projection]
            residual = torch.tensor([p["loss_residual"], *per_group]).clamp(-1.0, 1.0)
            self.corrector.add(p["features"], p["predicted"], p["observed"], residual)
            self.pending_residual = None
            for m in self.moved:
                m.zero_()

    def _moment_summary(self, optimizer) -> torch.Tensor:
        """log mean |m| and log mean sqrt(v) per optimizer group (Adam-style state; zeros without)."""
        out = []
        for g in optimizer.param_groups:
            states = [optimizer.state[p] for p in g["params"] if "exp_avg" in optimizer.state.get(p, {})]
            if not states:
                out += [torch.zeros((), device=self.device)] * 2
                continue
            n = sum(s["exp_avg"].numel() for s in states)
            m_sum = torch.stack(torch._foreach_norm([s["exp_avg"] for s in states], 1)).sum()
            v_sum = torch.stack(torch._foreach_norm(torch._foreach_sqrt([s["exp_avg_sq"] for s in states]), 1)).sum()
            out += [(m_sum.float() / n + 1e-12).log(), (v_sum.float() / n + 1e-12).log()]
        return torch.stack(out)

    def _features(self, outcome: StepOutcome, log_loss: float, predicted_step: bool) -> torch.Tensor:
        """The training state as a vector: loss level, trend and noise; grad-norm statistics; log
        LR; progress; the step kind; optimizer moment summaries; per-group update (or move) norms."""
        losses = self.log_losses or [log_loss if math.isfinite(log_loss) else 0.0]
        level = log_loss if math.isfinite(log_loss) else losses[-1] + 1.0
        gn = self.log_grad_norms or [0.0]
        x = [level, sum(losses) / len(losses), _slope(losses) * len(losses), math.log(_std(losses) + 1e-4),
             gn[-1], sum(gn) / len(gn), _std(gn), math.log(max(outcome.lr, 1e-12)),
             outcome.step / max(self.max_steps, 1), float(predicted_step), *self.moments,
             *(math.log(n + 1e-12) for n in self.last_update_norms)]
        raw = torch.tensor(x, dtype=torch.float32)
        # Running normalisation, so the encoder sees values near unit scale at any loss level.
        if self.norm_mean is None:
            self.norm_mean, self.norm_var = raw.clone(), torch.ones_like(raw)
        else:
            diff = raw - self.norm_mean
            self.norm_mean += 0.05 * diff
            self.norm_var = 0.95 * (self.norm_var + 0.05 * diff * diff)
        return ((raw - self.norm_mean) / (self.norm_var.sqrt() + 1e-3)).clamp(-5, 5)

    def _predict_next(self, features: torch.Tensor, phase: Phase, log_loss: float) -> None:
        """Predicted log loss of the next step (and its sigma), coefficients and confidence."""
        cfg = self.cfg
        if math.isfinite(log_loss):
            self.smooth = log_loss if self.smooth is None else 0.9 * self.smooth + 0.1 * log_loss
        base = self.smooth if self.smooth is not None else 0.0
        trend = _slope(self.log_losses)
        noise = _std([v - trend * i for i, v in enumerate(self.log_losses)]) or 0.05
        if self.dynamics is None:
            # Baselines: the recent trend continues; confidence is not gated.
            self.predicted = base + trend
            self.sigma, self.confidence = noise, 1.0
            return
        dyn = self.dynamics
        full = phase == Phase.FULL
        if full and dyn.last_prediction is not None and math.isfinite(log_loss):
            prev_base = self._prev_base
            target = torch.tensor([LOSS_SCALE * (log_loss - prev_base), *self.coefficient_targets])
            dyn.add_targets(target, torch.ones_like(target))
        if full and self.machine.state == "full" and self.counts["full"] % cfg.train_every == 0:
            dyn.train()  # WARMUP only observes
        out = dyn.observe(features, predicted=not full)
        self._prev_base = base
        loss_offsets = out[:, 0] / LOSS_SCALE
        correction = self.corrector.predict(features)[0].item() if len(self.corrector) else 0.0
        self.predicted = base + loss_offsets.mean().item() + correction
        spread = loss_offsets.std().item() if len(loss_offsets) > 1 else 0.0
        self.sigma = math.sqrt(noise ** 2 + spread ** 2)
        self.coefficients = out[:, 1:].mean(0).clamp(0, cfg.coefficient_max).tolist()
        agreement = 1 / (1 + (spread / noise) ** 2)
        if self.abs_errors:
            mse = sum(e * e for e in self.abs_errors) / len(self.abs_errors)
            accuracy = min(1.0, noise ** 2 / max(mse, 1e-12))
        else:
            accuracy = 0.0
        gn = self.log_grad_norms
        stability = 1 / (1 + _std(gn) ** 2) * (1.0 if trend <= 0 else math.exp(-trend * len(self.log_losses) / noise))
        self.confidence = (agreement * accuracy * stability) ** (1 / 3)

    # ------------------------------------------------------------------- weight moves
    def _move(self, deltas: list[torch.Tensor], alpha: float) -> None:
        self.apply_weight_delta(list(zip(self.params, deltas)), alpha)

    def _start_cycle(self, features: torch.Tensor) -> None:
        cfg = self.cfg
        for m in self.moved:
            m.zero_()
        self.pending_residual = None
        self.cycle = {"features": features, "residuals": [], "length": self.machine.remaining,
                      "predicted": math.exp(self.predicted) if self.predicted is not None else float("nan")}
        if cfg.direction == "nowcast" and len(self.snapshots) >= 3:
            self.step_direction = self._nowcast_direction()
        else:
            self.step_direction = self.direction
        self.scale = 1.0
        self.probes = []

    def _nowcast_direction(self) -> list[torch.Tensor]:
        """Per parameter: the slope of the least-squares line through the snapshots, times the
        fit's R^2 (how much of the parameter's movement the line explains)."""
        n = len(self.snapshots)
        t = torch.arange(n, dtype=torch.float32, device=self.device) - (n - 1) / 2
        t_sq = float((t * t).sum())
        out = []
        for i in range(len(self.params)):
            w = torch.stack([s[i] for s in self.snapshots])
            centred = w - w.mean(0)
            slope = torch.tensordot(t, centred, dims=1) / t_sq
            explained = slope.pow(2) * t_sq
            total = centred.pow(2).sum(0).clamp(min=1e-30)
            out.append(slope * (explained / total).clamp(0, 1))
        return out

    def _predicted_move(self) -> list[float]:
        """Apply c_g * d_g to every group for the next (predicted) step; returns the move's norms."""
        if self.cfg.predictor == "skip":
            self.last_delta = [torch.zeros_like(d) for d in self.step_direction]
            return [0.0] * len(self.group_names)
        self.last_delta = torch._foreach_mul(self.step_direction, [self.coefficients[g] for g in self.group_of])
        torch._foreach_add_(self.moved, self.last_delta)
        self._move(self.last_delta, 1.0)
        return self._group_norms(self.last_delta)

    def _set_scale(self, scale: float) -> list[float]:
        """Put the weights at ``scale`` times this cycle's predicted move (a CORRECT probe)."""
        if self.lean:
            return self._group_norms([])
        delta = torch._foreach_mul(self.moved, scale - self.scale)
        self._move(delta, 1.0)
        self.scale = scale
        return self._group_norms(delta)

    def _correct(self, features: torch.Tensor) -> list[float]:
        """End of CORRECT: the best scale of the move from the probes (a parabola through the mean
        loss at each probed scale), plus the corrector's per-group residual, applied per group."""
        by_scale = {s: [loss for p, loss in self.probes if p == s and math.isfinite(loss)] for s in PROBE_SCALES}
        best = 1.0
        if all(by_scale.values()):
            l1, lh, l0 = (sum(v) / len(v) for v in by_scale.values())
            a = 2 * (l1 + l0 - 2 * lh)
            b = l1 - l0 - a
            best = min(max(-b / (2 * a), 0.0), 1.5) if a > 0 else min(zip((l1, lh, l0), PROBE_SCALES))[1]
        residual = self.corrector.predict(self.cycle["features"] if self.cycle else features)[1:].tolist()
        targets = [min(max(best + r, 0.0), 1.5) for r in residual]
        delta = [] if self.lean else torch._foreach_mul(self.moved, [targets[g] - self.scale for g in self.group_of])
        if delta:
            self._move(delta, 1.0)
            # The move now stands at ``targets``: keep ``moved`` equal to it for the residual.
            torch._foreach_add_(self.moved, delta)
        self.scale = 1.0
        self.best_scale = best
        self._finish_cycle()
        return self._group_norms(delta)

    def _finish_cycle(self) -> None:
        if self.cycle is None:
            return
        r = self.cycle["residuals"]
        self.pending_residual = {"features": self.cycle["features"], "length": max(self.cycle["length"], 1),
                                 "loss_residual": sum(r) / len(r) if r else 0.0,
                                 "predicted": self.cycle["predicted"],
                                 "observed": math.exp(self.log_losses[-1]) if self.log_losses else float("nan")}
        self.cycle = None
        self.probes = []

    def _group_sum(self, values: list[torch.Tensor], square: bool = False) -> torch.Tensor:
        """Per-parameter scalars summed per group (squared first if ``square``), on the device."""
        v = torch.stack(values)
        sums = torch.zeros(len(self.group_names), device=self.device)
        return sums.index_add_(0, self.group_index, v.pow(2) if square else v)

    def _group_norms(self, deltas: list[torch.Tensor]) -> list[float]:
        if not deltas:  # lean: nothing moves
            return [0.0] * len(self.group_names)
        return self._group_sum(torch._foreach_norm(deltas), square=True).sqrt().tolist()

    # ------------------------------------------------------------------------ checkpoint
    SCALARS = ("log_losses", "log_grad_norms", "abs_errors", "smooth", "predicted", "sigma", "confidence",
               "coefficients", "coefficient_targets", "last_update_norms", "moments", "divergences", "counts",
               "scale", "probes", "cycle", "pending_residual", "norm_mean", "norm_var", "_prev_base",
               "best_scale", "applied_norms")
    TENSOR_LISTS = ("prev", "direction", "moved", "last_delta")

    def state_dict(self) -> dict:
        state = {"machine": self.machine.state_dict(), "ready": self.ready,
                 "held": [[tuple(t.cpu() for t in batch) for batch in step] for step in self.held],
                 "late": [[o.step, o.phase.value, o.loss, o.lr, o.grad_norm] for o in (r.read() for r in self.late)]}
        if not self.ready:
            return state
        state.update({name: getattr(self, name, None) for name in self.SCALARS})
        state.update({name: getattr(self, name) for name in self.TENSOR_LISTS})
        state["snapshots"] = self.snapshots
        state["step_direction"] = None if self.step_direction is self.direction else self.step_direction
        state["corrector"] = self.corrector.state_dict()
        state["dynamics"] = self.dynamics.state_dict() if self.dynamics is not None else None
        return state

    def load_state_dict(self, state: dict) -> None:
        # The schedule and the held batches are needed before the first step sees the trainer.
        self.machine.load_state_dict(state["machine"])
        self.held = [[tuple(batch) for batch in step] for step in state["held"]]
        self.late = [LateRead(StepOutcome(step, Phase(phase), *rest)) for step, phase, *rest in state.get("late", [])]
        if state["ready"]:
            self.pending_state = state
            self.ready = False

    def _load(self, state: dict) -> None:
        d = self.device
        for name in self.SCALARS:
            setattr(self, name, state[name])
        self.counts = dict(self.counts)
        for name in self.TENSOR_LISTS:
            setattr(self, name, [t.to(d) for t in state[name]])
        self.snapshots = [[t.to(d) for t in snap] for snap in state["snapshots"]]
        steps = state["step_direction"]
        self.step_direction = self.direction if steps is None else [t.to(d) for t in steps]
        self.corrector.load_state_dict(state["corrector"])
        if self.dynamics is not None:
            self.dynamics.load_state_dict(state["dynamics"])
