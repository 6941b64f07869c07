"""The muon optimizer (Muon for hidden matrices, AdamW for the rest) and CombinedOptimizer, the shape
the engine gives a factory's list of optimizers."""

import copy
import json
import shutil
import types

import pytest
import torch
from torch import nn

import trainframe
from trainframe.cli import main
from trainframe.config import ComponentConfig, load_config
from trainframe.engine import checkpoint as ckpt
from trainframe.engine.build import build_model, build_optimizer, build_tokenizer, build_trainer
from trainframe.engine.distributed import World
from trainframe.errors import UserError
from trainframe.optim.combined import CombinedOptimizer
from trainframe.optim.muon import MuonConfig, build_muon, split_params
from trainframe.plugins import load_plugins

MUON = "optim={name: muon}"


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def make_trainer(plugins, config, run_dir, *overrides):
    return build_trainer(load_config(config, list(overrides), plugins.registry), plugins, run_dir)


def train_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_same(a, b):
    """Nested checkpoint data (dicts, lists, tensors, numbers) equal exactly."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


# ------------------------------------------------------------------------------ training with muon
def test_muon_resumes_exactly(tiny_config, tmp_path):
    """A run that died after its step-4 checkpoint, resumed, logs the uninterrupted run's losses and
    ends with its weights and both optimizers' state, bit for bit."""
    overrides = [MUON, "trainer.max_steps=12", "trainer.save_every=4", "model.dropout=0.1"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert main(["train", str(tiny_config), "--run-dir", str(reference), *overrides]) == 0
    shutil.copytree(reference, resumed)
    for step, path in ckpt.step_checkpoints(resumed / "checkpoints"):
        if step > 4:
            path.unlink()
    assert main(["resume", str(resumed)]) == 0
    assert train_losses(resumed) == train_losses(reference) and len(train_losses(reference)) == 12
    final = [ckpt.load(ckpt.step_path(run / "checkpoints", 12)) for run in (reference, resumed)]
    assert_same(final[0]["model"], final[1]["model"])
    assert_same(final[0]["optimizer"], final[1]["optimizer"])
    assert [len(s["state"]) for s in final[0]["optimizer"]["optimizers"]] == [8, 2]  # 8 block matrices; wte, head


def test_muon_trains_and_the_schedule_reaches_every_group(plugins, tiny_config, tmp_path):
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run", MUON, "trainer.max_steps=40", "trainer.save_every=0")
    assert isinstance(trainer.optimizer, CombinedOptimizer)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["muon", "adamw_decay", "adamw_no_decay"]
    trainer.fit()
    losses = list(train_losses(tmp_path / "run").values())
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0  # from ~4.8 (uniform over 258 bytes: 5.55)
    factor = trainer.schedule(39)
    for g, peak in zip(trainer.optimizer.param_groups, (0.02, 8e-3, 8e-3)):
        assert g["base_lr"] == peak and g["lr"] == pytest.approx(peak * factor)


@pytest.mark.parametrize("on_device", [False, True])
def test_a_nonfinite_step_leaves_both_optimizers_alone(plugins, tiny_config, tmp_path, on_device):
    """Checked on the host, or (fused AdamW + StackedMuon) skipped on the device through found_inf."""
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run", "optim={name: muon, fused: %s}" % on_device)
    assert trainer.defer_sync is on_device
    trainer.train_step()
    before = copy.deepcopy((trainer.model.state_dict(), trainer.optimizer.state_dict()))
    forward = trainer.forward_model
    trainer.forward_model = lambda *args, **kwargs: forward(*args, **kwargs) * float("nan")
    trainer.train_step()
    trainer.flush()
    assert trainer.bad_steps_total == 1
    assert_same(before[0], trainer.model.state_dict())
    moments = lambda state: [member["state"] for member in state["optimizers"]]  # noqa: E731 (lr moved on)
    assert_same(moments(before[1]), moments(trainer.optimizer.state_dict()))


# ------------------------------------------------------------------------------- the param split
class ThirdPartyModel(nn.Module):
    """Names unlike the GPT's: a gain and biases, a 3-D weight, a head called ``head``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.body = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.conv = nn.Conv1d(8, 8, 3)
        self.head = nn.Linear(8, 10, bias=False)


def ids(params):
    return {id(p) for p in params}


def test_split_puts_only_hidden_matrices_on_muon():
    m = ThirdPartyModel()
    groups = split_params(m, ["head"])
    assert ids(groups["muon"]) == ids([m.body.weight])
    assert ids(groups["adamw_decay"]) == ids([m.conv.weight, m.head.weight])
    assert ids(groups["adamw_no_decay"]) == ids([m.embed.weight, m.body.bias, m.norm.weight, m.norm.bias, m.conv.bias])
    with pytest.raises(ValueError, match=r"no module 'lm_head' \(its top-level modules: embed, body, norm, conv, head"):
        split_params(m, ["lm_head"])
    with pytest.raises(ValueError, match="no 2-D weight matrix for Muon"):
        split_params(m, ["head", "body"])


@pytest.mark.parametrize("tied", [False, True])
def test_split_of_the_gpt(plugins, tiny_config, tied):
    cfg = load_config(tiny_config, [MUON, f"model.tie_embeddings={str(tied).lower()}"], plugins.registry)
    model = build_model(cfg, plugins, build_tokenizer(cfg, plugins))
    muon, *adamw = build_muon(MuonConfig(), model, torch.device("cpu"))
    assert ids(muon.param_groups[0]["params"]) == ids(p for n, p in model.named_parameters() if n.startswith("blocks."))
    groups = {g["name"]: ids(g["params"]) for g in adamw[0].param_groups}
    if tied:  # the shared matrix is an embedding: no decay
        assert groups == {"adamw_no_decay": ids([model.wte.weight])}
    else:
        assert groups == {"adamw_decay": ids([model.lm_head.weight]), "adamw_no_decay": ids([model.wte.weight])}


def test_muon_needs_a_torch_that_has_it(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(UserError, match=r"optim.name=muon needs torch >= 2.9 \(torch.optim.Muon\)"):
        build_muon(MuonConfig(), ThirdPartyModel(), torch.device("cpu"))


def test_fsdp2_is_refused_in_one_line(plugins, tiny_config):
    """Checked where the world is known, before any process group is needed."""
    cfg = load_config(tiny_config, [MUON, "trainer.distributed=fsdp2"], plugins.registry)
    model = build_model(cfg, plugins, build_tokenizer(cfg, plugins))
    cpu = torch.device("cpu")
    with pytest.raises(UserError) as e:
        build_optimizer(cfg, plugins, model, cpu, World(rank=0, local_rank=0, size=2))
    assert str(e.value) == ("optim: Muon orthogonalizes whole weight matrices, but trainer.distributed=fsdp2 gives "
                            "each of the 2 ranks a shard of each; use trainer.distributed=ddp (each rank then "
                            "orthogonalizes the full gradient) or an optimizer without Muon")
    assert isinstance(build_optimizer(cfg, plugins, model, cpu, World()), CombinedOptimizer)  # one process: fine
    ddp = load_config(tiny_config, [MUON, "trainer.distributed=ddp"], plugins.registry)
    assert isinstance(build_optimizer(ddp, plugins, model, cpu, World(rank=0, local_rank=0, size=2)), CombinedOptimizer)


# ------------------------------------------------------------------------------ CombinedOptimizer
def sgd_and_adamw(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = CombinedOptimizer([torch.optim.SGD([{"params": model[0].parameters(), "name": "sgd"}], lr=0.1, momentum=0.9),
                             torch.optim.AdamW([{"params": model[1].parameters(), "name": "adamw"}], lr=0.01)])
    return model, opt


def train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(3, 4, generator=g)).square().sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_combined_groups_are_the_members_own():
    _, opt = sgd_and_adamw()
    assert [g["name"] for g in opt.param_groups] == ["sgd", "adamw"]
    assert all(a is b for a, b in zip(opt.param_groups, [g for o in opt.optimizers for g in o.param_groups]))
    for g in opt.param_groups:
        g["lr"] = 0.5
    assert [o.param_groups[0]["lr"] for o in opt] == [0.5, 0.5]


def test_combined_state_dict_round_trip():
    model, opt = sgd_and_adamw()
    train(model, opt, 3)
    state = copy.deepcopy(opt.state_dict())  # as through a checkpoint file: no tensors shared
    assert len(state["optimizers"]) == 2 and len(opt.state) == 4  # moments of all four params
    twin, twin_opt = sgd_and_adamw()
    twin.load_state_dict(model.state_dict())
    twin_opt.load_state_dict(state)
    train(model, opt, 2, seed=2)
    train(twin, twin_opt, 2, seed=2)
    assert_same(model.state_dict(), twin.state_dict())
    assert_same(opt.state_dict(), twin_opt.state_dict())
    with pytest.raises(ValueError, match="the saved optimizer state is of 2 optimizers, this run combines 1 .SGD."):
        CombinedOptimizer(opt.optimizers[:1]).load_state_dict(state)
    with pytest.raises(ValueError, match="is of one optimizer, this run combines 2 .SGD . AdamW."):
        opt.load_state_dict(opt.optimizers[0].state_dict())
    # The form torch.distributed.checkpoint takes for several optimizers (the FSDP2 checkpoint path).
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    fresh, fresh_opt = sgd_and_adamw(seed=3)
    set_optimizer_state_dict(fresh, fresh_opt, get_optimizer_state_dict(model, opt))
    assert_same(opt.state_dict(), fresh_opt.state_dict())


def test_combined_refuses_a_parameter_in_two_members():
    layer = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"a parameter of shape \(2, 2\) is in more than one optimizer"):
        CombinedOptimizer([torch.optim.SGD([layer.weight], lr=0.1), torch.optim.SGD(layer.parameters(), lr=0.1)])


def test_a_factory_returning_a_list_is_combined_and_resumes(tiny_config, tmp_path):
    """A plugin's factory returns two optimizers; the engine combines them, and a checkpoint loads
    into the very members the factory made (nothing to re-bind)."""

    def build_pair(cfg, model, device):
        matrices = [p for p in model.parameters() if p.ndim == 2 and p is not model.wte.weight]
        return (torch.optim.SGD(matrices, lr=0.05, momentum=0.9), torch.optim.AdamW([model.wte.weight], lr=3e-3))

    def trainframe_register(registry):
        registry.add("optimizer", "pair", build_pair, ComponentConfig)

    module = types.ModuleType("pair")
    module.trainframe_register = trainframe.hookimpl(trainframe_register)
    plugins = load_plugins(extra=[("pair", module)])
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run", "optim={name: pair}")
    assert isinstance(trainer.optimizer, CombinedOptimizer)
    members = list(trainer.optimizer)
    trainer.train_step()
    trainer.train_step()
    trainer.save()
    again = make_trainer(plugins, tiny_config, tmp_path / "run", "optim={name: pair}")
    again.resume()
    assert again.step == 2
    assert_same(trainer.optimizer.state_dict(), again.optimizer.state_dict())
    assert [type(o) for o in again.optimizer] == [type(o) for o in members]
    trainer.train_step()
    again.train_step()
    assert_same(trainer.model.state_dict(), again.model.state_dict())


@pytest.mark.parametrize("nesterov", [True, False])
def test_stacked_muon_is_torch_muon(nesterov):
    """The shape-batched step gives torch.optim.Muon's weights and momentum."""
    from trainframe.optim.muon import StackedMuon

    gen = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 16), (16, 64), (16, 64), (16, 16)]
    ours = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = StackedMuon(ours, lr=0.02, weight_decay=0.01, nesterov=nesterov)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.01, nesterov=nesterov)
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        # within one bf16 step of the update (lr 0.02 x 2^-8): a batched bf16 matmul may round apart
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4)
        assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])
