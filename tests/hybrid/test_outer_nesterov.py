"""Outer Nesterov (``outer``) and its gated form (``outer-gated``): the outer step's arithmetic, exact
rollback, exact resume mid-block, and the engine's deferred sync kept on."""

import json
import math

import pytest
import torch
from support import SHAKESPEARE

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.errors import UserError
from trainframe.plugins import load_plugins

CONFIG = f"""
name: outer-test
seed: 5
model: {{name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}, val_fraction: 0.1}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: cosine, warmup_steps: 2}}
phases: {{name: outer, every: 4, momentum: 0.7, outer_lr: 0.9}}
loggers: [{{name: jsonl}}]
trainer: {{max_steps: 18, batch_size: 4, eval_every: 0, eval_batches: 1, log_every: 1, save_every: 0,
          sample_tokens: 0, device: cpu}}
"""
GATED = ["phases={name: outer-gated, every: 4, momentum: 0.7, verify_batches: 2, explore: 2, hidden: 8}"]
# the gated form's control: one candidate, so verification and rollback without the ensemble
VERIFIED = ["phases={name: outer-gated, every: 4, momentum: 0.7, verify_batches: 2, scales: [1.0]}"]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "outer.yaml"
    path.write_text(CONFIG)
    return path


def make(plugins, config, run_dir, *overrides):
    return build_trainer(load_config(config, list(overrides), plugins.registry), plugins, run_dir)


def flat(trainer):
    return torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_outer_step_is_nesterov_on_the_block_displacement(plugins, config, tmp_path):
    t = make(plugins, config, tmp_path / "a")
    c = t.controller
    anchor = flat(t)
    c.start(t)  # as fit() does: the first block starts here
    for _ in range(3):
        t.train_step()
    momentum = torch.cat([m.flatten() for m in c.momentum]).clone()
    assert torch.equal(momentum, torch.zeros_like(momentum)) and c.inner == 3
    # the 4th step: inner update, then the outer step from the block's anchor
    t.train_step()
    assert c.inner == 0 and c.outer_steps == 1
    after = flat(t)
    m = torch.cat([m.flatten() for m in c.momentum])
    g = m.clone()  # first block: m = 0.7 * 0 + g
    inner = anchor - g
    expected = anchor - 0.9 * (g + 0.7 * m)
    assert torch.allclose(after, expected, atol=1e-6)
    assert not torch.allclose(after, inner, atol=1e-4)  # it did move beyond the inner result
    assert torch.equal(torch.cat([a.flatten() for a in c.anchor]), after)


def test_outer_lr_one_without_momentum_is_plain_training(plugins, config, tmp_path):
    plain = make(plugins, config, tmp_path / "plain", "phases={name: full}")
    outer = make(plugins, config, tmp_path / "outer", "phases={name: outer, every: 4, momentum: 0.0, outer_lr: 1.0}")
    outer.controller.start(outer)
    for _ in range(9):
        plain.train_step()
        outer.train_step()
    assert torch.allclose(flat(plain), flat(outer), atol=1e-6)


def test_outer_controllers_keep_the_deferred_sync(plugins, config, tmp_path):
    for overrides in ([], GATED):
        t = make(plugins, config, tmp_path / str(len(overrides)), *overrides, "optim.fused=true")
        assert not t.controller.wants_host_values
        assert t.defer_sync or not t.optimizer.defaults.get("fused")


