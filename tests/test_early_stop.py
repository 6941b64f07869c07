"""A component stops a run with ``trainer.request_stop(reason)``: exit 0 with the reason printed and
kept in the checkpoint; ``resume`` leaves the run stopped unless trainer.max_steps is raised; under
data parallelism the ranks agree on the stop (and its reason) in ``Trainer.flush``."""

import json
import types

import pytest
import torch
from support import run_main

import trainframe
from trainframe import plugins as plugins_module
from trainframe.config import ComponentConfig, load_config
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import distributed
from trainframe.engine.build import build_trainer
from trainframe.plugins import load_plugins


class StopAtConfig(ComponentConfig):
    step: int


class StopAt:
    def __init__(self, step: int):
        self.step = step

    @trainframe.hookimpl
    def trainframe_step_end(self, trainer, step):
        if step == self.step:
            trainer.request_stop(f"reached step  {step}\n(test)")  # whitespace folds into one line


@trainframe.hookimpl
def trainframe_register(registry):
    registry.add("callback", "stop_at", lambda cfg, *, run_dir: StopAt(cfg.step), StopAtConfig)


STOPPER = types.ModuleType("stopper")
STOPPER.trainframe_register = trainframe_register


@pytest.fixture
def plugins(monkeypatch):
    loaded = load_plugins(extra=[("stopper", STOPPER)])
    monkeypatch.setattr(plugins_module, "_CURRENT", loaded)
    return loaded


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_requested_stop_exits_0_with_its_reason_and_resume_leaves_it_stopped(plugins, tiny_config, tmp_path):
    run = tmp_path / "run"
    result = run_main("train", tiny_config, "--run-dir", run, "trainer.max_steps=20", "trainer.save_every=0",
                      "callbacks=[{name: stop_at, step: 7}]")
    assert result.returncode == 0, result.stderr
    assert f"stopped at step 7: reached step 7 (test); run dir {run}" in result.stdout.splitlines()
    [(step, path)] = ckpt.step_checkpoints(run / "checkpoints")
    assert step == 7 and ckpt.load(path)["loop"]["stopped"] == "reached step 7 (test)"
    assert max(r["step"] for r in rows(run)) == 7

    # The same budget, or a lower one: nothing to do, nothing written.
    for overrides in ([], ["trainer.max_steps=20"], ["trainer.max_steps=12"]):
        before = (run / "metrics.jsonl").read_text(), (run / "config.yaml").read_text()
        again = run_main("resume", run, *overrides)
        assert again.returncode == 0, again.stderr
        lines = [line for line in again.stdout.splitlines() if not line.startswith("cpu threads:")]
        assert lines == [
            "run stopped at step 7: reached step 7 (test); nothing to do (raise trainer.max_steps to continue)"]
        assert ((run / "metrics.jsonl").read_text(), (run / "config.yaml").read_text()) == before
        assert [s for s, _ in ckpt.step_checkpoints(run / "checkpoints")] == [7]

    # A raised budget goes on from the stop; its checkpoints are no longer stopped ones.
    more = run_main("resume", run, "trainer.max_steps=24")
    assert more.returncode == 0, more.stderr
    assert "resuming from" in more.stdout and "finished at step 24, best val loss" in more.stdout
    assert [r["step"] for r in rows(run) if "loss" in r] == list(range(1, 25))
    assert "stopped" not in ckpt.load(ckpt.step_path(run / "checkpoints", 24))["loop"]
    done = run_main("resume", run)
    assert done.returncode == 0 and "the run is complete (24 steps)" in done.stdout


def test_request_stop_needs_a_reason_and_the_first_one_wins(plugins, tiny_config, tmp_path):
    trainer = build_trainer(load_config(tiny_config, ["trainer.max_steps=5"], plugins.registry), plugins,
                            tmp_path / "run")
    with pytest.raises(ValueError, match="give a reason"):
        trainer.request_stop("  \n")
    assert trainer.stop_reason is None
    trainer.request_stop("first")
    trainer.request_stop("second")
    assert (trainer.stop_reason, trainer.stop_message) == ("stopped", "first")
    assert trainer.fit() == "stopped" and trainer.step == 0  # asked before the first step: none runs


def two_ranks(monkeypatch, trainer, rank: int, requests: list):
    """``trainer`` as rank ``rank`` of two, the other rank's flags and stop reason faked: what
    ``distributed.total`` and the gather would return with ``requests`` (each rank's reason or None)."""
    trainer.world = distributed.World(rank=rank, local_rank=rank, size=2)
    gathers = []

    def total(tensor, world):
        other = torch.tensor([0.0, 0.0, 0.0, float(requests[1 - rank] is not None)])
        return tensor + other

    def all_gather_object(values, obj):
        assert obj == requests[rank]
        gathers.append(obj)
        values[:] = requests

    monkeypatch.setattr(distributed, "total", total)
    monkeypatch.setattr(distributed.dist, "all_gather_object", all_gather_object)
    return gathers


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("requests", [[None, "rank 1 saw it"], ["rank 0 saw it", "rank 1 saw it"],
                                      ["rank 0 saw it", None]], ids=["other", "both", "rank0"])
def test_ranks_agree_on_a_stop_and_its_reason(plugins, tiny_config, tmp_path, monkeypatch, rank, requests):
    trainer = build_trainer(load_config(tiny_config, [], plugins.registry), plugins, tmp_path / "run")
    gathers = two_ranks(monkeypatch, trainer, rank, requests)
    if requests[rank] is not None:
        trainer.request_stop(requests[rank])
    assert trainer.stop_reason is None  # not yet: the ranks stop together, at the next flush
    trainer.flush()
    expected = next(r for r in requests if r is not None)  # the lowest rank's reason, on every rank
    assert (trainer.stop_reason, trainer.stop_message) == ("stopped", expected)
    trainer.flush()  # agreed once: later flushes gather nothing more
    assert len(gathers) == 1


def test_no_request_gathers_nothing(plugins, tiny_config, tmp_path, monkeypatch):
    trainer = build_trainer(load_config(tiny_config, [], plugins.registry), plugins, tmp_path / "run")
    gathers = two_ranks(monkeypatch, trainer, 0, [None, None])
    trainer.flush()
    assert trainer.stop_reason is None and gathers == []
