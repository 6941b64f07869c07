"""The shared workflow corpus, for tests that import it by name (see tests/support.py for why)."""

import pytest
from support import SHARED

DATA = SHARED / "workflows"
CORPUS = DATA / "workflows.jsonl"


def need_data():
    if not CORPUS.is_file():
        pytest.skip("shared workflow data not present")
