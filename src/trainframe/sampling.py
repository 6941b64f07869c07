"""Sampling documents from a trained model: the part of ``trainframe generate`` that plugins'
generation checks (completion, infill) share. ``model.generate`` does the decoding; this adds the
stop token, the tokenizer's constraints and batching."""

from __future__ import annotations

import torch

from trainframe.errors import UserError
from trainframe.protocols import SupportsAllowedNext, SupportsClosingCost


def sample_documents(model, tokenizer, start: list[int], prompt: list[int], n: int, *, max_tokens: int,
                     batch_size: int = 16, constrained: bool = False, temperature: float = 0.8,
                     top_k: int | None = 50, top_p: float | None = None, seed: int = 0, progress=None,
                     allowed_new=None):
    """Yield (new ids, finished) for ``n`` samples continuing ``start + prompt``.

    A sample is finished when it emits the tokenizer's ``eos_id`` (``pad_id`` for tokenizers whose
    documents end in padding). ``constrained`` masks every step with ``allowed_next(prompt + new)``;
    a tokenizer that also has ``closing_cost`` gets the tokens left as ``budget``, so every sample
    closes within ``max_tokens``, its end token included. ``allowed_new(new ids)``: a mask
    function of the new tokens alone, used instead (an infill's middle, a typed completion).
    """
    stop = getattr(tokenizer, "eos_id", None)
    stop = getattr(tokenizer, "pad_id", None) if stop is None else stop
    allowed = None
    if allowed_new is not None:
        base = len(start) + len(prompt)
        allowed = lambda row: allowed_new(row[base:])  # noqa: E731
    elif constrained:
        if not isinstance(tokenizer, SupportsAllowedNext):
            raise UserError(f"--constrained: the tokenizer {type(tokenizer).__name__} has no allowed_next")
        skip, base = len(start), len(start) + len(prompt)
        if isinstance(tokenizer, SupportsClosingCost) and stop is not None:
            allowed = lambda row: tokenizer.allowed_next(row[skip:], budget=max_tokens - 1 - (len(row) - base))
        else:
            allowed = lambda row: tokenizer.allowed_next(row[skip:])
        try:
            allowed(start + prompt)
        except ValueError as e:
            raise UserError(f"--constrained: the prompt cannot be completed: {e}") from None
        if isinstance(tokenizer, SupportsClosingCost) and (need := tokenizer.closing_cost(prompt) + 1) > max_tokens:
            raise UserError(f"--max-tokens: {max_tokens} is too few: the shortest complete document from this "
                            f"prompt takes {need} more tokens, its end token included")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    context = start + prompt
    for first in range(0, n, batch_size):
        rows = min(batch_size, n - first)
        idx = torch.tensor([context] * rows, device=device)
        with torch.no_grad():
            out = model.generate(idx, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 eos_id=stop, allowed_fn=allowed, generator=gen)
        for row in out[:, len(context):].tolist():
            finished = stop is not None and stop in row
            yield (row[: row.index(stop)] if finished else row), finished
        if progress is not None:
            progress(rows)
