"""``trainframe config describe``: every config option, read from the pydantic models themselves.

The run config's own sections (``RunConfig`` and ``TrainerConfig``) and every registered
component's config model are printed as rows of key, type, default and description, one line per
option, so the output can be searched with grep. Nested models (a list of ``data.sources``) are
listed under their parent key as ``parent[].key``.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from trainframe.config import LIST_SECTIONS, SINGLE_SECTIONS, RunConfig, TrainerConfig
from trainframe.errors import UserError
from trainframe.registry import KINDS, closest

# Core sections described with KIND: ``run`` (the top-level keys) and ``trainer``.
CORE = {"run": RunConfig, "trainer": TrainerConfig}
# Config section names accepted for the kind they hold: ``data`` -> dataset, ``loggers`` -> logger.
ALIASES = {section: kind for section, kind in {**SINGLE_SECTIONS, **LIST_SECTIONS}.items() if section != kind}


def _value(value: Any) -> str:
    """A default or Literal value as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = value and value.strip() == value and value.isprintable() and ":" not in value and "#" not in value
        return value if plain else yaml.safe_dump(value, default_style='"').strip()
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, dict | list):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (itself, a list of it, or it | None), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def type_text(annotation: Any) -> str:
    """A readable type: ``int``, ``float | null``, ``stale | random``, ``list[float]``, ``mapping``."""
    if annotation is type(None) or annotation is None:
        return "null"
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # a constrained item type: tuple[Beta, Beta] reads tuple[float, float]
        return type_text(args[0])
    if origin is Literal:
        return " | ".join(_value(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " | ".join(parts)
    if origin in (list, tuple, set, frozenset, dict):
        name = {list: "list", tuple: "tuple", set: "set", frozenset: "set", dict: "dict"}[origin]
        inner = [type_text(a) if a is not Ellipsis else "..." for a in args]
        return f"{name}[{', '.join(inner)}]" if inner else name
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    """Numeric bounds of a field: ``> 0``, ``>= 0 and < 1``; length bounds of a list."""
    out = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                out.append(f"{sym} {bound}")
        for attr, word in (("min_length", "at least"), ("max_length", "at most")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                out.append(f"{word} {bound} items")
    return " and ".join(out)


def default_text(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            return _value(field.default_factory())
        except TypeError:  # a factory that takes the validated data
            return "(computed)"
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


def option_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every field of ``model``, nested models' fields after
    their parent as ``parent.key`` (``parent[].key`` for a list of them)."""
    rows = []
    for key, field in model.model_fields.items():
        if field.exclude:
            continue  # internal state, not an option
        kind = type_text(field.annotation)
        bounds = _bounds(field)
        if bounds:
            kind = f"{kind}, {bounds}"
        about = " ".join((field.description or "").split())
        rows.append((prefix + (field.alias or key), kind, default_text(field), about))
        nested = _nested_model(field.annotation)
        if nested is not None and nested in CORE.values():
            rows[-1] = (prefix + key, "mapping", "{}", rows[-1][3])  # described in a block of its own
        elif nested is not None and nested is not model:
            list_like = typing.get_origin(field.annotation) in (list, tuple) or any(
                typing.get_origin(a) in (list, tuple) for a in typing.get_args(field.annotation))
            rows.extend(option_rows(nested, f"{prefix}{key}{'[]' if list_like else ''}."))
    return rows


def _block(title: str, rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = [title]
    if not rows:
        return [*lines, "  (no options)"]
    header = ("key", "type", "default", "description")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]
    for row in (header, *rows):
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        lines.append(("  " + "  ".join(cells) + "  " + row[3]).rstrip())
    return lines


def _core_block(section: str) -> list[str]:
    rows = option_rows(CORE[section])
    if section == "run":
        title = "run: the top-level keys of a run config"
        sections = {**SINGLE_SECTIONS, **LIST_SECTIONS}
        for i, (key, kind, default, about) in enumerate(rows):
            if key in SINGLE_SECTIONS:
                kind = f"{{name: {sections[key]}, ...}}"
            elif key in LIST_SECTIONS:
                kind = f"list[{{name: {sections[key]}, ...}}]"
            rows[i] = (key, kind, default, about)
    else:
        title = "trainer: the training loop (trainer.KEY)"
    return _block(title, rows)


def _component_block(component) -> list[str]:
    about = f" - {component.help}" if component.help else ""
    return _block(f"{component.kind} {component.name} ({component.plugin}){about}", option_rows(component.config))


def describe(registry, kind: str | None = None, name: str | None = None) -> list[str]:
    """The lines ``config describe [KIND [NAME]]`` prints; UserError for an unknown kind or name."""
    if kind is None:
        blocks = [_core_block(s) for s in CORE]
        blocks += [_component_block(registry.components[k][n]) for k in KINDS for n in registry.names(k)]
    else:
        kind = ALIASES.get(kind, kind)
        if kind in CORE:
            if name is not None:
                raise UserError(f"config describe {kind}: takes no NAME (got '{name}'); "
                                f"'{kind}' is a section of the run config, not a kind of component")
            blocks = [_core_block(kind)]
        elif kind in KINDS:
            names = registry.names(kind)
            if name is None:
                if not names:
                    return [f"{kind}: none registered"]
                blocks = [_component_block(registry.components[kind][n]) for n in names]
            else:
                blocks = [_component_block(registry.get(kind, name))]  # get() names the closest on a miss
        else:
            choices = [*CORE, *KINDS, *ALIASES]
            raise UserError(f"unknown config kind '{kind}'{closest(kind, choices)}; "
                            f"expected one of {', '.join([*CORE, *KINDS])}")
    lines: list[str] = []
    for block in blocks:
        if lines:
            lines.append("")
        lines.extend(block)
    return lines
