import os

import pytest
from support import TINY_YAML


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
