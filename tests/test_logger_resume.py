"""What loggers are told: ``fit_start``'s ``resumed_from`` (the step a resume continues from: rows
logged past it are redone) and ``trainframe_log``'s ``kind`` (a train or an eval row)."""

import types

import pytest
from support import run_main

import trainframe
from trainframe import plugins as plugins_module
from trainframe.config import ComponentConfig
from trainframe.engine import checkpoint as ckpt
from trainframe.logging.trackers import row_kind, scalars
from trainframe.plugins import load_plugins

SEEN: list = []  # what the recorder loggers were told, in order


class RecorderConfig(ComponentConfig):
    pass


class Recorder:
    @trainframe.hookimpl
    def trainframe_fit_start(self, resumed_from):
        SEEN.append(("fit_start", resumed_from))

    @trainframe.hookimpl
    def trainframe_log(self, step, metrics, kind):
        SEEN.append((kind, step, sorted(metrics)))


@trainframe.hookimpl
def trainframe_register(registry):
    registry.add("logger", "recorder", lambda cfg, *, run_dir: Recorder(), RecorderConfig)


RECORDER = types.ModuleType("recorder")
RECORDER.trainframe_register = trainframe_register


@pytest.fixture
def plugins(monkeypatch):
    loaded = load_plugins(extra=[("recorder", RECORDER)])
    monkeypatch.setattr(plugins_module, "_CURRENT", loaded)
    SEEN.clear()
    return loaded


def test_loggers_are_told_where_a_resume_starts_and_which_rows_are_evals(plugins, tiny_config, tmp_path):
    run = tmp_path / "run"
    loggers = "loggers=[{name: jsonl}, {name: recorder}]"
    args = ["trainer.max_steps=6", "trainer.save_every=4", "trainer.eval_every=3", "trainer.log_every=2", loggers]
    assert run_main("train", tiny_config, "--run-dir", run, *args).returncode == 0
    assert SEEN[0] == ("fit_start", None)  # a new run
    logs = [(kind, step) for kind, step, _ in SEEN[1:]]
    assert logs == [("train", 2), ("eval", 3), ("train", 4), ("train", 6), ("eval", 6)]
    for kind, _, keys in SEEN[1:]:  # the kind, not the keys, says which row it is
        assert ("loss" in keys) == (kind == "train") and ("val_loss" in keys) == (kind == "eval")

    # Killed after step 4's checkpoint: the resume redoes steps 5-6, and says so.
    ckpt.remove(ckpt.step_path(run / "checkpoints", 6))
    SEEN.clear()
    assert run_main("resume", run, loggers).returncode == 0
    assert SEEN[0] == ("fit_start", 4)
    assert [(kind, step) for kind, step, _ in SEEN[1:]] == [("train", 6), ("eval", 6)]

    # Killed before its first checkpoint: it starts over, so every row is redone.
    for _, path in ckpt.step_checkpoints(run / "checkpoints"):
        ckpt.remove(path)
    SEEN.clear()
    assert run_main("resume", run, loggers).returncode == 0
    assert SEEN[0] == ("fit_start", 0)


def test_tracker_rows_are_grouped_by_kind():
    assert scalars({"val_loss": 2.0, "acc": 0.5, "phase": "full"}, "eval") == {"val/val_loss": 2.0, "val/acc": 0.5}
    assert scalars({"loss": 3.0, "lr": 1e-3}, "train") == {"train/loss": 3.0, "train/lr": 1e-3}
    assert (row_kind("eval"), row_kind("train")) == ("val", "train")  # the names in wandb.json / mlflow.json
