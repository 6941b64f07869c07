"""The hybrid controller: state machine, divergence fallback, weight moves, dynamics, corrector, resume."""

import json
import math

import pytest
import torch
from support import SHAKESPEARE, run_main
from trainframe_hybrid.controller import HybridConfig, Machine
from trainframe_hybrid.corrector import ResidualCorrector
from trainframe_hybrid.dynamics import Dynamics

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.phases import Phase, StepOutcome
from trainframe.plugins import load_plugins

CONFIG = f"""
name: hybrid-test
seed: 3
model: {{name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}, val_fraction: 0.1}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: constant}}
phases: {{name: hybrid, warmup_steps: 4, full_steps: 3, min_predict_steps: 2, max_predict_steps: 4,
          correct_steps: 3, confidence_threshold: 0.0, bptt: 4, train_every: 1, hidden: 16}}
loggers: [{{name: jsonl}}]
trainer: {{max_steps: 24, batch_size: 4, eval_every: 0, eval_batches: 1, log_every: 1, save_every: 0,
          sample_tokens: 0, device: cpu}}
"""


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "hybrid.yaml"
    path.write_text(CONFIG)
    return path


def make_trainer(plugins, config, run_dir, *overrides):
    return build_trainer(load_config(config, list(overrides), plugins.registry), plugins, run_dir)


def weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def distance(a, b):
    return math.sqrt(sum(float((x.detach() - y).pow(2).sum()) for x, y in zip(a, b)))


# ------------------------------------------------------------------------------ state machine
def run_machine(cfg, confidences, diverge_at=()):
    """The states a machine goes through, one per step, with the given confidence per step."""
    m, states = Machine(cfg), []
    for i, c in enumerate(confidences):
        states.append(m.state)
        m.advance(c, "loss too high" if i in diverge_at else None)
    return "".join(s[0] for s in states), m


BASE = {"warmup_steps": 2, "full_steps": 2, "min_predict_steps": 1, "max_predict_steps": 3, "correct_steps": 1,
            "max_consecutive_predict": 2, "confidence_threshold": 0.6}


@pytest.mark.parametrize("overrides, confidences, diverge_at, expected", [
    # warmup, full, then confident: predict 3 (= 3 * 1^2), correct 1, predict again (x0.9 -> 3), correct,
    # then the consecutive limit forces full.
    ({}, [1.0] * 14, (), "wwffpppcpppcff"),
    # never confident: full phases forever
    ({}, [0.3] * 8, (), "wwffffff"),
    # divergence in the middle of a predict phase: full at once, for a whole full phase
    ({}, [1.0] * 9, (5,), "wwffppffp"),
    # confidence 0.6: length 3 * 0.36 -> 1 (rounded, clamped to min 1); then 0.6 * 0.9 -> 1
    ({}, [0.6] * 9, (), "wwffpcpcf"),
    # no warmup, no correct steps: predict phases follow each other directly
    ({"warmup_steps": 0, "correct_steps": 0}, [1.0] * 9, (), "ffppppppf"),
])
def test_state_machine_transitions(overrides, confidences, diverge_at, expected):
    states, _ = run_machine(HybridConfig(**{**BASE, **overrides}), confidences, diverge_at)
    assert states == expected


def test_predict_length_formula():
    m = Machine(HybridConfig(max_predict_steps=50, min_predict_steps=5))
    assert m.predict_length(1.0) == 50
    assert m.predict_length(0.8) == 32  # 50 * 0.64
    m.consecutive = 3
    assert m.predict_length(1.0) == 35  # 50 * (1 - 0.3)
    m.consecutive = 9
    assert m.predict_length(1.0) == 25  # the discount stops at 0.5
    assert m.predict_length(0.1) == 5  # clamped to min_predict_steps


def test_defaults_follow_the_plan():
    c = HybridConfig()
    assert (c.warmup_steps, c.full_steps, c.max_predict_steps, c.correct_steps, c.confidence_threshold) == \
        (200, 30, 50, 10, 0.6)


def test_invalid_config_is_one_line(config, tmp_path):
    result = run_main("config", "validate", config, "phases.min_predict_steps=9")
    assert result.returncode == 2
    assert "min_predict_steps" in result.stderr and "Traceback" not in result.stderr


# -------------------------------------------------------------------------- on a real model
def test_predict_moves_weights_and_divergence_forces_full(plugins, config, tmp_path):
    trainer = make_trainer(plugins, config, tmp_path / "run", "phases.name=extrapolate",
                           "trainer.grad_accum=2", "trainer.precision=bf16")
    c = trainer.controller
    while c.machine.state != "predict":
        trainer.train_step()
    controlled = lambda: [p.detach().clone() for p in c.params]  # noqa: E731 (in the order of c.last_delta)
    before = controlled()  # already moved once: the first predicted step is set up
    trainer.train_step()
    assert trainer.phase == Phase.PREDICT and trainer.backward_passes == 2 * 7
    moved = controlled()
    # The predicted step moved the weights by exactly the controller's next move, c_g * d_g.
    step = c.last_delta
    size = distance(step, [torch.zeros_like(d) for d in step])
    assert size > 0 and distance([m - b for m, b in zip(moved, before)], step) < 1e-3 * size
    # A predicted step whose loss is far above the prediction ends the phase at once.
    outcome = StepOutcome(trainer.step, Phase.PREDICT, loss=100.0, lr=1e-3, batches=[])
    metrics = c.observe(outcome, trainer)
    assert c.machine.state == "full" and c.divergences == 1
    assert "divergence" in c.machine.reason
    # The diverging move was taken back: the weights are those from before it.
    assert distance(controlled(), before) < 1e-3 * distance(moved, before)
    assert set(metrics) >= {"confidence", "predicted_loss"}


