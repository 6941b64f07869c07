"""Phase kinds and their announcements: a forward-only kind, quiet controllers, and phase_change
fired by the engine alone."""

import json
import types

import pytest
import torch
from support import TINY_YAML

import trainframe
from trainframe.config import ComponentConfig, load_config
from trainframe.engine.build import build_trainer
from trainframe.phases import Phase, PhaseController
from trainframe.plugins import load_plugins


class ProbeEvery(PhaseController):
    """A forward step every third step (it measures, nothing moves)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def decide(self, step):
        return (Phase.FORWARD, "probe") if step % 3 == 2 else (Phase.FULL, "train")


class Changes:
    def __init__(self):
        self.seen = []

    @trainframe.hookimpl
    def trainframe_phase_change(self, step, old, new, reason):
        self.seen.append((step, old, new, reason))


@pytest.fixture(scope="module")
def plugins():
    def trainframe_register(registry):
        registry.add("phases", "probe", lambda cfg: ProbeEvery(quiet=False), ComponentConfig)
        registry.add("phases", "quiet-probe", lambda cfg: ProbeEvery(quiet=True), ComponentConfig)

    module = types.ModuleType("probe")
    module.trainframe_register = trainframe.hookimpl(trainframe_register)
    return load_plugins(extra=[("probe", module)])


def train(plugins, tmp_path, name):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    overrides = [f"phases={{name: {name}}}", "trainer.max_steps=9", "trainer.save_every=0",
                 "loggers=[{name: console}, {name: jsonl}]"]
    trainer = build_trainer(load_config(path, overrides, plugins.registry), plugins, tmp_path / name)
    changes = Changes()
    trainer.listeners.append(changes)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return trainer, [r for r in rows if "loss" in r], changes, before


@pytest.mark.parametrize("name", ["probe", "quiet-probe"])
def test_forward_steps_train_nothing_and_quiet_ones_print_nothing(plugins, tmp_path, capsys, name):
    trainer, rows, changes, _ = train(plugins, tmp_path, name)
    phases = [r["phase"] for r in rows]
    assert phases == ["full", "full", "forward"] * 3
    assert trainer.backward_passes == 6
    # The engine fires every change, quiet or not, at the step the new phase starts.
    assert [c[:3] for c in changes.seen] == [(3, "full", "forward"), (4, "forward", "full"), (6, "full", "forward"),
                                             (7, "forward", "full"), (9, "full", "forward")]
    printed = [line for line in capsys.readouterr().out.splitlines() if "phase full -> forward" in line]
    assert len(printed) == (0 if name == "quiet-probe" else 3)


def test_a_forward_step_leaves_weights_and_optimizer_alone(plugins, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    trainer = build_trainer(load_config(path, ["phases={name: probe}"], plugins.registry), plugins, tmp_path / "run")
    trainer.train_step()
    trainer.train_step()
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    steps = [s["step"].clone() for s in trainer.optimizer.state.values()]
    trainer.train_step()  # step 2: forward
    assert trainer.phase == Phase.FORWARD
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters()))
    assert all(torch.equal(a, s["step"]) for a, s in zip(steps, trainer.optimizer.state.values()))
