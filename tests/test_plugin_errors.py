"""Config errors that name their cause: a component of a plugin that failed to load, the key a
``model_validator``'s message is about (and where that key was set), and an item's bounds."""

import pytest
import yaml
from support import TINY_YAML, run_main
from test_plugins import add_dist, plugin_module

import trainframe
from trainframe import plugins as plugins_module
from trainframe.plugins import load_plugins


def use(monkeypatch, plugins) -> None:
    monkeypatch.setattr(plugins_module, "_CURRENT", plugins)


def last_line(*args) -> str:
    result = run_main(*args)
    assert result.returncode == 2, result.stderr
    return result.stderr.splitlines()[-1]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    return "tiny.yaml"


def test_component_of_a_plugin_that_failed_to_import(tiny, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "trainframe_chars.py").write_text("import no_such_dependency_xyz\n")
    add_dist(site, "trainframe-chars", "1.0", {"chars": "trainframe_chars"})
    monkeypatch.syspath_prepend(str(site))
    use(monkeypatch, load_plugins())
    assert last_line("config", "validate", tiny, "tokenizer.name=chars") == (
        "command line: tokenizer.name: unknown tokenizer 'chars'; plugin 'chars' failed to load: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'")


def _register_then_fail(registry):
    registry.add("tokenizer", "chars", lambda cfg: None)
    raise RuntimeError("boom")


def test_component_of_a_plugin_that_failed_to_register(tiny, monkeypatch):
    bad = plugin_module("bad", trainframe_register=trainframe.hookimpl(_register_then_fail))
    use(monkeypatch, load_plugins(extra=[("letters", bad)]))
    assert last_line("config", "validate", tiny, "tokenizer.name=chars") == (
        "command line: tokenizer.name: unknown tokenizer 'chars'; plugin 'letters' failed to register: "
        "RuntimeError: boom")


def test_unknown_name_while_a_plugin_is_broken_lists_it_without_a_guess(tiny, monkeypatch):
    @trainframe.hookimpl
    def trainframe_register(registry):
        raise RuntimeError("boom")

    use(monkeypatch, load_plugins(extra=[("other", plugin_module("other", trainframe_register=trainframe_register))]))
    line = last_line("config", "validate", tiny, "tokenizer.name=chars")
    assert line.startswith("command line: tokenizer.name: unknown tokenizer 'chars'; "
                           "plugin 'other' failed to register: RuntimeError: boom; registered: ")
    assert "did you mean" not in line


def write(tmp_path, **sections) -> None:
    (tmp_path / "x.yaml").write_text(yaml.safe_dump({**yaml.safe_load(TINY_YAML), **sections}))


def test_model_validator_names_the_key_set_on_the_command_line(tiny, tmp_path):
    write(tmp_path, schedule={"name": "wsd", "warmup_fraction": 0.5})
    assert last_line("config", "validate", "x.yaml", "schedule.decay_fraction=0.7") == (
        "command line: schedule.decay_fraction: warmup_fraction + decay_fraction must be at most 1")


def test_model_validator_blames_the_file_when_the_command_line_set_another_key(tiny, tmp_path):
    write(tmp_path, schedule={"name": "wsd", "warmup_fraction": 0.5, "decay_fraction": 0.7})
    assert last_line("config", "validate", "x.yaml", "schedule.min_lr_ratio=0.1") == (
        "x.yaml: schedule.warmup_fraction: warmup_fraction + decay_fraction must be at most 1")


def test_model_validator_prefers_the_key_the_config_gives(tiny, tmp_path):
    write(tmp_path, model={"name": "gpt", "preset": "tiny", "n_head": 5})  # d_model comes from the preset
    assert last_line("config", "validate", "x.yaml") == (
        "x.yaml: model.n_head: d_model (64) must be divisible by n_head (5)")


@pytest.mark.parametrize("override, expected", [
    ("optim.betas=[0.9, 1.5]", "command line: optim.betas.1: expected a number >= 0 and < 1, got 1.5"),
    ("optim={name: muon, adamw_betas: [-0.1, 0.9]}",
     "command line: optim.adamw_betas.0: expected a number >= 0 and < 1, got -0.1"),
])
def test_tuple_item_bounds(tiny, override, expected):
    assert last_line("config", "validate", tiny, override) == expected
