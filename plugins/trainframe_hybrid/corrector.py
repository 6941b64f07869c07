"""The residual corrector: remembers how past predicted phases went wrong and anticipates it.

Each entry holds the training-state features at the start of a predicted phase, the predicted and
observed loss, and a residual vector: ``[loss residual, residual per parameter group]``. A query
returns ``0.7 x`` the similarity-weighted mean of the top-k stored residuals (cosine similarity of
features, decayed with the entry's age) ``+ 0.3 x`` an online linear model of the residuals, clamped.
"""

from __future__ import annotations

import torch


class ResidualCorrector:
    def __init__(self, n_features: int, n_residuals: int, *, k: int, decay: float, clamp: float,
                 capacity: int = 256, linear_lr: float = 0.1):
        self.k, self.decay, self.clamp, self.capacity, self.linear_lr = k, decay, clamp, capacity, linear_lr
        self.features = torch.zeros(0, n_features)
        self.residuals = torch.zeros(0, n_residuals)
        self.losses = torch.zeros(0, 2)  # predicted, observed
        self.added = torch.zeros(0, dtype=torch.long)  # entry number when stored, for the age decay
        self.count = 0
        self.linear = torch.zeros(n_residuals, n_features + 1)  # last column: bias

    def __len__(self) -> int:
        return len(self.residuals)

    def add(self, features: torch.Tensor, predicted: float, observed: float, residual: torch.Tensor) -> None:
        x = features.detach().float().cpu().view(1, -1)
        r = residual.detach().float().cpu().view(1, -1)
        self._fit_linear(x[0], r[0])
        self.features = torch.cat([self.features, x])[-self.capacity:]
        self.residuals = torch.cat([self.residuals, r])[-self.capacity:]
        self.losses = torch.cat([self.losses, torch.tensor([[predicted, observed]])])[-self.capacity:]
        self.added = torch.cat([self.added, torch.tensor([self.count])])[-self.capacity:]
        self.count += 1

    def _fit_linear(self, x: torch.Tensor, r: torch.Tensor) -> None:
        """One normalised LMS step: the online linear part of the correction."""
        xb = torch.cat([x, torch.ones(1)])
        error = r - self.linear @ xb
        self.linear += self.linear_lr * torch.outer(error, xb) / (xb.dot(xb) + 1e-6)

    def retrieve(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, weights) of the top-k stored entries most similar to ``features``."""
        x = features.detach().float().cpu().view(1, -1)
        similarity = torch.nn.functional.cosine_similarity(self.features, x, dim=1).clamp(min=0)
        weight = similarity * self.decay ** (self.count - 1 - self.added).float()
        top = torch.topk(weight, min(self.k, len(weight)))
        return top.indices, top.values

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The correction for a state with these features (zeros while the memory is empty)."""
        if len(self) == 0:
            return torch.zeros(self.residuals.shape[1])
        index, weight = self.retrieve(features)
        nearest = (weight[:, None] * self.residuals[index]).sum(0) / weight.sum().clamp(min=1e-8)
        x = features.detach().float().cpu()
        linear = self.linear @ torch.cat([x, torch.ones(1)])
        return (0.7 * nearest + 0.3 * linear).clamp(-self.clamp, self.clamp)

    def state_dict(self) -> dict:
        return {"features": self.features, "residuals": self.residuals, "losses": self.losses,
                "added": self.added, "count": self.count, "linear": self.linear}

    def load_state_dict(self, state: dict) -> None:
        self.features, self.residuals = state["features"].clone(), state["residuals"].clone()
        self.losses, self.added = state["losses"].clone(), state["added"].clone()
        self.count, self.linear = int(state["count"]), state["linear"].clone()
