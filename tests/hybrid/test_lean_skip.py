"""The lean ``skip`` controller: no weight copies, each loss read read_lag steps late, exact resume."""

import json

import pytest
import torch
from support import SHAKESPEARE
from trainframe_hybrid.controller import Machine

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.engine.nonfinite import DeviceSkip, HostCheck
from trainframe.plugins import load_plugins

CONFIG = f"""
name: lean-skip
seed: 5
model: {{name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}, val_fraction: 0.1}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: constant}}
phases: {{name: skip, warmup_steps: 3, full_steps: 2, min_predict_steps: 2, max_predict_steps: 3,
          divergence_sigma: 1.0e9}}
loggers: [{{name: jsonl}}]
trainer: {{max_steps: 20, batch_size: 4, eval_every: 0, eval_batches: 1, log_every: 1, save_every: 0,
          sample_tokens: 0, device: cpu}}
"""


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def trainer_for(plugins, tmp_path, run_dir, *overrides):
    path = tmp_path / "skip.yaml"
    path.write_text(CONFIG)
    return build_trainer(load_config(path, list(overrides), plugins.registry), plugins, tmp_path / run_dir)


def train_rows(run_dir):
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if "loss" in r]


def test_skip_keeps_the_fast_path_and_copies_no_weights(plugins, tmp_path):
    t = trainer_for(plugins, tmp_path, "a")
    assert not t.controller.wants_host_values
    t.fit()
    assert t.controller.prev == [] and t.controller.direction == []
    phases = [r["phase"] for r in train_rows(tmp_path / "a")]
    # The machine runs read_lag steps late: its n-th state is the phase of step n + read_lag.
    lag = t.controller.cfg.read_lag
    m, states = Machine(t.controller.cfg), []
    for _ in range(20 - lag):
        states.append(m.phase.value)
        m.advance(1.0)
    assert phases == [states[0]] * lag + states
    assert "predict" in phases and t.backward_passes == phases.count("full")


def test_deferred_device_values_give_the_same_run(plugins, tmp_path):
    """With an optimizer that skips on the device (fused AdamW, as on CUDA) the engine hands the
    controller 0-dim device tensors and reads them back at log steps; the run must not change."""
    deferred = trainer_for(plugins, tmp_path, "deferred", "optim.fused=true", "trainer.log_every=5")
    assert deferred.defer_sync
    deferred.fit()
    eager = trainer_for(plugins, tmp_path, "eager", "optim.fused=true", "trainer.log_every=5")
    eager.nonfinite = HostCheck()  # a host read per step
    assert isinstance(deferred.nonfinite, DeviceSkip)
    assert all(isinstance(r.outcome.loss, torch.Tensor) for r in deferred.controller.late)  # the last steps, unread
    eager.fit()
    assert train_rows(tmp_path / "deferred") and ([r["loss"] for r in train_rows(tmp_path / "deferred")]
                                                 == [r["loss"] for r in train_rows(tmp_path / "eager")])


def test_correct_steps_and_divergences_run_with_nothing_moved(plugins, tmp_path):
    t = trainer_for(plugins, tmp_path, "correct", "phases.correct_steps=2")
    t.fit()
    assert "correct" in [r["phase"] for r in train_rows(tmp_path / "correct")]
    # A rising loss: predicted steps land above the smoothed prediction.
    t = trainer_for(plugins, tmp_path, "diverging", "phases.divergence_sigma=1.0e-6", "optim.lr=0.5")
    t.fit()
    assert t.controller.divergences > 0 and len(train_rows(tmp_path / "diverging")) == 20


def test_resume_with_a_step_still_unread_is_exact(plugins, tmp_path):
    straight = trainer_for(plugins, tmp_path, "straight")
    straight.fit()
    expected = {r["step"]: (r["loss"], r["phase"]) for r in train_rows(tmp_path / "straight")}
    b = trainer_for(plugins, tmp_path, "b")
    for _ in range(7):
        b.train_step()
    assert len(b.controller.late) == b.controller.cfg.read_lag  # steps 3..6 wait to be read
    b.save()
    c = trainer_for(plugins, tmp_path, "b")
    c.resume()
    c.fit()
    resumed = {r["step"]: (r["loss"], r["phase"]) for r in train_rows(tmp_path / "b")}
    assert min(resumed) == 8
    assert resumed == {k: v for k, v in expected.items() if k > 7}
