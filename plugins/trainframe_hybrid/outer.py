"""Outer Nesterov: every K optimizer steps, a momentum step on the K-step displacement.

Every step is a full step; nothing is skipped. After each block of ``every`` (K) steps the weights
have moved from the block's start ``anchor`` to ``w``. The displacement ``g = anchor - w`` is the
block's pseudo-gradient; the outer step is Nesterov SGD on it::

    m = momentum * m + g
    w = anchor - outer_lr * (g + momentum * m)

and ``w`` is the next block's anchor. ``outer_lr`` 1 with ``momentum`` 0 is plain training. The
inner optimizer (AdamW, Muon ...) keeps its state across blocks. This is DiLoCo with one worker
("SNOO" in the literature): it skips no backward pass but makes each one worth more.

``outer-gated`` lets the dynamics ensemble choose the outer step size. At each block end it
measures the loss at the inner result on a few batches of its own: rows the dataset holds out of
training at the start (``SupportsHoldOut``), so no step ever trains on them. The ensemble, fed the
history of losses, displacement and momentum norms, predicts the gain of each candidate ``scale``
(the weights go to ``w + scale * (outer step - w)``), the residual corrector adds what similar
past states got wrong, the best candidate is taken and verified on the same batches, and rolled
back (to the exact inner result) when it made the loss worse. The observed gain trains the
ensemble. With one candidate (``scales: [1.0]``) there is nothing to choose: no ensemble or
corrector is built, and what is left, outer Nesterov with verification and rollback, is the
control the ensemble must beat.

Both keep all their per-step work on the device: no host sync and no weight copy between block
ends. The engine's deferred host sync stays on (``wants_host_values`` is false).
"""

from __future__ import annotations

import math
import time

import torch
from pydantic import Field

from trainframe.config import ComponentConfig
from trainframe.engine import distributed
from trainframe.errors import UserError
from trainframe.phases import Phase, PhaseController, StepOutcome
from trainframe.protocols import SupportsHoldOut
from trainframe_hybrid.corrector import ResidualCorrector
from trainframe_hybrid.dynamics import Dynamics

N_FEATURES = 10


class OuterConfig(ComponentConfig):
    every: int = Field(32, ge=2, description="optimizer steps per outer step (K)")
    momentum: float = Field(0.7, ge=0, lt=1, description="outer Nesterov momentum")
    outer_lr: float = Field(1.0, gt=0, le=2, description="outer learning rate (1, with momentum 0: plain training)")
    time_overhead: bool = Field(False, description="wait for the GPU after each outer step so its time is "
                                "measured (bench predictive turns it on)")


class GatedOuterConfig(OuterConfig):
    scales: list[float] = Field([0.5, 1.0, 1.5], min_length=1,
                                description="candidate multiples of the outer step (beyond the inner result)")
    verify_batches: int = Field(2, gt=0, description="batches of the verification set, held out of the "
                                "training data at the start")
    explore: int = Field(6, ge=0, description="first block ends try the scales in turn, to seed the ensemble")
    ensemble: int = Field(3, gt=0, description="members of the dynamics ensemble")
    hidden: int = Field(32, gt=0, description="GRU state size of each dynamics member")
    bptt: int = Field(8, gt=1, description="truncated-BPTT window over block ends")
    dynamics_lr: float = Field(3e-3, gt=0, description="learning rate of the dynamics ensemble")
    kl_weight: float = Field(0.1, ge=0, description="weight of the balanced KL term between latent prior and posterior")
    corrector_k: int = Field(8, gt=0, description="nearest stored residuals the corrector averages")
    seed: int = Field(0, description="seed of the controller's own randomness (ensemble init, latent samples)")


