"""Plugin loading: real entry points, broken plugins, the disable list, misspelled hooks, failed
registrations, the example plugin package, and docs/hooks.md kept in step with hookspecs.

The example package (examples/trainframe-example-plugin) is found through a REAL entry point without
pip-installing it: the ``site`` fixture builds a directory holding a copy of its source package next
to a hand-written ``trainframe_example-0.1.0.dist-info/`` (METADATA + entry_points.txt), which is what
pip would have written. With that directory on ``sys.path`` (PYTHONPATH for a subprocess),
``importlib.metadata.entry_points(group="trainframe")`` lists the plugin exactly as if it were installed.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import random
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from support import run_main

import trainframe
from trainframe import hookspecs
from trainframe.config import ComponentConfig
from trainframe.plugins import load_plugins

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "trainframe-example-plugin"
EXAMPLE_CONFIG = "examples/trainframe-example-plugin/configs/tiny-linear.yaml"


# ------------------------------------------------------------------------------------ helpers
def add_dist(root: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """Write the .dist-info directory pip would write for a distribution with these entry points."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[trainframe]\n{lines}")


def add_example(root: Path) -> None:
    shutil.copytree(EXAMPLE / "src" / "trainframe_example", root / "trainframe_example",
                    ignore=shutil.ignore_patterns("__pycache__"))
    add_dist(root, "trainframe-example", "0.1.0", {"example": "trainframe_example.plugin"})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory that, on sys.path, makes the example plugin look pip-installed."""
    root = tmp_path_factory.mktemp("site")
    add_example(root)
    return root


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    """The example plugin plus one whose import fails (a missing dependency)."""
    root = tmp_path_factory.mktemp("broken_site")
    add_example(root)
    (root / "trainframe_broken_plugin.py").write_text("import no_such_dependency_xyz  # not installed\n")
    add_dist(root, "trainframe-broken", "2.0.0", {"broken": "trainframe_broken_plugin"})
    return root


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """A small text corpus, so the run does not depend on a downloaded data set."""
    rng = random.Random(0)
    words = "the a model trains on text and every step moves the weights toward lower loss".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(3000)]
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRAINFRAME_DISABLE_PLUGINS"}
    env["TRAINFRAME_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return env


def run_cli(args: list[str], env: dict, pythonpath: Path, **extra_env) -> subprocess.CompletedProcess:
    env = {**env, **extra_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "trainframe", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def problem_lines(stderr: str, plugin: str | None = None) -> list[str]:
    """stderr lines, leaving out load warnings about plugins other than ``plugin`` (other installed
    plugins may warn for reasons of their own)."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("trainframe: warning: plugin '") and (plugin is None or f"plugin '{plugin}'" not in line):
            continue
        out.append(line)
    return out


def use_plugins(monkeypatch) -> None:
    """Make the in-process CLI use plugins loaded now (from the current sys.path and environment)."""
    from trainframe import plugins as plugins_module

    monkeypatch.setattr(plugins_module, "_CURRENT", load_plugins())


def cli_main(argv: list[str]) -> int:
    from trainframe.cli import main

    return main(argv)


def plugin_module(name: str, **attrs) -> types.ModuleType:
    """An in-memory plugin module with the given hook implementations."""
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def status_of(plugins, name: str) -> str:
    return next(p.status for p in plugins.info if p.name == name)