def test_gated_rollback_restores_the_exact_inner_result(plugins, config, tmp_path, monkeypatch):
    t = make(plugins, config, tmp_path / "g", *GATED)
    c = t.controller
    c.start(t)
    for _ in range(3):
        t.train_step()
    optimizer_before = {k: v.clone() for k, v in t.optimizer.state[t.params[0]].items()}
    # Every candidate measured worse than the inner result: the step must be rolled back.
    calls = []
    real = c._verification_loss

    def worse_after_move(trainer):
        loss = real(trainer)
        calls.append(loss)
        return loss if len(calls) % 2 == 1 else loss + 1.0

    monkeypatch.setattr(c, "_verification_loss", worse_after_move)
    inner = {}

    def spy(pairs, alpha=1.0):
        inner["weights"] = [p.detach().clone() for p, _ in pairs]
        type(t).apply_weight_delta(t, pairs, alpha)

    monkeypatch.setattr(t, "apply_weight_delta", spy)
    t.train_step()
    assert c.rollbacks == 1 and c.history[-1]["rolled_back"]
    for p, w in zip(c.params, inner["weights"]):
        assert torch.equal(p, w)  # bit-exact: restored from a copy, not by subtracting the move
    after = t.optimizer.state[t.params[0]]
    assert int(after["step"]) == int(optimizer_before["step"]) + 1  # only the inner step touched it
    assert torch.equal(torch.cat([a.flatten() for a in c.anchor]), flat(t))


def test_gated_verification_rows_are_held_out_of_training(plugins, config, tmp_path):
    small = tmp_path / "small.txt"  # 44 windows of 32 bytes: 40 to train on, so 18 steps of 4 read 2 epochs
    small.write_text(SHAKESPEARE.read_text()[: 44 * 32 + 1])
    t = make(plugins, config, tmp_path / "v", *GATED, f"data.path={small}")
    trained = []
    next_batch = t.dataset.next_batch
    t.dataset.next_batch = lambda size: trained.append(next_batch(size)) or trained[-1]
    t.fit()
    c = t.controller
    assert len(c.verify) == 2 and c.outer_steps == 4
    assert t.dataset.state_dict()["held"] == 2 * 4  # two batches of 4 rows, in the checkpointed position
    verify = {tuple(r) for x, _ in c.verify for r in x.tolist()}
    seen = {tuple(r) for x, _ in trained for r in x.tolist()}
    assert len(verify) == 8 and verify.isdisjoint(seen) and len(seen) == 40 - 8  # every other window, twice
    assert [h["scale"] for h in c.history[:2]] == [0.5, 1.0]  # explore: the scales in turn
    rows = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["outer_gain"]) for r in rows if "outer_gain" in r)
    assert sum("outer_gain" in r for r in rows) == 4


def test_one_candidate_verifies_without_the_ensemble(plugins, config, tmp_path):
    t = make(plugins, config, tmp_path / "one", *VERIFIED)
    t.fit()
    c = t.controller
    assert c.dynamics is None and c.corrector is None and "dynamics" not in c.state_dict()
    assert c.outer_steps == 4 and [h["scale"] for h in c.history] == [1.0] * 4
    assert c.rollbacks == sum(h["rolled_back"] for h in c.history)
    rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert {r["outer_scale"] for r in rows if "outer_scale" in r} <= {0.0, 1.0}  # 0: rolled back


@pytest.mark.parametrize("overrides", [[], GATED, VERIFIED], ids=["outer", "gated", "verified"])
def test_resume_mid_block_gives_the_same_losses(plugins, config, tmp_path, overrides):
    a = make(plugins, config, tmp_path / "a", *overrides)
    a.fit()
    b = make(plugins, config, tmp_path / "b", *overrides)
    b.controller.start(b)
    for _ in range(6):  # between the block ends at 4 and 8
        b.train_step()
    b.save()
    c = make(plugins, config, tmp_path / "b", *overrides)
    c.resume()
    c.fit()
    resumed = losses(tmp_path / "b")
    assert resumed == {s: v for s, v in losses(tmp_path / "a").items() if s > 6}
    for p, q in zip(a.model.parameters(), c.model.parameters()):
        assert torch.equal(p, q)


def test_gated_needs_a_dataset_that_can_hold_rows_out(plugins, config, tmp_path):
    t = make(plugins, config, tmp_path / "n", *GATED)

    class Plain:  # the Dataset protocol and nothing more
        def __init__(self, inner):
            self.next_batch, self.val_batches = inner.next_batch, inner.val_batches
            self.state_dict, self.load_state_dict = inner.state_dict, inner.load_state_dict

    t.dataset = Plain(t.dataset)
    with pytest.raises(UserError, match="outer-gated: the dataset \\(Plain\\) cannot hold rows out of training"):
        t.fit()
