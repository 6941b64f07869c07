"""trainer.activation_checkpointing and trainer.loss_chunk: the same losses and gradients as without,
with torch.compile; what they refuse (in the loop with the hybrid controller: tests/hybrid)."""

import pytest
import torch
import torch.nn.functional as F
from support import TINY_YAML

from trainframe.config import TrainerConfig, load_config
from trainframe.engine.distributed import World
from trainframe.engine.loop import set_training_memory, use_cuda_graphs
from trainframe.errors import UserError
from trainframe.model import GPT, ModelConfig
from trainframe.model.loss import chunked_cross_entropy
from trainframe.plugins import load_plugins

V = 97


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{"d_model": 32, "n_layer": 2, "n_head": 2, "context": 16, "vocab_size": V, **kw}))


def batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, V, (2, 13), generator=g), torch.randint(0, V, (2, 13), generator=g)
    y[0, :4] = -1
    y[1, 7] = -1
    return x, y


def loss_and_grads(model, call, ac="none", chunk=None, reduction="mean"):
    model.set_training_memory(ac, chunk)
    model.zero_grad(set_to_none=True)
    x, y = batch()
    torch.manual_seed(2)  # the same dropout masks either way
    loss = call(x, y, reduction=reduction)
    weights = torch.linspace(0.5, 1.5, loss.numel()).view(loss.shape)  # 'none': a gradient per token
    (loss * weights).sum().backward()
    model.set_training_memory()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ac, chunk", [("blocks", None), ("none", 5), ("none", 1000), ("blocks", 7)])
def test_same_loss_and_gradients(reduction, ac, chunk):
    for kw in ({"dropout": 0.1}, {"tie_embeddings": True}):
        model = tiny_gpt(**kw)
        assert_same(loss_and_grads(model, model, reduction=reduction),
                    loss_and_grads(model, model, ac, chunk, reduction))


def test_chunked_loss_matches_cross_entropy():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 11, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (3, 11), generator=g)
    y[2] = -1
    scale = torch.rand(33, generator=g, dtype=torch.float64)
    ref = F.cross_entropy((x @ w.t()).reshape(-1, 50), y.reshape(-1), ignore_index=-1, reduction="none")
    ref_grads = torch.autograd.grad((ref * scale).sum(), (x, w))
    got = chunked_cross_entropy(x, w, y, 4)  # the softmax runs in float32, as the model's does
    grads = torch.autograd.grad((got.double() * scale).sum(), (x, w))
    torch.testing.assert_close(got, ref.float(), rtol=1e-6, atol=1e-6)
    assert torch.all(got.view(3, 11)[2] == 0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model = tiny_gpt()
    model.set_training_memory(loss_chunk=4)
    x, y = batch()
    assert model(x, torch.full_like(y, -1)).item() == 0.0  # all ignored: 0, not NaN, as without chunks


def test_chunked_loss_under_bf16_autocast():
    model = tiny_gpt()

    def call(x, y, reduction):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x, y, reduction=reduction)

    assert_same(loss_and_grads(model, call), loss_and_grads(model, call, chunk=6), rtol=2e-2, atol=2e-3)


@pytest.mark.slow
def test_with_torch_compile():
    """The aot_eager backend runs what inductor compiles (dynamo, the checkpoint in the joint graph,
    the partitioner) in seconds; inductor itself gave the same on the CPU."""
    model = tiny_gpt()
    compiled = torch.compile(model, backend="aot_eager")
    assert_same(loss_and_grads(model, model), loss_and_grads(model, compiled, "blocks", 7))


def test_cuda_graphs_and_models_without_support():
    cuda = torch.device("cuda")  # only read by the checks, nothing runs there
    for option in ({"activation_checkpointing": "blocks"}, {"loss_chunk": 1024}):
        with pytest.raises(UserError, match="does not combine with trainer"):
            use_cuda_graphs(TrainerConfig(cuda_graphs=True, **option), True, cuda, World())
        assert use_cuda_graphs(TrainerConfig(cuda_graphs="auto", **option), True, cuda, World()) is False
    assert use_cuda_graphs(TrainerConfig(cuda_graphs="auto"), True, cuda, World()) is True

    class Plain(torch.nn.Module):
        pass

    set_training_memory(Plain(), TrainerConfig())  # defaults: nothing asked of the model
    with pytest.raises(UserError, match=r"^trainer.loss_chunk: the model \(Plain\) has no set_training_memory"):
        set_training_memory(Plain(), TrainerConfig(loss_chunk=8))


def test_bad_values_are_one_line(plugins, tmp_path):
    (tmp_path / "c.yaml").write_text(TINY_YAML)
    for override, message in (("trainer.loss_chunk=0", "trainer.loss_chunk: expected an integer > 0, got 0"),
                              ("trainer.activation_checkpointing=layers",
                               "trainer.activation_checkpointing: expected one of 'none' or 'blocks', got 'layers'")):
        with pytest.raises(UserError) as e:
            load_config(tmp_path / "c.yaml", [override], plugins.registry)
        assert str(e.value) == f"command line: {message}"
