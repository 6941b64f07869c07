"""Chunked linear + cross-entropy: same loss and gradients as the plain head + F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainframe.model.losses import linear_cross_entropy

N, D, V = 37, 16, 53  # N prime: no chunk size below divides it


def reference(hidden, weight, targets, reduction="mean"):
    """What GPT.forward computes: fp32 logits, then cross-entropy over non-ignored tokens."""
    logits = F.linear(hidden, weight).float()
    flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                           reduction="none" if reduction == "none" else "sum")
    if reduction == "none":
        return flat.view(targets.shape)
    if reduction == "sum":
        return flat
    return flat / (targets != -1).sum().clamp(min=1)


def make(shape=(N,), dtype=torch.float32, ignore=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, D, generator=g, dtype=dtype)
    weight = torch.randn(V, D, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, V, shape, generator=g)
    targets[torch.rand(shape, generator=g) < ignore] = -1
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, reduction, upstream=None, **kw):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w, targets, reduction, **kw)
    # "none": a non-uniform upstream gradient, so per-row scaling is exercised.
    (loss * upstream).sum().backward() if upstream is not None else loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 1000])
def test_matches_plain_autograd(reduction, chunk_rows):
    hidden, weight, targets = make(shape=(3, 13) if chunk_rows == 8 else (N,))
    up = torch.rand(targets.shape) + 0.5 if reduction == "none" else None
    ref = loss_and_grads(reference, hidden, weight, targets, reduction, up)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, reduction, up, chunk_rows=chunk_rows)
    assert got[0].shape == ref[0].shape and got[0].dtype == torch.float32
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_not_nan(reduction):
    hidden, weight, targets = make(ignore=1.0)
    up = torch.ones(targets.shape) if reduction == "none" else None
    loss, gh, gw = loss_and_grads(linear_cross_entropy, hidden, weight, targets, reduction, up, chunk_rows=8)
    assert torch.all(loss == 0)
    assert torch.all(gh == 0) and torch.all(gw == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(reduction):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([3, -1, 0, 8, -1, 5, 2])
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, targets, reduction, chunk_rows=3), (hidden, weight))


def test_only_one_input_needs_grad():
    hidden, weight, targets = make()
    h = hidden.clone().requires_grad_()
    linear_cross_entropy(h, weight, targets, chunk_rows=8).backward()
    ref_h = hidden.clone().requires_grad_()
    reference(ref_h, weight, targets).backward()
    torch.testing.assert_close(h.grad, ref_h.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_grad_path(reduction):
    hidden, weight, targets = make()
    with torch.no_grad():
        got = linear_cross_entropy(hidden.requires_grad_(), weight, targets, reduction, chunk_rows=5)
    assert not got.requires_grad
    torch.testing.assert_close(got, reference(hidden.detach(), weight, targets, reduction))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bf16_autocast_matches_plain_head_under_autocast(reduction):
    hidden, weight, targets = make(shape=(4, 16))
    up = torch.rand(targets.shape) + 0.5 if reduction == "none" else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = loss_and_grads(reference, hidden, weight, targets, reduction, up)
        got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, reduction, up, chunk_rows=24)
    assert got[0].dtype == torch.float32  # log-softmax in fp32
    assert got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)
    # The matmul really ran in bf16: the fp32 result differs from it by more than fp32 noise.
    exact = reference(hidden, weight, targets, reduction)
    assert not torch.allclose(got[0], exact, rtol=1e-6, atol=1e-6)


def test_tied_weight_gets_both_gradients():
    torch.manual_seed(0)
    _, _, targets = make(shape=(2, 9))
    idx = torch.randint(0, V, (2, 9))

    def run(loss_fn):
        emb = torch.nn.Embedding(V, D)
        with torch.no_grad():
            emb.weight.copy_(torch.randn(V, D, generator=torch.Generator().manual_seed(3)))
        x = torch.tanh(emb(idx))  # a nonlinearity between input embedding and head
        loss_fn(x, emb.weight, targets).backward()
        return emb.weight.grad

    got = run(lambda x, w, t: linear_cross_entropy(x, w, t, chunk_rows=4))
    ref = run(reference)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_bad_reduction_raises():
    hidden, weight, targets = make()
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="avg")