class OuterController(PhaseController):
    warms_up_itself = True

    def __init__(self, cfg: OuterConfig):
        self.cfg = cfg
        self.params: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None
        self.momentum: list[torch.Tensor] | None = None
        self.inner = 0  # optimizer steps since the anchor
        self.outer_steps = 0
        self.overhead_s = 0.0
        self.pending: dict | None = None  # a loaded state, until the parameters are known

    @property
    def wants_host_values(self) -> bool:
        return False

    def start(self, trainer) -> None:
        if self.params is None:  # the first block starts at the weights before the first step
            self._setup(trainer)

    def observe(self, outcome: StepOutcome, trainer) -> dict:
        if self.params is None:  # train_step outside fit(): the block starts after this step
            self._setup(trainer)
        if outcome.phase != Phase.FULL:
            return {}
        self.inner += 1
        if self.inner < self.cfg.every:
            return {}
        start = time.perf_counter()
        metrics = self._outer_step(trainer)  # on detached weights (the ensemble's training needs grad)
        self.inner = 0
        self.outer_steps += 1
        if self.cfg.time_overhead and trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        self.overhead_s += time.perf_counter() - start
        return metrics

    def _setup(self, trainer) -> None:
        self.params = list(trainer.params)
        state, self.pending = self.pending, None
        if state is None:
            self.anchor = [p.detach().float().clone() for p in self.params]
            self.momentum = [torch.zeros_like(a) for a in self.anchor]
        else:
            self.anchor = [t.to(p.device) for t, p in zip(state["anchor"], self.params)]
            self.momentum = [t.to(p.device) for t, p in zip(state["momentum"], self.params)]

    def _outer_move(self) -> list[torch.Tensor]:
        """The move from the inner result to the outer step's target; updates the momentum."""
        c = self.cfg
        weights = [p.detach().float() for p in self.params]
        displacement = torch._foreach_sub(self.anchor, weights)  # g = anchor - w
        torch._foreach_mul_(self.momentum, c.momentum)
        torch._foreach_add_(self.momentum, displacement)  # m = mu m + g
        # target - w = g - lr (g + mu m) = (1 - lr) g - lr mu m
        move = torch._foreach_mul(displacement, 1 - c.outer_lr)
        torch._foreach_add_(move, self.momentum, alpha=-c.outer_lr * c.momentum)
        self._displacement = displacement
        return move

    def _outer_step(self, trainer) -> dict:
        trainer.apply_weight_delta(list(zip(self.params, self._outer_move())))
        self._new_anchor()
        return {}

    def _new_anchor(self) -> None:
        torch._foreach_copy_(self.anchor, [p.detach().float() for p in self.params])

    # ------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        state = {"inner": self.inner, "outer_steps": self.outer_steps}
        if self.params is not None:
            state.update(anchor=[t.cpu() for t in self.anchor], momentum=[t.cpu() for t in self.momentum])
        elif self.pending is not None:
            state.update(anchor=self.pending["anchor"], momentum=self.pending["momentum"])
        return state

    def load_state_dict(self, state: dict) -> None:
        self.inner, self.outer_steps = int(state["inner"]), int(state["outer_steps"])
        self.params = self.anchor = self.momentum = None
        self.pending = {"anchor": state["anchor"], "momentum": state["momentum"]} if "anchor" in state else None


