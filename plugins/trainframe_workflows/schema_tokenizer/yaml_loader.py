"""Read workflow YAML the way GitHub does: YAML 1.2 core scalars, string keys.

PyYAML implements YAML 1.1, where ``on``/``off``/``yes``/``no`` are booleans and ``2024-01-01`` is a
date. GitHub (and the pinned check-jsonschema, through ruamel's 1.2 mode) read those as strings, so
``on:`` stays the key "on" and dates stay strings. Only ``true``/``false`` (three spellings) are
booleans here. Mapping keys are always strings, as JSON needs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

try:  # libyaml does the scanning when available; resolution stays in Python either way
    _Base = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Base = yaml.SafeLoader


class WorkflowLoader(_Base):
    """SafeLoader with YAML 1.2 core-schema implicit tags and string keys."""


# Replace (not extend) the inherited YAML 1.1 resolvers.
WorkflowLoader.yaml_implicit_resolvers = {}
_RESOLVERS = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
]
for _tag, _rx, _first in _RESOLVERS:
    WorkflowLoader.add_implicit_resolver(_tag, re.compile(_rx), list(_first))


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)  # YAML 1.2: a leading zero is still decimal


def _construct_float(loader, node):
    text = loader.construct_scalar(node).lower()
    if text.endswith("inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text.endswith("nan"):
        return float("nan")
    return float(text)


def _construct_bool(loader, node):
    return loader.construct_scalar(node).lower() == "true"


def _construct_mapping(loader, node, deep=False):
    # Flatten merge keys (<<) first, then read every key as its source text: GitHub keys are strings.
    loader.flatten_mapping(node)
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key = str(key_node.value)
        else:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


WorkflowLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
WorkflowLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
WorkflowLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
WorkflowLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
# An explicit !!timestamp still becomes the text it was written as.
WorkflowLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node)
)


class DocumentParseError(ValueError):
    """The text is neither JSON nor YAML (or uses YAML that has no JSON form)."""


def load_yaml(text: str) -> Any:
    """Parse one YAML document with the GitHub-compatible rules above."""
    return yaml.load(text, Loader=WorkflowLoader)  # noqa: S506 - a SafeLoader subclass


def load_document(text: str) -> Any:
    """Parse workflow text: JSON when it looks like JSON, else YAML (JSON is also YAML, but slower)."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass  # flow-style YAML such as {on: push}
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        raise DocumentParseError(f"not valid YAML: {' '.join(first[:3])}") from None
    except (TypeError, ValueError, RecursionError) as e:  # e.g. unhashable keys, huge alias trees
        raise DocumentParseError(f"not a JSON-compatible YAML document: {e}") from None
