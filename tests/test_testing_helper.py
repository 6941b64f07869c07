"""trainframe.testing, the helpers plugin authors test with: a plugin under test that is also
installed registers once, and a run trains from a config dict in-process. The example plugin's own
tests (examples/trainframe-example-plugin/tests) use them and run here."""

import importlib
import importlib.util
import sys

import pytest
import yaml
from support import TINY_YAML
from test_plugins import EXAMPLE, add_example, status_of

from trainframe.errors import UserError
from trainframe.plugins import load_plugins
from trainframe.testing import load_test_plugins, train_from_dict


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The example plugin pip-installed (found through its entry point); its module imported."""
    site = tmp_path / "site"
    site.mkdir()
    add_example(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TRAINFRAME_DISABLE_PLUGINS", raising=False)
    yield importlib.import_module("trainframe_example.plugin")
    for name in [m for m in sys.modules if m.split(".")[0] == "trainframe_example"]:
        del sys.modules[name]


def test_extra_plugin_that_is_also_installed_registers_once(installed, capsys):
    plugins = load_plugins(extra=[("mine", installed)])  # the recipe of docs/plugins.md
    assert plugins.registry.get("schedule", "linear").plugin == "mine"
    assert "example" not in [p.name for p in plugins.info]
    assert "warning" not in capsys.readouterr().err


def test_a_copy_under_test_replaces_the_installed_plugin(installed, capsys):
    path = EXAMPLE / "src" / "trainframe_example" / "plugin.py"
    spec = importlib.util.spec_from_file_location("plugin_under_test", path)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    plugins = load_test_plugins(("example", copy))
    assert status_of(plugins, "example") == "ok"
    assert plugins.manager.get_plugin("example") is copy
    assert plugins.registry.get("callback", "loss_spike").factory is copy.build_loss_spike
    assert "warning" not in capsys.readouterr().err


def test_a_module_alone_is_named_after_itself(installed):
    plugins = load_test_plugins(installed)
    assert plugins.registry.get("schedule", "linear").plugin == "trainframe_example.plugin"


def test_train_from_dict(tmp_path):
    trainer = train_from_dict(yaml.safe_load(TINY_YAML), tmp_path / "run",
                              ["trainer.max_steps=3", "trainer.save_every=3"])
    assert trainer.step == 3 and trainer.run_dir == tmp_path / "run"
    assert yaml.safe_load((trainer.run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 3
    assert (trainer.run_dir / "checkpoints" / "step_00000003.pt").exists()
    with pytest.raises(UserError, match="already holds a run"):
        train_from_dict(yaml.safe_load(TINY_YAML), tmp_path / "run")


def test_train_from_dict_bad_config_is_the_clis_line(tmp_path):
    with pytest.raises(UserError) as exc:
        train_from_dict(yaml.safe_load(TINY_YAML), tmp_path / "run", ["optim.lr=-1"])
    assert str(exc.value) == "command line: optim.lr: expected a number > 0, got -1"
    config = {**yaml.safe_load(TINY_YAML), "optim": {"lr": "fast"}}
    with pytest.raises(UserError, match="^config: optim.lr: expected a number > 0, got 'fast'$"):
        train_from_dict(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_example_plugins_own_tests_pass(tmp_path, monkeypatch):
    """Its two tests, called in this process with the fixture they declare (pytest in a process of
    its own would spend most of its time importing torch)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    spec = importlib.util.spec_from_file_location("example_tests", EXAMPLE / "tests" / "test_example_plugin.py")
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    plugins = tests.plugins.__wrapped__()
    tests.test_registers_its_components(plugins)
    tests.test_trains_with_its_schedule_and_callback(plugins, tmp_path, monkeypatch)