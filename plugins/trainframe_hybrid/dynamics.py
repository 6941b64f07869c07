"""The dynamics model: an ensemble of small RSSM-style recurrent models of the training run.

Each member has a learned linear encoder of the feature vector, a GRU cell for the deterministic
state ``h`` and a categorical stochastic latent ``z`` (``n_latents`` variables of ``n_classes``
classes, as in DreamerV2), with a prior ``p(z | h)`` and a posterior ``q(z | h, encoded features)``
tied by a KL term. Heads on ``(h, z)`` predict the next step's loss and, per parameter group, the
coefficient of the group's recent update direction for the next step.

The members are stacked into batched weights (member = batch dimension of ``bmm``), so the whole
ensemble runs as one set of kernels. It trains online on full steps with truncated BPTT over the
last ``bptt`` transitions, starting from the detached state the running filter had there.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIONS = 2  # one-hot of the previous step's kind: optimizer step or predicted step


def single_thread(fn):
    """Run ``fn`` on one CPU thread: the ensemble's ops are tiny, more threads only add waiting."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper


class BatchedLinear(nn.Module):
    """``members`` independent linear layers applied as one ``baddbmm``: x (M, B, in) -> (M, B, out)."""

    def __init__(self, members: int, d_in: int, d_out: int, generator: torch.Generator):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter((torch.rand(members, d_in, d_out, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(members, 1, d_out, generator=generator) * 2 - 1) * bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class Ensemble(nn.Module):
    def __init__(self, n_features: int, n_groups: int, members: int = 3, hidden: int = 64, embed: int = 32,
                 n_latents: int = 4, n_classes: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)  # members differ by initialisation (and by bootstrap masks)
        self.members, self.hidden, self.n_latents, self.n_classes = members, hidden, n_latents, n_classes
        z = n_latents * n_classes
        self.encoder = BatchedLinear(members, n_features, embed, g)
        self.gru_x = BatchedLinear(members, z + ACTIONS, 3 * hidden, g)  # GRU input-to-hidden (r, u, n)
        self.gru_h = BatchedLinear(members, hidden, 3 * hidden, g)  # GRU hidden-to-hidden
        self.prior = BatchedLinear(members, hidden, z, g)
        self.posterior = BatchedLinear(members, hidden + embed, z, g)
        self.head_hidden = BatchedLinear(members, hidden + z, hidden, g)
        self.head_out = BatchedLinear(members, hidden, 1 + n_groups, g)  # next loss, group coefficients
        with torch.no_grad():  # untrained, predict "continue the recent direction" (coefficient 1)
            self.head_out.bias[..., 1:] = 1.0

    def initial_state(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.members
        return (torch.zeros(m, 1, self.hidden, device=device),
                torch.zeros(m, 1, self.n_latents * self.n_classes, device=device))

    def gru(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xr, xu, xn = self.gru_x(x).chunk(3, dim=-1)
        hr, hu, hn = self.gru_h(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        u = torch.sigmoid(xu + hu)
        n = torch.tanh(xn + r * hn)
        return (1 - u) * n + u * h

    def _sample(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One-hot sample per latent with straight-through gradients; the mode when no generator."""
        shape = logits.shape
        probs = logits.view(*shape[:-1], self.n_latents, self.n_classes).softmax(-1)
        scores = probs.detach().log()
        if generator is not None:  # Gumbel-max sampling; the noise comes from the CPU generator, no sync
            u = torch.rand(scores.shape, generator=generator).clamp(1e-9, 1 - 1e-9).to(scores.device)
            scores = scores - (-u.log()).log()
        index = scores.argmax(-1)
        onehot = F.one_hot(index, self.n_classes).to(probs.dtype)
        return (onehot + probs - probs.detach()).view(shape)

    def step(self, features: torch.Tensor, action: torch.Tensor, state, generator=None):
        """One filtering step: (h, z) and the features observed now -> predictions for the next
        step (M, 1, 1 + groups), the new state, and the KL(posterior || prior) of this step."""
        h, z = state
        m = self.members
        h = self.gru(torch.cat([z, action.expand(m, 1, -1)], -1), h)
        embedded = self.encoder(features.expand(m, 1, -1))
        prior_logits = self.prior(h)
        post_logits = self.posterior(torch.cat([h, embedded], -1))
        z = self._sample(post_logits, generator)
        out = self.head_out(F.elu(self.head_hidden(torch.cat([h, z], -1))))
        kl = self._kl(post_logits, prior_logits)
        return out, (h, z), kl

    def _kl(self, post_logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
        """KL with balancing (DreamerV2): the prior moves toward the posterior faster than back."""
        shape = (*post_logits.shape[:-1], self.n_latents, self.n_classes)
        post = post_logits.view(shape).log_softmax(-1)
        prior = prior_logits.view(shape).log_softmax(-1)

        def kl(p, q):
            return (p.exp() * (p - q)).sum(-1).sum(-1)

        return 0.8 * kl(post.detach(), prior) + 0.2 * kl(post, prior.detach())


class Dynamics:
    """The ensemble with its running filter, training window and optimizer."""

    def __init__(self, n_features: int, n_groups: int, device, *, members: int, hidden: int, bptt: int,
                 lr: float, kl_weight: float, seed: int):
        self.model = Ensemble(n_features, n_groups, members=members, hidden=hidden, seed=seed).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.bptt, self.kl_weight, self.device = bptt, kl_weight, device
        self.state = self.model.initial_state(device)
        self.actions = (self.action(False, device), self.action(True, device))  # read-only, shared by the window
        # The training window: per transition the filter state before it, its inputs and targets.
        self.window: list[dict] = []
        self.last_prediction: torch.Tensor | None = None  # (M, 1 + groups) for the step just observed
        self.train_losses: list[float] = []

    @staticmethod
    def action(predicted: bool, device) -> torch.Tensor:
        a = torch.zeros(1, 1, ACTIONS, device=device)
        a[0, 0, int(predicted)] = 1.0
        return a

    @single_thread
    @torch.no_grad()
    def observe(self, features: torch.Tensor, predicted: bool) -> torch.Tensor:
        """Advance the filter on this step's features; returns the ensemble's predictions for the
        next step, (members, 1 + groups): [next log-loss offset, coefficient per group]."""
        before = self.state  # step() builds a new state and never writes into the old one
        action = self.actions[int(predicted)]
        out, self.state, _ = self.model.step(features.view(1, 1, -1), action, self.state, self.generator)
        self.window.append({"state": before, "features": features, "action": action})
        del self.window[:-self.bptt - 1]
        self.last_prediction = out[:, 0, :]
        return self.last_prediction

    def add_targets(self, targets: torch.Tensor, mask: torch.Tensor) -> None:
        """Targets for the prediction made at the previous observe (mask: which entries are known)."""
        if len(self.window) >= 2:
            self.window[-2]["targets"], self.window[-2]["mask"] = targets, mask

    @single_thread
    def train(self) -> float | None:
        """One truncated-BPTT update over the labelled part of the window; the loss, or None."""
        labelled = [w for w in self.window if "targets" in w]
        if len(labelled) < 2:
            return None
        start = self.window.index(labelled[0])
        span = self.window[start:]
        state = span[0]["state"]
        total = torch.zeros((), device=self.device)
        boot = torch.rand(self.model.members, len(span), generator=self.generator).lt(0.8).float().to(self.device)
        for i, w in enumerate(span):
            out, state, kl = self.model.step(w["features"].view(1, 1, -1), w["action"], state, self.generator)
            total = total + self.kl_weight * kl.mean()
            if "targets" in w:
                err = (out[:, 0, :] - w["targets"]).pow(2) * w["mask"]
                total = total + (err.sum(-1) * boot[:, i]).mean()
        loss = total / len(span)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        value = loss.item()
        self.train_losses.append(value)
        del self.train_losses[:-100]
        return value

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "state": list(self.state),
                "window": self.window, "last_prediction": self.last_prediction,
                "train_losses": self.train_losses}

    def load_state_dict(self, state: dict) -> None:
        d = self.device
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.state = tuple(t.to(d) for t in state["state"])
        self.window = [{k: (tuple(t.to(d) for t in v) if k == "state" else v.to(d)) for k, v in w.items()}
                       for w in state["window"]]
        self.last_prediction = None if state["last_prediction"] is None else state["last_prediction"].to(d)
        self.train_losses = list(state["train_losses"])
