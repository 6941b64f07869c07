"""The example plugin's own tests, as a plugin author writes them: `pip install -e .`, then `pytest`.

``trainframe.testing`` loads the plugin in-process (an installed copy of it is left out, so it is
not registered twice) and trains a short run from a config dict, on a text file the test writes.
"""

import json

import pytest

from trainframe.testing import load_test_plugins, train_from_dict
from trainframe_example import plugin


@pytest.fixture
def plugins():
    return load_test_plugins(("example", plugin))  # the entry-point name of pyproject.toml


def test_registers_its_components(plugins):
    schedule = plugins.registry.get("schedule", "linear")
    assert schedule.plugin == "example"
    assert plugins.registry.get("callback", "loss_spike").plugin == "example"
    f = schedule.factory(schedule.config(warmup_steps=2), 10)
    assert f(0) == 0.5 and f(1) == 1.0


def test_trains_with_its_schedule_and_callback(plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINFRAME_CACHE", str(tmp_path / "cache"))  # token caches stay out of ~/.cache
    text = tmp_path / "corpus.txt"
    text.write_text("the model trains on text and every step moves the weights\n" * 300)
    config = {
        "model": {"name": "gpt", "preset": "tiny", "context": 32},
        "tokenizer": {"name": "bytes"},
        "data": {"name": "textfile", "path": str(text), "val_fraction": 0.1},
        "schedule": {"name": "linear", "warmup_steps": 2},
        "callbacks": [{"name": "loss_spike", "warmup_steps": 0}],
        "loggers": [{"name": "jsonl"}],
        "trainer": {"max_steps": 6, "batch_size": 2, "device": "cpu", "eval_every": 0, "eval_batches": 1, "log_every": 1,
                    "save_every": 0, "sample_tokens": 0},
    }
    trainer = train_from_dict(config, tmp_path / "run", ["optim.lr=1e-3"], plugins=plugins)
    assert trainer.step == 6
    report = json.loads((trainer.run_dir / "loss_spikes.json").read_text())
    assert report["watched"] == 6
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "loss" in r][:2] == pytest.approx([5e-4, 1e-3])  # warmup: 1/2, then the peak
