"""Cross-entropy of a linear head over a large vocabulary, in chunks of tokens (``trainer.loss_chunk``).

``chunked_cross_entropy(x, weight, targets, chunk)`` equals
``F.cross_entropy((x @ weight.T).float(), targets, ignore_index=-1, reduction="none")`` but never
holds the (tokens, vocab) float32 logits: the forward pass computes one chunk's logits at a time
and keeps only each token's log-sum-exp; the backward pass computes each chunk's logits again,
turns them into that chunk's gradient (softmax minus the one-hot target, times the incoming
gradient) and multiplies it into the gradients of ``x`` and ``weight`` before the next chunk. Peak
memory of the loss is then a few copies of one chunk's logits (chunk x vocab x 4 bytes each)
instead of several copies of the whole batch's, at the cost of the head's matmul once more in the
backward pass.

It runs outside torch.compile (``torch.compiler.disable``; the model around it is compiled as
usual): traced by inductor, the chunks' buffers were no longer freed one chunk at a time
(docs/performance.md).
"""

from __future__ import annotations

import torch


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-token losses (N,) float32 of ``x`` (N, D) through ``weight`` (V, D), 0 where a target is -1.
    The matmuls run in ``dtype`` (the autocast dtype, or the weights'), the softmax in float32."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk: int, dtype: torch.dtype):
        n = x.shape[0]
        w = weight.to(dtype)
        losses = torch.zeros(n, dtype=torch.float32, device=x.device)
        lse = torch.zeros(n, dtype=torch.float32, device=x.device)
        for s in range(0, n, chunk):
            logits = (x[s:s + chunk].to(dtype) @ w.t()).float()
            t = targets[s:s + chunk]
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
            losses[s:s + chunk] = torch.where(t != -1, lse[s:s + chunk] - picked, 0.0)
            del logits
        ctx.save_for_backward(x, weight, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return losses

    @staticmethod
    def backward(ctx, grad):
        x, weight, targets, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        w = weight.to(dtype)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = torch.empty_like(x) if want_x else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        grad = grad.float()
        for s in range(0, x.shape[0], chunk):
            xc, t = x[s:s + chunk].to(dtype), targets[s:s + chunk]
            # d loss_i / d logits_i = softmax_i - onehot(target_i), times the incoming gradient; 0 for ignored rows
            g = (xc @ w.t()).float().sub_(lse[s:s + chunk, None]).exp_()
            valid = t != -1
            rows = torch.arange(t.shape[0], device=t.device)
            g[rows, t.clamp(min=0)] -= valid.to(g.dtype)
            g.mul_(torch.where(valid, grad[s:s + chunk], 0.0)[:, None])
            g = g.to(dtype)
            if want_x:
                dx[s:s + chunk] = (g @ w).to(x.dtype)
            if want_w:  # accumulated in float32 without a (V, D) temporary of that size
                if dtype == torch.float32:
                    dw.addmm_(g.t(), xc)
                else:
                    dw += g.t() @ xc
            del g
        return dx, (dw.to(weight.dtype) if want_w else None), None, None, None


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-token cross-entropy (N,) float32 of ``x`` (..., D) through a bias-free head ``weight``
    (V, D) against ``targets`` (...) with -1 ignored (loss 0, no gradient), ``chunk`` tokens at a
    time. Under autocast the matmuls run in the autocast dtype, as ``nn.Linear`` would."""
    return outside_compile()(x, weight, targets, chunk)


_OUTSIDE_COMPILE = None


def outside_compile():
    """The loss wrapped in ``torch.compiler.disable``, made on first use: the wrapper imports
    torch._dynamo (seconds), which commands that never train should not pay. A model calls this
    before it is compiled (``GPT.set_training_memory``), so tracing finds it made."""
    global _OUTSIDE_COMPILE
    if _OUTSIDE_COMPILE is None:
        _OUTSIDE_COMPILE = torch.compiler.disable(_chunked_cross_entropy)
    return _OUTSIDE_COMPILE


def _chunked_cross_entropy(x, weight, targets, chunk):
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False):
        return _ChunkedCrossEntropy.apply(x.reshape(-1, x.shape[-1]), weight, targets.reshape(-1), chunk, dtype)
