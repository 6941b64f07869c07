"""The shared workflow corpus, for tests that import it by name (see tests/support.py for why)."""

import pytest
from support import SHARED

DATA = SHARED / "workflows"
CORPUS = DATA / "workflows.jsonl"
LARGE = DATA / "large" / "workflows.jsonl.xz"  # 6,835 more workflows, from other repositories


def need_data():
    if not CORPUS.is_file():
        pytest.skip("shared workflow data not present")


def need_large():
    if not LARGE.is_file():
        pytest.skip("the large shared workflow corpus is not present")
