"""AdamW with named parameter groups: weight decay on matrices only."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from trainframe.config import ComponentConfig


# A beta of 1 or more never forgets (or grows); torch would refuse it only when building.
Beta = Annotated[float, Field(ge=0, lt=1)]


class AdamWConfig(ComponentConfig):
    lr: float = Field(3e-4, gt=0, description="peak learning rate (the schedule scales it)")
    betas: tuple[Beta, Beta] = Field((0.9, 0.95), description="AdamW beta1, beta2")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(0.1, ge=0, description="applied to matrices only; norms, biases and "
                                "embeddings get none")
    fused: bool | None = Field(None, description="fused CUDA kernel; null = on for CUDA")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Matrices of linear layers decay; norms, biases and embeddings don't (decaying an embedding
    row pulls rare tokens to zero; norm gains and biases are not scale-invariant weights)."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and id(p) not in embedding_params else no_decay).append(p)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_adamw(cfg: AdamWConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.eps, fused=fused or None)