class GatedOuterController(OuterController):
    """Outer Nesterov whose step size the dynamics ensemble chooses, verified with rollback."""

    def __init__(self, cfg: GatedOuterConfig):
        super().__init__(cfg)
        n = len(cfg.scales)
        self.chooses = n > 1  # one candidate: verification and rollback alone, no ensemble
        self.dynamics = self.corrector = None
        if self.chooses:
            self.dynamics = Dynamics(N_FEATURES, n, torch.device("cpu"), members=cfg.ensemble, hidden=cfg.hidden,
                                     bptt=cfg.bptt, lr=cfg.dynamics_lr, kl_weight=cfg.kl_weight, seed=cfg.seed)
            self.corrector = ResidualCorrector(N_FEATURES, n, k=cfg.corrector_k, decay=0.98, clamp=1.0)
        self.verify: list | None = None  # the verification batches, on the host
        self.last_loss: float | None = None  # verification loss where the last block started
        self.last_scale, self.last_gain = 0.0, 0.0
        self.pending_target: tuple | None = None  # (target, mask) of the last block end, for the ensemble
        self.norm_mean: torch.Tensor | None = None
        self.norm_var: torch.Tensor | None = None
        self.rollbacks = 0
        self.backup: list[torch.Tensor] | None = None
        self.history: list[dict] = []  # per block end: scale, gain, rolled back

    def start(self, trainer) -> None:
        super().start(trainer)
        if self.verify is None:
            if not isinstance(trainer.dataset, SupportsHoldOut):
                raise UserError(f"phases outer-gated: the dataset ({type(trainer.dataset).__name__}) cannot hold rows "
                                "out of training (no hold_out), and verification needs rows training never reads")
            size = trainer.config.trainer.batch_size
            rows = trainer.dataset.hold_out(self.cfg.verify_batches * size)
            self.verify = [tuple(t[i: i + size].clone() for t in rows) for i in range(0, len(rows[0]), size)]

    def _verification_loss(self, trainer) -> torch.Tensor:
        trainer.model.eval()
        loss_sum, count = distributed.total(trainer.loss_sums(self.verify), trainer.world)
        trainer.model.train()
        return loss_sum / count.clamp(min=1)

    def _features(self, loss: float, norms: list[float], lr: float, progress: float) -> torch.Tensor:
        disp, mom, dot = norms
        cos = dot / max(disp * mom, 1e-30)
        gained = math.log(self.last_loss / loss) if self.last_loss else 0.0
        raw = torch.tensor([math.log(loss), gained, math.log(disp + 1e-12), math.log(mom + 1e-12), cos,
                            math.log(max(lr, 1e-12)), progress, self.last_scale, self.last_gain,
                            float(self.rollbacks) / max(self.outer_steps, 1)])
        if self.norm_mean is None:
            self.norm_mean, self.norm_var = raw.clone(), torch.ones_like(raw)
        else:
            diff = raw - self.norm_mean
            self.norm_mean += 0.1 * diff
            self.norm_var = 0.9 * (self.norm_var + 0.1 * diff * diff)
        return ((raw - self.norm_mean) / (self.norm_var.sqrt() + 1e-3)).clamp(-5, 5)

    def _outer_step(self, trainer) -> dict:
        c = self.cfg
        if self.verify is None:  # train_step outside fit(): no verification set was drawn yet
            self.start(trainer)
        move = self._outer_move()
        disp_sq = torch.stack(torch._foreach_norm(self._displacement)).pow(2).sum()
        mom_sq = torch.stack(torch._foreach_norm(self.momentum)).pow(2).sum()
        dot = sum((d * m).sum() for d, m in zip(self._displacement, self.momentum))
        inner_loss = self._verification_loss(trainer)
        loss0, disp, mom, dot = torch.stack([inner_loss, disp_sq.sqrt(), mom_sq.sqrt(), dot]).tolist()
        choice, predicted = 0, None
        if self.chooses:
            lr = trainer.optimizer.param_groups[0]["lr"]
            features = self._features(loss0, [disp, mom, dot], lr, trainer.step / max(trainer.max_steps, 1))
            out = self.dynamics.observe(features, predicted=False)  # (members, 1 + scales)
            if self.pending_target is not None:  # the last block end's outcome, for the prediction made there
                self.dynamics.add_targets(*self.pending_target)
                self.dynamics.train()
            predicted = out[:, 1:].mean(0) + self.corrector.predict(features)
            choice = self.outer_steps % len(c.scales) if self.outer_steps < c.explore else int(predicted.argmax())
        scale = c.scales[choice]

        if self.backup is None:
            self.backup = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self.backup, [p.detach() for p in self.params])
        trainer.apply_weight_delta(list(zip(self.params, move)), scale)
        loss1 = self._verification_loss(trainer).item()
        rolled_back = not loss1 < loss0
        if rolled_back:  # back to the inner result, exactly
            with torch.no_grad():
                for p, b in zip(self.params, self.backup):
                    p.copy_(b)
            self.rollbacks += 1
        self._new_anchor()

        # The gain in units of what the block's inner steps gained on the same batches.
        progress = (self.last_loss - loss0) if self.last_loss is not None else abs(loss0) * 1e-2
        gain = (loss0 - loss1) / max(abs(progress), 1e-4)
        gain = max(min(gain, 3.0), -3.0)
        if self.chooses:
            target, mask = torch.zeros(1 + len(c.scales)), torch.zeros(1 + len(c.scales))
            target[1 + choice], mask[1 + choice] = gain, 1.0
            self.pending_target = (target, mask)
            residual = torch.zeros(len(c.scales))
            residual[choice] = gain - float(predicted[choice])
            self.corrector.add(features, float(predicted[choice]), gain, residual)
        self.last_loss = min(loss0, loss1)
        self.last_scale, self.last_gain = scale, gain
        self.history.append({"step": trainer.step + 1, "scale": scale, "gain": gain, "rolled_back": rolled_back})
        return {"outer_scale": 0.0 if rolled_back else scale, "outer_gain": gain, "verify_loss": self.last_loss}

    # ------------------------------------------------------------------------ checkpoint
    SCALARS = ("last_loss", "last_scale", "last_gain", "pending_target", "norm_mean", "norm_var", "rollbacks",
               "history")

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({name: getattr(self, name) for name in self.SCALARS})
        state["verify"] = self.verify
        if self.chooses:
            state["dynamics"] = self.dynamics.state_dict()
            state["corrector"] = self.corrector.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for name in self.SCALARS:
            setattr(self, name, state[name])
        self.history = list(self.history)
        self.verify = state["verify"]
        self.backup = None
        if self.chooses:
            self.dynamics.load_state_dict(state["dynamics"])
            self.corrector.load_state_dict(state["corrector"])


def build_outer(cfg: OuterConfig) -> OuterController:
    return OuterController(cfg)


def build_gated_outer(cfg: GatedOuterConfig) -> GatedOuterController:
    return GatedOuterController(cfg)
