"""Muon for the hidden weight matrices, AdamW for everything else.

Muon (Keller Jordan, 2024, https://kellerjordan.github.io/posts/muon/) replaces a matrix's
momentum update by the nearest semi-orthogonal matrix (a few Newton-Schulz iterations), so every
direction of the update moves at the same rate. That suits hidden linear layers only: an embedding
is a lookup whose rows see sparse gradients, the head's rows are per-token output scores, and
vectors (gains, biases) have no matrix structure, so those stay on AdamW.

The factory returns two optimizers; the engine combines them (``trainframe.optim.combined``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from torch.optim._muon import _adjust_lr

from trainframe.config import ComponentConfig
from trainframe.optim.adamw import Beta
from trainframe.errors import UserError


class MuonConfig(ComponentConfig):
    # Defaults of Keller Jordan's Muon for small GPTs (modded-nanogpt): lr 0.02 with the original
    # shape adjustment, momentum 0.95, Nesterov, 5 Newton-Schulz steps, weight decay 0.01.
    lr: float = Field(0.02, gt=0, description="peak lr of the hidden matrices (the schedule scales it)")
    momentum: float = Field(0.95, ge=0, lt=1, description="Muon momentum")
    nesterov: bool = Field(True, description="Nesterov momentum")
    ns_steps: int = Field(5, gt=0, lt=100, description="Newton-Schulz iterations per step")
    weight_decay: float = Field(0.01, ge=0, description="decoupled decay of the hidden matrices: lr x this per step")
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = Field(
        "original", description="lr per matrix shape: original = lr x sqrt(max(1, rows/cols)); match_rms_adamw = "
        "lr x 0.2 sqrt(max(rows, cols)), which takes an AdamW-sized lr (~3e-4)")
    # Far above plain AdamW's 3e-4: with the matrices on Muon, AdamW trains only embeddings, head
    # and vectors, which take larger steps (modded-nanogpt's head lr is 8e-3, nanochat's 4e-3, both
    # embeddings higher still). On configs/tiny-cpu.yaml (200 steps) val loss was 2.000 at 8e-3,
    # 2.013 at 5e-3, 2.025 at 3e-3; AdamW alone (lr 2e-3) 2.056.
    adamw_lr: float = Field(8e-3, gt=0, description="peak lr of the AdamW params: embeddings, adamw_modules, vectors")
    adamw_betas: tuple[Beta, Beta] = Field((0.9, 0.95), description="AdamW betas")
    adamw_eps: float = Field(1e-8, gt=0, description="AdamW eps")
    adamw_weight_decay: float = Field(0.1, ge=0, description="AdamW decay of the matrices of adamw_modules "
                                      "(the head); embeddings and vectors get none")
    adamw_modules: list[str] = Field(["lm_head"], description="modules (names as in model.named_modules()) whose "
                                     "params stay on AdamW: the output head")
    fused: bool | None = Field(None, description="fused CUDA AdamW kernel; null = on for CUDA")


def split_params(model: torch.nn.Module, adamw_modules: list[str]) -> dict[str, list[torch.nn.Parameter]]:
    """Each trainable parameter, once (tied weights too), into ``muon`` (2-D, not an embedding, not
    in ``adamw_modules``), ``adamw_decay`` (other matrices: the head's, >2-D weights) or
    ``adamw_no_decay`` (embeddings, gains, biases), the decay rule of ``optim.adamw``."""
    modules = dict(model.named_modules())
    for name in adamw_modules:
        if name not in modules:  # a typo would silently put the head on Muon
            children = ", ".join(n for n, _ in model.named_children())
            raise ValueError(f"adamw_modules: the model has no module '{name}' (its top-level modules: {children}); "
                             "name its output head, or set optim.adamw_modules=[]")
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    on_adamw = {id(p) for name in adamw_modules for p in modules[name].parameters()}
    groups = {"muon": [], "adamw_decay": [], "adamw_no_decay": []}
    for p in model.parameters():  # tied parameters appear once; an embedding tied to the head counts as embedding
        if not p.requires_grad:
            continue
        if id(p) in embedding or p.ndim < 2:
            groups["adamw_no_decay"].append(p)
        elif p.ndim == 2 and id(p) not in on_adamw:
            groups["muon"].append(p)
        else:
            groups["adamw_decay"].append(p)
    if not groups["muon"]:
        raise ValueError("no 2-D weight matrix for Muon outside embeddings and optim.adamw_modules; "
                         "use optim.name=adamw for this model")
    return groups


def _orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                   eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration on a stack (n, rows, cols) of matrices at once."""
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class StackedMuon(torch.optim.Muon):
    """torch.optim.Muon with its step run on every matrix of one shape at once: the same update, state
    and checkpoints, in a few batched kernels per shape instead of ~20 per matrix. On tct-small
    (32 matrices, H200) torch's per-matrix loop made a 7.8 ms step take 37 ms, all of it launches.

    Like fused AdamW it skips a step on the device when the engine sets ``found_inf`` (a 0-dim
    tensor, 1 for a NaN/Inf loss or gradient): weights and momentum stay as they were, with no host
    sync (``skips_on_device``)."""

    skips_on_device = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            by_shape: dict[torch.Size, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(p.shape, []).append(i)
            for shape, index in by_shape.items():
                self._step_stack([params[i] for i in index], [grads[i] for i in index], [bufs[i] for i in index],
                                 group, _adjust_lr(group["lr"], group["adjust_lr_fn"], shape), found_inf)
        return loss

    @staticmethod
    def _step_stack(params, grads, bufs, group, lr: float, found_inf) -> None:
        momentum, decay = group["momentum"], group["lr"] * group["weight_decay"]
        g, buf = torch.stack(grads), torch.stack(bufs)
        if found_inf is None:
            keep = 1.0
        else:  # a skipped step: a zero-weight momentum update and no weight change, NaNs kept out
            skip = found_inf.to(torch.bool)
            keep = (~skip).to(g.dtype)
            g = torch.where(skip, 0.0, g)
        buf.lerp_(g, (1 - momentum) * keep)
        torch._foreach_copy_(bufs, list(buf.unbind(0)))
        update = g.lerp(buf, momentum) if group["nesterov"] else buf
        ortho = _orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"]).to(g.dtype)
        if decay:
            torch._foreach_mul_(params, 1 - decay * keep)
        torch._foreach_add_(params, list((ortho * (-lr * keep)).unbind(0)) if found_inf is not None
                            else list(ortho.unbind(0)), alpha=1.0 if found_inf is not None else -lr)


def build_muon(cfg: MuonConfig, model: torch.nn.Module, device: torch.device) -> list[torch.optim.Optimizer]:
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"optim.name=muon needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}")
    groups = split_params(model, cfg.adamw_modules)
    muon = StackedMuon([{"name": "muon", "params": groups["muon"]}], lr=cfg.lr, weight_decay=cfg.weight_decay,
                            momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.ns_steps,
                            adjust_lr_fn=cfg.adjust_lr_fn)
    adamw_groups = [{"name": "adamw_decay", "params": groups["adamw_decay"], "weight_decay": cfg.adamw_weight_decay},
                    {"name": "adamw_no_decay", "params": groups["adamw_no_decay"], "weight_decay": 0.0}]
    adamw_groups = [g for g in adamw_groups if g["params"]]
    if not adamw_groups:
        return [muon]
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    adamw = torch.optim.AdamW(adamw_groups, lr=cfg.adamw_lr, betas=cfg.adamw_betas, eps=cfg.adamw_eps,
                              fused=fused or None)
    return [muon, adamw]
