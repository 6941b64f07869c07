"""Loss over batches, no training: what ``trainframe eval`` (``trainframe.cli.eval``) and the
workflows plugin's completion eval report.

The numbers come from the training loop's eval code (``trainframe.engine.evaluation``: token-weighted
mean cross-entropy; bf16 autocast on CUDA), so ``val_loss`` in a run's metrics.jsonl and ``eval`` of
the same checkpoint agree.
"""

from __future__ import annotations

import contextlib
import math

import torch

from trainframe.engine import evaluation


@torch.no_grad()
def evaluate(model, batches, device: torch.device, progress=None) -> tuple[float, int, int]:
    """(mean loss over counted target tokens, tokens, batches)."""
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    n = 0

    def on_device():
        nonlocal n
        for batch in batches:
            yield tuple(t.to(device) for t in batch)
            n += 1  # resumed once the batch's loss is queued
            if progress:
                progress(n)

    def forward(x, y, positions=None):  # a packed batch: (inputs, targets, positions)
        with autocast:
            return model(x, y) if positions is None else model(x, y, positions=positions)

    # float64: the token count of a whole val split stays exact
    loss_sum, count = evaluation.loss_sums(forward, on_device(), device, torch.float64).tolist()
    count = int(count)
    return (loss_sum / count if count else math.nan), count, n
