"""Helpers for testing a plugin in-process: load it as if installed, train a run from a config dict.

    from trainframe.testing import load_test_plugins, train_from_dict

    plugins = load_test_plugins(("example", my_plugin))   # an installed copy is left out, not doubled
    trainer = train_from_dict(config, tmp_path / "run", plugins=plugins)

Nothing here touches a hub or the network; point ``data`` at a file the test writes.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from trainframe.config import apply_overrides, resolve
from trainframe.plugins import Plugins, load_plugins


def load_test_plugins(*plugins: ModuleType | tuple[str, object]) -> Plugins:
    """Every installed plugin plus ``plugins`` (modules, or ``(entry-point name, module)`` pairs),
    registered as if installed. An installed plugin with the same entry-point name or module is
    left out, so a plugin under test that is also pip-installed registers once, from the test's copy."""
    pairs = [p if isinstance(p, tuple) else (p.__name__, p) for p in plugins]
    return load_plugins(extra=pairs)


def train_from_dict(config: dict, run_dir: str | Path, overrides: list[str] | tuple = (),
                    plugins: Plugins | None = None):
    """Validate ``config`` (a run config as plain data, ``KEY=VALUE`` ``overrides`` on top) and
    train it in this process into ``run_dir`` (new or empty), as ``trainframe train`` does: the
    resolved config is written to ``run_dir/config.yaml``. Returns the finished trainer
    (``.run_dir``, ``.step``, ``.model``). A bad config raises ``UserError`` with the CLI's lines.
    ``plugins``: default ``trainframe.plugins.current()``."""
    from trainframe.engine import rundir
    from trainframe.engine.build import build_trainer
    from trainframe.fileio import write_text_atomic
    from trainframe.plugins import current

    plugins = plugins or current()
    origins: dict = {}
    data = apply_overrides(config, origins, list(overrides))
    cfg = resolve(data, plugins.registry, origins, "config")
    run_dir = Path(run_dir)
    rundir.check_new(run_dir)
    trainer = build_trainer(cfg, plugins, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    trainer.fit()
    return trainer
