"""The shared workflow corpus, for tests that import it by name (see tests/support.py for why)."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "workflows"
CORPUS = DATA / "workflows.jsonl"


def need_data():
    if not CORPUS.is_file():
        pytest.skip("shared workflow data not present")
