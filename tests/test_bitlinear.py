"""BitNet b1.58 layers: the forward formula, straight-through gradients, packing, training."""

import json

import pytest
import torch
import torch.nn.functional as F
from support import TINY_YAML

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.model import GPT, ModelConfig
from trainframe.model.bitlinear import (
    BitLinear,
    dequantize,
    pack_ternary,
    quantize_activation,
    ternarize,
    unpack_ternary,
)
from trainframe.plugins import current


def reference_forward(x, w, group_size):
    """The BitNet b1.58 formula written out independently, element by element where it matters."""
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    sx = 127.0 / x.abs().max(dim=-1, keepdim=True).values
    xq = torch.clamp(torch.round(x * sx), -128, 127) / sx
    wq = torch.empty_like(w)
    for row in range(w.shape[0]):
        for start in range(0, w.shape[1], group_size):
            g = w[row, start:start + group_size]
            gamma = g.abs().mean()
            wq[row, start:start + group_size] = torch.clamp(torch.round(g / gamma), -1, 1) * gamma
    return xq @ wq.T


@pytest.mark.parametrize("group_size", [16, None])
def test_forward_matches_formula(group_size):
    torch.manual_seed(0)
    layer = BitLinear(64, 24, group_size)
    x = torch.randn(3, 5, 64) * 3
    with torch.no_grad():
        got = layer(x)
    want = reference_forward(x, layer.weight, group_size or 64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # With autograd on, the straight-through form gives the same values.
    torch.testing.assert_close(layer(x).detach(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group_size", [32, None])
def test_weights_take_three_values_per_group(group_size):
    torch.manual_seed(1)
    layer = BitLinear(64, 16, group_size)
    wq = layer.quantized_weight().detach()
    g = group_size or 64
    for row in range(16):
        for start in range(0, 64, g):
            gamma = layer.weight[row, start:start + g].abs().mean().detach()
            values = wq[row, start:start + g].unique()
            torch.testing.assert_close(values, torch.stack([-gamma, 0 * gamma, gamma]))


def test_gradients_reach_latent_weights():
    torch.manual_seed(2)
    layer = BitLinear(32, 8, 16)
    x = torch.randn(4, 32, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Straight-through: d/dW is what an unquantized linear fed with the quantized input would give.
    xq = quantize_activation(F.rms_norm(x.detach(), (32,), eps=1e-6))
    expected = (2 * y.detach()).T @ xq
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-4, atol=1e-5)


def test_pack_roundtrip_and_size():
    torch.manual_seed(3)
    w = torch.randn(10, 24)
    t, scale = ternarize(w, 8)
    assert set(t.unique().tolist()) == {-1, 0, 1} and scale.shape == (10, 3)
    packed = pack_ternary(t)
    assert packed.dtype == torch.uint8 and packed.numel() == 60  # 240 weights, 2 bits each
    assert torch.equal(unpack_ternary(packed, t.shape), t)
    layer = BitLinear(24, 10, 8)
    with torch.no_grad():
        layer.weight.copy_(w)
    assert torch.equal(dequantize(t, scale), layer.quantized_weight().detach())


def test_gpt_uses_bitlinear_for_block_linears_only():
    cfg = ModelConfig(preset="tiny", d_model=32, n_head=2, vocab_size=50, bitlinear=True, bitlinear_group_size=32)
    model = GPT(cfg)
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert kinds.pop("lm_head") == "Linear"
    assert set(kinds.values()) == {"BitLinear"} and len(kinds) == 2 * 4  # qkv, o, up, down
    assert ModelConfig(preset="tritter-100m").bitlinear
    assert not ModelConfig(preset="tritter-100m", bitlinear=False).bitlinear
    assert not ModelConfig(preset="tiny").bitlinear
    with pytest.raises(ValueError, match="bitlinear_group_size .64. must divide d_model .32."):
        ModelConfig(preset="tiny", d_model=32, n_head=2, bitlinear=True)
    # null = one scale per output row, and it survives a round trip through the resolved config
    per_tensor = ModelConfig(preset="tiny", d_model=32, n_head=2, bitlinear=True, bitlinear_group_size=None)
    assert ModelConfig(**per_tensor.model_dump()).bitlinear_group_size is None


def test_accumulated_gradients_equal_one_batch():
    """Two half batches through the straight-through estimator add up to the full batch's gradient."""
    torch.manual_seed(4)
    model = GPT(ModelConfig(preset="tiny", d_model=32, n_head=2, n_layer=1, context=16, vocab_size=40,
                            bitlinear=True, bitlinear_group_size=16))
    x, y = torch.randint(0, 40, (4, 16)), torch.randint(0, 40, (4, 16))
    model(x, y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for part in (slice(0, 2), slice(2, 4)):
        (model(x[part], y[part]) / 2).backward()
    for a, b in zip(full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tiny_bitlinear_model_trains(tmp_path):
    """200 steps on Tiny Shakespeare on CPU: the loss falls well below the uniform-guess level."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    plugins = current()
    cfg = load_config(path, ["model.bitlinear=true", "model.bitlinear_group_size=32", "model.n_layer=1",
                             "trainer.max_steps=200", "trainer.save_every=0", "trainer.log_every=5"],
                      plugins.registry)
    trainer = build_trainer(cfg, plugins, tmp_path / "run")
    assert type(trainer.model.blocks[0].mlp.down).__name__ == "BitLinear"
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    first, last = losses[0], sum(losses[-3:]) / 3
    assert first > 4.0  # ln(258) = 5.55 for a uniform guess
    assert last < 3.0 and last < first - 1.5, losses
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val and val[-1] < 3.3
