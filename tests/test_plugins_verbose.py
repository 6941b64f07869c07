"""``trainframe plugins -v``: each component's help line and config keys (the rows of ``config
describe``), each command's help line; without ``-v`` the listing stays one line per kind."""

import sys
import types

import pytest
from pydantic import Field
from support import REPO, run_main

import trainframe
from trainframe import plugins as plugins_module
from trainframe.describe import describe
from trainframe.plugins import load_plugins


class WobbleConfig(trainframe.ComponentConfig):
    amplitude: float = Field(0.1, ge=0, description="how far the lr wobbles around the schedule")


@pytest.fixture
def loaded(monkeypatch):
    """The built-ins, the example plugin and a local one, as the in-process CLI's plugins."""
    monkeypatch.syspath_prepend(str(REPO / "examples" / "trainframe-example-plugin" / "src"))
    sys.modules.pop("trainframe_example.plugin", None)
    from trainframe_example import plugin as example

    def trainframe_register(registry):
        registry.add("schedule", "wobble", lambda cfg, max_steps: (lambda step: 1.0), WobbleConfig,
                     help="a constant lr with a wobble")
        registry.add("callback", "quiet", lambda cfg, *, run_dir: object())  # no help, no options

    local = types.ModuleType("wobble")
    local.trainframe_register = trainframe.hookimpl(trainframe_register)
    plugins = load_plugins(extra=[("example", example), ("wobble", local)])
    monkeypatch.setattr(plugins_module, "_CURRENT", plugins)
    return plugins


def test_verbose_shows_help_and_config_keys(loaded):
    result = run_main("plugins", "-v")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    wobble = out.split("\nwobble ", 1)[1]
    assert "  schedule wobble - a constant lr with a wobble\n" in wobble
    assert "  callback quiet\n    (no options)\n" in wobble
    row = next(line for line in wobble.splitlines() if line.strip().startswith("amplitude"))
    assert row.split()[:5] == ["amplitude", "float,", ">=", "0", "0.1"]
    assert row.endswith("how far the lr wobbles around the schedule")
    example = out.split("\nexample ", 1)[1].split("\nwobble ", 1)[0]  # loaded in-process: version "local"
    assert "  schedule linear - linear warmup, then linear decay to min_lr_ratio\n" in example
    assert "  command example lr - print the linear schedule's lr multipliers" in example
    # The rows are config describe's own, indented under the component.
    rows = describe(loaded.registry, "schedule", "linear")[1:]
    assert "\n".join("  " + r for r in rows) in example
    assert "  command train - train a model from a YAML config" in out  # built-in commands too


def test_docs_show_the_real_verbose_rows(loaded):
    text = (REPO / "docs" / "plugins.md").read_text()
    shown = text.split("`trainframe plugins -v` shows", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    out = run_main("plugins", "-v").stdout
    for line in shown.splitlines()[1:]:  # after the plugin's line (its version differs in-process)
        if line.strip() != "...":
            assert line in out.splitlines(), line


def test_without_verbose_one_line_per_kind(loaded):
    out = run_main("plugins").stdout
    assert "  schedule: wobble\n" in out and "  callback: quiet\n" in out
    assert "amplitude" not in out and " - a constant lr" not in out
