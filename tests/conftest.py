import os

import pytest
from support import TINY_YAML, spawn_two_ranks


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of several seconds or more (signals, subprocesses, whole runs); "
                                       "the inner loop `python -m pytest -m \"not slow\"` leaves them out, CI runs all")


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Tokenized-data caches go to a temporary directory, never the user's home."""
    os.environ["TRAINFRAME_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="session")
def two_ranks(request, tmp_path_factory):
    """Every two-rank gloo scenario of this session's tests, run in ONE ``mp.spawn`` (each spawn costs
    two interpreter starts, ``import torch`` and plugin loading). A test module names its scenarios
    in ``TWO_RANKS = {name: (function, config_yaml)}``; each gets a directory of its own holding
    ``config.yaml``, and ``function(world, directory)`` runs on both ranks and writes what its test
    reads there. Only the modules of the tests that ask for this fixture (those collected) take part.
    Returns ``{name: directory}``."""
    modules = {item.module for item in request.session.items
               if "two_ranks" in getattr(item, "fixturenames", ()) and getattr(item, "module", None)}
    directories, scenarios = {}, []
    for module in sorted(modules, key=lambda m: m.__name__):
        for name, (function, config_yaml) in module.TWO_RANKS.items():
            assert name not in directories, f"two-rank scenario {name!r} named twice"
            directories[name] = tmp_path_factory.mktemp(f"two_ranks_{name}")
            (directories[name] / "config.yaml").write_text(config_yaml)
            scenarios.append((function, str(directories[name])))
    spawn_two_ranks(*scenarios)
    return directories
