"""Stale-loss selective backprop: which rows are kept, the losses it records, exact resume."""

import json

import pytest
import torch
from support import SHAKESPEARE

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.errors import UserError
from trainframe.phases import Phase
from trainframe.plugins import load_plugins
from trainframe_hybrid.selective import SelectiveConfig, SelectiveController

CONFIG = f"""
name: selective-test
seed: 2
model: {{name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 16}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}, val_fraction: 0.1}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: constant}}
phases: {{name: selective, keep: 0.5}}
loggers: [{{name: jsonl}}]
trainer: {{max_steps: 16, batch_size: 8, eval_every: 0, eval_batches: 1, log_every: 4, save_every: 0,
          sample_tokens: 0, device: cpu}}
"""


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "selective.yaml"
    path.write_text(CONFIG)
    return path


def make(plugins, config, run_dir, *overrides):
    return build_trainer(load_config(config, list(overrides), plugins.registry), plugins, run_dir)


def test_keeps_unseen_rows_first_then_the_highest_stale_loss():
    c = SelectiveController(SelectiveConfig(keep=0.5, table_bits=8))
    rows = torch.arange(8 * 4).view(8, 4)
    targets = rows.clone()
    first = c.batches_for(Phase.FULL, [(rows, targets)])[0][0]
    assert len(first) == 4  # all unseen: a random half
    # record losses for the kept rows (row i's loss = its first token), as observe would
    kept = c.selected[0]
    slot = kept & (c.keys.numel() - 1)
    c.keys[slot], c.losses[slot] = kept, first[:, 0].float()
    second = c.batches_for(Phase.FULL, [(rows, targets)])[0][0]
    unseen = {tuple(r) for r in rows.tolist()} - {tuple(r) for r in first.tolist()}
    assert {tuple(r) for r in second.tolist()} == unseen  # the rows never trained on come first
    c.keys[c.selected[0] & (c.keys.numel() - 1)] = c.selected[0]
    c.losses[c.selected[0] & (c.keys.numel() - 1)] = second[:, 0].float()
    third = c.batches_for(Phase.FULL, [(rows, targets)])[0][0]
    assert sorted(third[:, 0].tolist()) == [16, 20, 24, 28]  # then the highest losses


def test_row_losses_come_from_the_training_forward(plugins, config, tmp_path):
    t = make(plugins, config, tmp_path / "r")
    seen = {}
    original = t.controller.observe

    def capture(outcome, trainer):
        seen["rows"] = outcome.row_losses
        seen["batch"] = outcome.batches
        seen["loss"] = outcome.loss
        return original(outcome, trainer)

    t.controller.observe = capture
    t.train_step()
    (x, y), = seen["batch"]
    assert x.shape == (4, 16) and t.tokens_seen == 4 * 16  # half the batch, and counted as such
    row = seen["rows"][0]
    with torch.no_grad():
        per_token = t.model(x, y, reduction="none")
    # the recorded losses are the pre-update forward's (the weights moved since)
    assert row.shape == (4,)
    assert torch.allclose(row.mean(), torch.as_tensor(seen["loss"]), atol=1e-5)
    assert not torch.allclose(row, per_token.mean(1), atol=1e-7)
    slot = t.controller.selected[0] & (t.controller.keys.numel() - 1)
    assert torch.equal(t.controller.losses[slot], row)


def test_random_control_and_metrics(plugins, config, tmp_path):
    t = make(plugins, config, tmp_path / "rand", "phases={name: selective, select: random}")
    t.fit()
    rows = [json.loads(line) for line in (tmp_path / "rand" / "metrics.jsonl").read_text().splitlines()]
    shares = [r["stale_seen"] for r in rows if "stale_seen" in r]
    assert len(shares) == 4 and all(0 <= s <= 1 for s in shares)
    assert t.backward_passes == 16 and t.tokens_seen == 16 * 4 * 16


def test_stale_selection_resumes_exactly(plugins, config, tmp_path):
    a = make(plugins, config, tmp_path / "a")
    a.fit()
    b = make(plugins, config, tmp_path / "b")
    for _ in range(7):
        b.train_step()
    b.save()
    c = make(plugins, config, tmp_path / "b")
    c.resume()
    c.fit()

    def losses(d):
        return {r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                if "loss" in r}

    assert losses(tmp_path / "b") == {s: v for s, v in losses(tmp_path / "a").items() if s > 7}
    assert torch.equal(a.controller.keys, c.controller.keys) and torch.equal(a.controller.losses, c.controller.losses)


def test_packed_rows_are_one_line(plugins, config, tmp_path):
    t = make(plugins, config, tmp_path / "p", "data.pack=true")
    with pytest.raises(UserError, match="data.pack false"):
        t.train_step()
