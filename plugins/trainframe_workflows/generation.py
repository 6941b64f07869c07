"""Turning generated workflows into files: YAML that GitHub reads back as the same document."""

from __future__ import annotations

from typing import Any

import yaml


def workflow_yaml(value: Any) -> str:
    """A workflow document as block YAML, keys in document order.

    PyYAML quotes every string that YAML 1.1 would read as something else (``on``, ``yes``,
    ``2_17``), so GitHub's YAML 1.2 reading and the tokenizer's loader give back ``value``.
    """
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16)
