"""Bad input naming the hybrid plugin's controllers: the table of tests/test_bad_input.py (same
``Case`` fields, same checks) for this plugin."""

from __future__ import annotations

import pytest
from test_bad_input import TINY, Case, run_case

CASES = [
    Case("predictive without full", "bench predictive tiny.yaml --controllers hybrid", TINY, 2, "'full' is required"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hybrid_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    run_case(case, {}, tmp_path, monkeypatch, capsys)
