"""Held-out loss: the mean cross-entropy over counted target tokens (targets other than -1), and the
perplexity and bits per character it gives. The training loop's eval (``Trainer.evaluate``) and
``trainframe eval`` both compute it here, so a run's ``val_loss`` and ``eval`` of its checkpoint agree.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def loss_sums(forward, batches, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(loss x counted targets, counted targets) over ``batches`` (on the device), where
    ``forward(*batch)`` is a batch's mean loss over its counted targets. Stays on the device (no
    host sync): the caller reads it back once."""
    sums = torch.zeros(2, device=device, dtype=dtype)
    for batch in batches:
        n = (batch[1] != -1).sum()
        sums += torch.stack([forward(*batch).to(dtype) * n, n.to(dtype)])
    return sums


def scores(loss: float, chars_per_token: float | None = None) -> dict:
    """loss, ppl and, given the dataset's characters per token, bpc (bits per character: comparable
    across tokenizers) of a mean loss."""
    result = {"loss": loss, "ppl": math.exp(min(loss, 50))}
    if chars_per_token:
        result["bpc"] = loss / math.log(2) / chars_per_token
    return result