def test_correct_moves_back_toward_the_trajectory(plugins, config, tmp_path):
    """Predicted moves 40x too long overshoot; CORRECT's probes find a smaller scale and the
    weights come back toward where the optimizer left them (with the nowcast direction)."""
    trainer = make_trainer(plugins, config, tmp_path / "run", "phases.name=extrapolate", "phases.direction=nowcast",
                           "phases.coefficient_max=100", "phases.max_consecutive_predict=1")
    c = trainer.controller
    while c.machine.state != "predict":
        trainer.train_step()
    start = [p.detach().clone() - d for p, d in zip(c.params, c.moved)]  # before the first predicted move
    c.coefficients = [40.0] * len(c.coefficients)
    while c.machine.state == "predict":
        trainer.train_step()
    after_predict = [p.detach().clone() for p in c.params]
    while trainer.phase != Phase.CORRECT or c.machine.state == "correct":
        trainer.train_step()
    assert c.best_scale < 1.0 and c.step_direction is not c.direction
    assert distance(c.params, start) < distance(after_predict, start)


@pytest.mark.slow
def test_metrics_and_exact_resume_mid_predict(plugins, config, tmp_path):
    a = make_trainer(plugins, config, tmp_path / "a", "trainer.grad_accum=2")
    a.fit()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    phases = [r["phase"] for r in train]
    assert "predict" in phases and "correct" in phases
    predict = [r for r in train if r["phase"] == "predict"]
    assert all(r["delta_norm"] > 0 for r in predict)
    assert {"backward_passes", "predicted_loss", "confidence"} <= set(predict[-1])
    assert train[-1]["backward_passes"] == 2 * phases.count("full")
    # Stop in the middle of a predict phase, save, resume in a new trainer, finish.
    k = next(i for i in range(1, len(phases) - 1) if phases[i - 1] == phases[i] == "predict")
    b = make_trainer(plugins, config, tmp_path / "b", "trainer.grad_accum=2")
    for _ in range(k):
        b.train_step()
    assert b.controller.machine.state == "predict"
    b.save()
    c = make_trainer(plugins, config, tmp_path / "b", "trainer.grad_accum=2")
    c.resume()
    c.fit()
    resumed = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
               if "loss" in r}
    assert min(resumed) == k + 1
    assert resumed == {r["step"]: r["loss"] for r in train if r["step"] > k}
    for p, q in zip(a.model.parameters(), c.model.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------- components
@pytest.mark.slow
def test_dynamics_model_learns_a_loss_curve():
    """On a synthetic run (loss decaying like a power law, noisy), the one-step prediction error
    of the ensemble falls as it trains online."""
    g = torch.Generator().manual_seed(0)
    dyn = Dynamics(4, 2, torch.device("cpu"), members=3, hidden=32, bptt=8, lr=1e-2, kl_weight=0.1, seed=0)
    loss_errors, coefficient_errors, previous = [], [], None
    for t in range(100):
        log_loss = math.log(4.0 * (t + 10) ** -0.3) + 0.002 * float(torch.randn(1, generator=g))
        if previous is not None:
            target = torch.tensor([20 * (log_loss - previous), 0.5, 1.5])  # loss offset, two coefficients
            error = (dyn.last_prediction.mean(0) - target).abs()
            loss_errors.append(float(error[0]))
            coefficient_errors.append(float(error[1:].mean()))
            dyn.add_targets(target, torch.ones(3))
            dyn.train()
        dyn.observe(torch.tensor([log_loss, t / 100, 1.0, 0.0]), predicted=False)
        previous = log_loss

    def mean(values):
        return sum(values) / len(values)

    assert mean(loss_errors[-15:]) < 0.6 * mean(loss_errors[:15])
    assert mean(coefficient_errors[-15:]) < 0.3 * mean(coefficient_errors[:15])


def test_corrector_retrieves_similar_states():
    corr = ResidualCorrector(3, 2, k=2, decay=1.0, clamp=0.5)
    assert torch.equal(corr.predict(torch.ones(3)), torch.zeros(2))
    corr.add(torch.tensor([1.0, 0.0, 0.0]), 2.0, 2.1, torch.tensor([0.4, -0.2]))
    corr.add(torch.tensor([0.0, 1.0, 0.0]), 2.0, 1.9, torch.tensor([-0.4, 0.2]))
    corr.add(torch.tensor([0.9, 0.1, 0.0]), 2.0, 2.1, torch.tensor([0.4, -0.2]))
    index, weight = corr.retrieve(torch.tensor([1.0, 0.05, 0.0]))
    assert sorted(index.tolist()) == [0, 2] and (weight > 0.9).all()
    correction = corr.predict(torch.tensor([1.0, 0.05, 0.0]))
    assert correction[0] > 0.2 and correction[1] < -0.1  # mostly the two similar entries' residuals
    assert (correction.abs() <= 0.5).all()
    # Older entries count less: with decay, the newest similar entry dominates.
    aged = ResidualCorrector(3, 1, k=2, decay=0.1, clamp=5.0)
    aged.add(torch.tensor([1.0, 0.0, 0.0]), 0, 0, torch.tensor([1.0]))
    aged.add(torch.tensor([1.0, 0.0, 0.0]), 0, 0, torch.tensor([3.0]))
    _, w = aged.retrieve(torch.tensor([1.0, 0.0, 0.0]))
    assert w[0] == pytest.approx(1.0) and w[1] == pytest.approx(0.1)
    restored = ResidualCorrector(3, 2, k=2, decay=1.0, clamp=0.5)
    restored.load_state_dict(corr.state_dict())
    assert torch.equal(restored.predict(torch.ones(3)), corr.predict(torch.ones(3)))