# --------------------------------------------------------------- (a) the example, by entry point
def test_example_found_through_entry_point(site, monkeypatch):
    monkeypatch.delenv("TRAINFRAME_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(site))
    plugins = load_plugins()
    info = next(p for p in plugins.info if p.name == "example")
    assert (info.version, info.module, info.status) == ("0.1.0", "trainframe_example.plugin", "ok")
    assert plugins.registry.get("schedule", "linear").plugin == "example"
    assert plugins.registry.get("callback", "loss_spike").plugin == "example"
    assert plugins.registry.commands["example lr"].plugin == "example"
    assert plugins.registry.get("schedule", "cosine").plugin == "trainframe"  # built-ins untouched


@pytest.mark.slow
def test_plugins_command_lists_example(site, env):
    """From a fresh interpreter, as a user runs it: the installed plugin is found by its entry point."""
    result = run_cli(["plugins"], env, site)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "example 0.1.0 (trainframe_example.plugin)\n" in out
    block = out.split("example 0.1.0 (trainframe_example.plugin)\n", 1)[1]
    assert "  schedule: linear\n  callback: loss_spike\n  command: example lr" in block
    assert "trainframe 0.1.0 (trainframe.builtin)" in out


def expected_linear(step: int, max_steps: int, warmup: int, min_ratio: float) -> float:
    """The linear schedule written out independently of the plugin's code."""
    if step < warmup:
        return (step + 1) / warmup
    return 1 - (1 - min_ratio) * (step - warmup) / (max_steps - 1 - warmup)


def test_train_with_example_schedule_and_callback(site, text_file, tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINFRAME_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(REPO)
    use_plugins(monkeypatch)
    run_dir = tmp_path / "run"
    result = run_main(
        "train", "configs/tiny-cpu.yaml", "trainer.max_steps=20", "trainer.batch_size=4", "trainer.log_every=1",
        "trainer.eval_every=0", "trainer.save_every=0", "trainer.eval_batches=1", "trainer.sample_tokens=0",
        "model={name: gpt, preset: tiny, context: 64}", "optim.lr=1e-3", f"data.path={text_file}",
        "loggers=[{name: jsonl}]",
        "schedule={name: linear, warmup_steps: 5, min_lr_ratio: 0.2}",
        "callbacks=[{name: loss_spike, factor: 1.5, warmup_steps: 3, file: spikes.json}]",
        "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 21))
    for r in train_rows:  # row "step: s" is logged after step s-1 (0-based) ran
        assert r["lr"] == pytest.approx(1e-3 * expected_linear(r["step"] - 1, 20, 5, 0.2), rel=1e-9)
        assert "loss_ema" in r and r["loss_spikes"] >= 0  # added by the callback in step_end
    assert train_rows[-1]["lr"] == pytest.approx(1e-3 * 0.2)

    report = json.loads((run_dir / "spikes.json").read_text())  # written by the callback in fit_end
    assert report["step"] == 20 and report["watched"] == 20 and report["factor"] == 1.5
    assert report["loss_ema"] == pytest.approx(train_rows[-1]["loss_ema"])
    # The callback's state travels in the final checkpoint (trainframe_save_checkpoint).
    saved = torch.load(run_dir / "checkpoints" / "step_00000020.pt", weights_only=True)
    assert saved["loss_spike"]["watched"] == 20


def test_example_command(site, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(site))
    use_plugins(monkeypatch)
    assert cli_main(["example", "lr", "--max-steps", "20", "--warmup-steps", "5", "--every", "5"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0\t0.2000", "5\t1.0000", "10\t0.6429", "15\t0.2857",
                                                    "19\t0.0000"]
    assert cli_main(["example", "lr", "--warmup-steps", "-1"]) == 2
    assert problem_lines(capsys.readouterr().err) == ["--warmup-steps: input should be greater than or equal to 0"]


# ------------------------------------------------------------------ the example's parts, directly
@pytest.fixture(scope="module")
def example_plugin() -> types.ModuleType:
    """The example's plugin module, imported straight from its source file."""
    path = EXAMPLE / "src" / "trainframe_example" / "plugin.py"
    spec = importlib.util.spec_from_file_location("example_plugin_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_schedule_values(example_plugin):
    plugin = example_plugin
    f = plugin.build_linear(plugin.LinearConfig(warmup_steps=10, min_lr_ratio=0.1), 110)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == 1.0 and f(109) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert f(59) == pytest.approx(1 - 0.9 * 49 / 99)
    no_warmup = plugin.build_linear(plugin.LinearConfig(), 11)
    assert [no_warmup(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])


def test_loss_spike_callback(example_plugin, tmp_path):
    LossSpikeConfig, build_loss_spike = example_plugin.LossSpikeConfig, example_plugin.build_loss_spike
    cfg = LossSpikeConfig(factor=2.0, beta=0.5, warmup_steps=3)
    watch = build_loss_spike(cfg, run_dir=tmp_path)
    for step, loss in enumerate([4.0, 3.0, 3.0, 3.0, 9.0, 3.0], start=1):
        metrics = {"loss": loss}
        watch.trainframe_step_end(step=step, metrics=metrics)
    assert [s["step"] for s in watch.spikes] == [5] and metrics["loss_spikes"] == 1
    assert metrics["loss_ema"] == pytest.approx(3.0625)  # the spike stayed out of the average

    state = {}
    watch.trainframe_save_checkpoint(state=state)
    torch.save(state, tmp_path / "state.pt")
    again = build_loss_spike(cfg, run_dir=tmp_path)
    again.trainframe_load_checkpoint(state=torch.load(tmp_path / "state.pt", weights_only=True))
    assert (again.ema, again.watched, again.spikes) == (watch.ema, watch.watched, watch.spikes)
    again.trainframe_fit_end(trainer=types.SimpleNamespace(step=6))
    assert json.loads((tmp_path / "loss_spikes.json").read_text())["spikes"][0]["loss"] == 9.0


def test_callback_state_survives_resume(site, text_file, tmp_path, monkeypatch):
    from trainframe.config import load_config
    from trainframe.engine.build import build_trainer
    from trainframe.engine.loop import check_run_dir

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("TRAINFRAME_CACHE", str(tmp_path / "cache"))
    plugins = load_plugins()
    cfg = load_config("configs/tiny-cpu.yaml", [
        "trainer.max_steps=6", "trainer.save_every=3", "trainer.eval_every=0", "trainer.eval_batches=1",
        "trainer.batch_size=2", "trainer.sample_tokens=0", "model={name: gpt, preset: tiny, context: 32}",
        f"data.path={text_file}", "loggers=[]", "callbacks=[{name: loss_spike, warmup_steps: 0}]"], plugins.registry)
    run_dir = tmp_path / "run"
    check_run_dir(run_dir)
    build_trainer(cfg, plugins, run_dir).fit()
    (run_dir / "checkpoints" / "step_00000006.pt").unlink()  # as if killed between steps 3 and 6
    trainer = build_trainer(cfg, plugins, run_dir)
    trainer.resume()
    assert trainer.step == 3
    trainer.fit()
    assert json.loads((run_dir / "loss_spikes.json").read_text())["watched"] == 6


# ----------------------------------------------------------------------- (b) a plugin that fails
def test_broken_plugin_is_one_line_and_the_rest_works(broken_site, monkeypatch, capsys):
    monkeypatch.delenv("TRAINFRAME_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(broken_site))
    monkeypatch.chdir(REPO)
    use_plugins(monkeypatch)  # the load warns here
    assert cli_main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert problem_lines(err, "broken") == [
        "trainframe: warning: plugin 'broken' failed to load: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"]
    assert "broken 2.0.0 (trainframe_broken_plugin): failed to load" in out
    assert "  schedule: constant, cosine, wsd" in out  # built-ins
    assert "  schedule: linear" in out  # the healthy third-party plugin
    # Built-in and healthy components still validate a config.
    assert cli_main(["config", "validate", "configs/tiny-cpu.yaml", "schedule.name=linear"]) == 0
    out, err = capsys.readouterr()
    assert "valid" in out and "Traceback" not in err


# -------------------------------------------------------------------------- (c) the disable list
def test_disabled_plugin_is_hidden(site, monkeypatch):
    # A config naming the disabled plugin's components: one line per problem, exit 2, no traceback.
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TRAINFRAME_DISABLE_PLUGINS", "other, example")
    monkeypatch.chdir(REPO)
    use_plugins(monkeypatch)
    result = run_main("config", "validate", EXAMPLE_CONFIG)
    assert result.returncode == 2
    lines = problem_lines(result.stderr)
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"{EXAMPLE_CONFIG}: schedule.name: unknown schedule 'linear'")
    assert lines[1].startswith(f"{EXAMPLE_CONFIG}: callbacks.0.name: unknown callback 'loss_spike'")


def test_disabled_plugin_cli_in_process(site, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TRAINFRAME_DISABLE_PLUGINS", "example")
    monkeypatch.chdir(REPO)
    use_plugins(monkeypatch)
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "example 0.1.0 (trainframe_example.plugin): disabled" in out
    assert "linear" not in out and "loss_spike" not in out

    assert cli_main(["config", "validate", "configs/tiny-cpu.yaml", "schedule.name=linear"]) == 2
    lines = problem_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("command line: schedule.name: unknown schedule 'linear'")


def test_disable_list_in_process(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TRAINFRAME_DISABLE_PLUGINS", " example ,")
    plugins = load_plugins(extra=[("local", plugin_module("local"))])
    assert status_of(plugins, "example") == "disabled"
    assert "linear" not in plugins.registry.names("schedule")
    assert plugins.manager.get_plugin("example") is None
    monkeypatch.setenv("TRAINFRAME_DISABLE_PLUGINS", "local")
    assert "local" not in [p.name for p in load_plugins(extra=[("local", plugin_module("local"))]).info]


# --------------------------------------------------------------------------- (d) misspelled hooks
def test_misspelled_hook_is_reported_and_left_out(capsys):
    @trainframe.hookimpl
    def trainframe_step_ended(trainer, step, metrics):
        pass

    @trainframe.hookimpl
    def trainframe_register(registry):
        registry.add("schedule", "never", lambda cfg, max_steps: (lambda step: 1.0))

    module = plugin_module("typo", trainframe_step_ended=trainframe_step_ended,
                           trainframe_register=trainframe_register)
    plugins = load_plugins(extra=[("typo", module)])
    expected = "implements unknown hook 'trainframe_step_ended' (did you mean 'trainframe_step_end'?)"
    assert status_of(plugins, "typo") == expected
    assert f"trainframe: warning: plugin 'typo' {expected}" in capsys.readouterr().err.splitlines()
    assert plugins.manager.get_plugin("typo") is None  # left out whole, its good hooks too
    assert "never" not in plugins.registry.names("schedule")
    assert "cosine" in plugins.registry.names("schedule")


def test_unmarked_functions_are_not_hooks():
    # Only @trainframe.hookimpl functions count; a helper with a hook-like name is left alone.
    def trainframe_helper():
        pass

    plugins = load_plugins(extra=[("plain", plugin_module("plain", trainframe_helper=trainframe_helper))])
    assert status_of(plugins, "plain") == "ok"


# --------------------------------------------------------------------- (e) failed registrations
def _half_then_fail(registry):
    registry.add("schedule", "half", lambda cfg, max_steps: (lambda step: 0.5))
    raise RuntimeError("boom")


class NotAConfig:
    pass


@pytest.mark.parametrize("register, status", [
    (_half_then_fail, "failed to register: RuntimeError: boom"),
    (lambda registry: registry.add("schedule", "cosine", lambda cfg, n: None),
     "failed to register: ValueError: schedule 'cosine' is already registered by plugin 'trainframe'"),
    (lambda registry: registry.add("scheduler", "x", lambda cfg, n: None),
     "failed to register: ValueError: unknown component kind 'scheduler'; expected one of dataset, tokenizer, "
     "model, optimizer, schedule, phases, logger, callback"),
    (lambda registry: registry.add("schedule", "x", lambda cfg, n: None, NotAConfig),
     "failed to register: TypeError: schedule 'x': config must subclass trainframe.config.ComponentConfig"),
], ids=["raises", "duplicate", "unknown-kind", "bad-config"])
def test_failed_registration_isolates_the_plugin(register, status, capsys):
    calls = []

    @trainframe.hookimpl
    def trainframe_register(registry):
        register(registry)

    @trainframe.hookimpl
    def trainframe_fit_start(trainer):
        calls.append(trainer)

    class Good(ComponentConfig):
        pass

    @trainframe.hookimpl
    def good_register(registry):
        registry.add("schedule", "flat", lambda cfg, max_steps: (lambda step: 1.0), Good)

    bad = plugin_module("bad", trainframe_register=trainframe_register, trainframe_fit_start=trainframe_fit_start)
    good = plugin_module("good", trainframe_register=good_register)
    plugins = load_plugins(extra=[("bad", bad), ("good", good)])
    assert status_of(plugins, "bad") == status
    assert f"trainframe: warning: plugin 'bad' {status}" in capsys.readouterr().err.splitlines()
    assert "half" not in plugins.registry.names("schedule")  # nothing half-registered stays behind
    assert "x" not in plugins.registry.names("schedule")
    assert plugins.registry.get("schedule", "cosine").plugin == "trainframe"
    assert plugins.registry.get("schedule", "flat").plugin == "good" and status_of(plugins, "good") == "ok"
    plugins.hook.trainframe_fit_start(trainer="t", resumed_from=None)
    assert calls == []  # the failed plugin's other hooks are unregistered too


def test_good_registration_merges_components_and_commands():
    class FlatConfig(ComponentConfig):
        level: float = 1.0

    @trainframe.hookimpl
    def trainframe_register(registry):
        registry.add("schedule", "flat", lambda cfg, max_steps: (lambda step: cfg.level), FlatConfig, help="flat")
        registry.add_command("flat show", lambda args: 0, help="show")

    plugins = load_plugins(extra=[("flat", plugin_module("flat", trainframe_register=trainframe_register))])
    comp = plugins.registry.get("schedule", "flat")
    assert (comp.plugin, comp.config, comp.help) == ("flat", FlatConfig, "flat")
    assert plugins.registry.commands["flat show"].plugin == "flat"


def test_hook_with_unknown_argument_is_isolated():
    @trainframe.hookimpl
    def trainframe_step_end(trainer, stp):
        pass

    plugins = load_plugins(extra=[("badargs", plugin_module("badargs", trainframe_step_end=trainframe_step_end))])
    assert "stp" in status_of(plugins, "badargs")


# -------------------------------------------------------------------------------------- (f) docs
def _hookspec_signatures() -> list[tuple[str, list[str]]]:
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("trainframe_")]
    specs.sort(key=lambda f: f.__code__.co_firstlineno)
    return [(f.__name__, list(inspect.signature(f).parameters)) for f in specs]


def test_hooks_doc_matches_hookspecs():
    text = (REPO / "docs" / "hooks.md").read_text()
    headings = re.findall(r"^## (trainframe_\w+)\(([^)]*)\)\s*$", text, re.M)
    documented = [(name, [a.strip() for a in args.split(",") if a.strip()]) for name, args in headings]
    assert documented == _hookspec_signatures(), "docs/hooks.md must list every hook of hookspecs.py, in order"


def test_plugins_doc_code():
    """Python blocks in docs/plugins.md parse, and blocks labelled as excerpts of the example plugin
    are copied from it verbatim, so the walk-through cannot drift from the tested code."""
    text = (REPO / "docs" / "plugins.md").read_text()
    source = (EXAMPLE / "src" / "trainframe_example" / "plugin.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    label = "# src/trainframe_example/plugin.py\n"
    excerpts = 0
    for block in blocks:
        ast.parse(block)
        if block.startswith(label):
            excerpts += 1
            assert block[len(label):] in source, block[:200]
    assert excerpts >= 1
    assert (EXAMPLE / "README.md").exists()
