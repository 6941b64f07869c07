"""Sampling from a GPT: the KV cache, one next-token draw, and the generation loop.

``GPT.generate`` is ``generate(model, ...)``; the loop asks the model only for ``_next_logits``
(the last position's float32 logits, through the cache or without it) and its ``config``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class KVCache:
    """Keys and values of every layer for one generation call; buffers allocated on first use so
    they take the dtype the model computes in (bf16 under autocast)."""

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.pos = 0  # tokens already stored; advanced by GPT.forward after all layers ran

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_zeros(B, H, self.max_len, D)
            self.v[layer] = v.new_zeros(B, H, self.max_len, D)
        end = self.pos + T
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    allowed_fn: Callable[[list[int]], torch.Tensor | Sequence[bool] | None] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` from ``model`` (a GPT) after ``idx`` (B, T); returns
    (B, T + n) including idx.

    temperature 0 = greedy. ``allowed_fn(row_tokens)`` gets a row's tokens so far (prompt
    included) and returns a bool mask over the vocab (True = allowed; a shorter mask leaves the
    rest disallowed) or None for no constraint. With ``eos_id`` a row that emits it is
    finished and padded with eos_id; generation stops early once every row is finished.

    Context: the prompt is cropped to its last ``context`` tokens. While the window fits, one
    token per step goes through the KV cache. Once it is full, each step recomputes the last
    ``context`` tokens without a cache (an exact sliding window, equal to what the model saw in
    training; rolling the cache instead would keep keys computed from tokens that have left
    the window).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (batch, tokens) with at least one token, got {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    try:
        ctx = model.config.context
        out = idx
        cache = KVCache(model.config.n_layer, ctx)
        logits = model._next_logits(idx[:, -ctx:], cache)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for step in range(max_new_tokens):
            mask = _allowed_mask(allowed_fn, out, finished, logits.size(-1))
            nxt = sample_next(logits, temperature, top_k, top_p, mask, generator)
            if eos_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
                finished |= nxt == eos_id
            out = torch.cat((out, nxt[:, None]), dim=1)
            if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
                break
            if cache.pos < ctx:
                logits = model._next_logits(nxt[:, None], cache)
            else:
                logits = model._next_logits(out[:, -ctx:], None)
        return out
    finally:
        model.train(was_training)

def _allowed_mask(allowed_fn, out: torch.Tensor, finished: torch.Tensor, vocab: int) -> torch.Tensor | None:
    if allowed_fn is None:
        return None
    mask = torch.ones(out.size(0), vocab, dtype=torch.bool, device=out.device)
    for b in range(out.size(0)):
        if finished[b]:
            continue
        row = allowed_fn(out[b].tolist())
        if row is None:
            continue
        row = torch.as_tensor(row, dtype=torch.bool, device=out.device).flatten()
        if row.numel() > vocab:
            raise ValueError(f"allowed_fn returned a mask of {row.numel()} entries for a vocab of {vocab}")
        if not bool(row.any()):
            raise ValueError(f"allowed_fn allows no token for row {b} after {out.size(1)} tokens")
        mask[b] = False
        mask[b, : row.numel()] = row
    return mask


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next tokens (B,). Mask first, so top-k/top-p choose among allowed tokens."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (so the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
