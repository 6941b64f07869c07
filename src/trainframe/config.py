"""Run configuration: YAML files with ``extends:``, dotted overrides, pydantic validation.

A run config has core sections validated here (``trainer``, ``seed``, ``name``) and component
sections (``model``, ``tokenizer``, ``data``, ``optim``, ``schedule``, ``phases``, ``loggers``,
``callbacks``) whose ``name`` picks a registered component; the rest of the section is validated
by that component's own config model. Every problem is reported as one line::

    configs/x.yaml: optim.lr: expected a number > 0, got 'fast'
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo

from trainframe.errors import UserError
from trainframe.fileio import relative_note

if TYPE_CHECKING:
    from trainframe.registry import Registry


# Unknown keys are errors; so are .inf and .nan in a float (optim.lr=.inf would train NaN).
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class ComponentConfig(BaseModel):
    """Base of every component's config model: unknown keys and non-finite numbers are errors."""

    model_config = STRICT


class TrainerConfig(BaseModel):
    model_config = STRICT

    max_steps: int = Field(1000, gt=0, description="steps to train (every phase counts); raise it on resume "
                           "to continue a run")
    batch_size: int = Field(8, gt=0, description="sequences per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null disables")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    cpu_threads: int | None = Field(None, gt=0, description="torch threads of a CPU run; null = every core but one, "
                                    "unless OMP_NUM_THREADS / MKL_NUM_THREADS or torch.set_num_threads chose fewer")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU; fp32; bf16")
    compile: bool | None = Field(None, description="torch.compile the model; null = on for CUDA")
    cuda_graphs: bool | Literal["auto"] = Field(
        False, description="replay forward and backward as CUDA graphs (compile mode reduce-overhead): for small "
        "models bound by kernel launches; one CUDA process, grad_accum 1; auto = where those hold")
    activation_checkpointing: Literal["none", "blocks"] = Field(
        "none", description="blocks: recompute each transformer block in the backward pass instead of keeping its "
        "activations (less memory, about one more forward pass of compute); none = keep them")
    loss_chunk: int | None = Field(
        None, gt=0, description="tokens per chunk of the loss: the head's float32 logits are made (and remade in "
        "backward) one chunk at a time, never for the whole batch; for large vocabularies; null = whole logits (faster)")
    deterministic: bool = Field(False, description="deterministic kernels: bitwise-repeatable CUDA runs, slower")
    distributed: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="data parallelism under torchrun: ddp (replicated weights) or fsdp2 (sharded)")
    grad_reduce: Literal["fp32", "bf16"] = Field(
        "fp32", description="dtype gradients travel in between ranks; bf16 halves the traffic, sums are rounded")
    ddp_bucket_mb: float = Field(100.0, gt=0, description="DDP gradient bucket size: one all-reduce per bucket")
    eval_every: int = Field(200, ge=0, description="steps between evals; 0 = only at the end")
    eval_batches: int = Field(20, gt=0, description="validation micro-batches per evaluation")
    log_every: int = Field(10, gt=0, description="steps between metric rows")
    save_every: int = Field(500, ge=0, description="steps between checkpoints; 0 = only at the end")
    save_every_minutes: float | None = Field(
        30.0, gt=0, description="also a checkpoint once this many minutes passed since the last one; null = off")
    keep_last: int = Field(3, gt=0, description="step checkpoints kept (best is kept apart)")
    max_bad_steps: int = Field(5, gt=0, description="consecutive NaN/Inf steps that stop the run")
    sample_prompt: str = Field("\n", description="prompt of the sample written at the end")
    sample_tokens: int = Field(200, ge=0, description="tokens sampled at the end; 0 disables")
    sample_temperature: float = Field(0.8, ge=0, description="temperature of the end sample; 0 = greedy")
    sample_top_k: int | None = Field(50, gt=0, description="top-k of the end sample; null = no top-k")


class RunConfig(BaseModel):
    """The resolved run config. Component sections hold validated component config models."""

    model_config = ConfigDict(**STRICT, arbitrary_types_allowed=True)

    name: str = Field("run", description="run directories are runs/<name>-<timestamp>/ unless --run-dir is given")
    seed: int = Field(1337, description="seed of model init, data order and dropout")
    trainer: TrainerConfig = Field(TrainerConfig(), description="the training loop: see the trainer section")
    model: dict[str, Any] = Field(description="the model: name of a registered model and its options")
    tokenizer: dict[str, Any] = Field(description="the tokenizer: name of a registered tokenizer and its options")
    data: dict[str, Any] = Field(description="the data: name of a registered dataset and its options")
    optim: dict[str, Any] = Field({"name": "adamw"}, description="the optimizer and its options")
    schedule: dict[str, Any] = Field({"name": "constant"}, description="the learning-rate schedule and its options")
    phases: dict[str, Any] = Field({"name": "full"}, description="the phase controller (which steps run backward)")
    loggers: list[dict[str, Any]] = Field([{"name": "jsonl"}, {"name": "tensorboard"}, {"name": "console"}],
                                          description="metric loggers, each a name and its options")
    callbacks: list[dict[str, Any]] = Field([], description="callbacks: registered plugin objects with hook "
                                            "implementations")

    # Filled by ``resolve``: section -> validated component config (a list of them for loggers, callbacks).
    _components: dict[str, Any] = PrivateAttr(default_factory=dict)

    def component(self, section: str):
        """The one way to read a component section: (name, validated config model) for ``model``,
        ``tokenizer``, ``data``, ``optim``, ``schedule``, ``phases``; a list of those pairs for
        ``loggers`` and ``callbacks``."""
        if section in LIST_SECTIONS:
            return [(raw["name"], sub) for raw, sub in zip(getattr(self, section), self._components[section])]
        if section not in SINGLE_SECTIONS:
            raise KeyError(f"no component section {section!r}; expected one of "
                           f"{', '.join([*SINGLE_SECTIONS, *LIST_SECTIONS])}")
        return getattr(self, section)["name"], self._components[section]

    def to_dict(self) -> dict:
        """Plain data with every component's defaults filled in (a model preset expanded): what the
        run really used."""
        data = self.model_dump(mode="json")
        for section in SINGLE_SECTIONS:
            name, sub = self.component(section)
            data[section] = {"name": name, **sub.model_dump(mode="json")}
        for section in LIST_SECTIONS:
            data[section] = [{"name": name, **sub.model_dump(mode="json")} for name, sub in self.component(section)]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SINGLE_SECTIONS = {"model": "model", "tokenizer": "tokenizer", "data": "dataset", "optim": "optimizer",
                   "schedule": "schedule", "phases": "phases"}
LIST_SECTIONS = {"loggers": "logger", "callbacks": "callback"}


# ---------------------------------------------------------------------------------------- loading

def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found{relative_note(path)}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); a config is UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top, got {type(data).__name__}")
    return data


def _set_origin(origins: dict, path: tuple, source: str, inner: dict | None = None) -> None:
    """``path`` (and everything under it) was set by ``source``; ``inner``: the origins of keys
    under ``path`` that ``source`` itself took from elsewhere (a parent of a parent)."""
    for p in [p for p in origins if p[: len(path)] == path]:
        del origins[p]
    origins[path] = source
    origins.update({p: f for p, f in (inner or {}).items() if p[: len(path)] == path})


def _merge(base: dict, over: dict, origins: dict, source: str, prefix=(), over_origins: dict | None = None) -> dict:
    """Deep-merge ``over`` onto ``base`` (mappings merge, everything else replaces); track origins.
    ``over_origins``: where the keys of ``over`` came from, when not all from ``source``."""
    out = dict(base)
    for key, value in over.items():
        path = prefix + (str(key),)
        if _other_component(prefix, key, out.get(key), value):
            out[key] = value  # the parent's options belong to the parent's component
            _set_origin(origins, path, _source(over_origins or {}, path, source), over_origins)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origins, source, path, over_origins)
        else:
            out[key] = value
            _set_origin(origins, path, _source(over_origins or {}, path, source), over_origins)
    return out


def _other_component(prefix: tuple, key, base, over) -> bool:
    """A component section that names a different component than the one it lands on: it replaces
    that section (``schedule: {name: wsd}`` over a cosine parent), as a named override does."""
    return (prefix == () and key in SINGLE_SECTIONS and isinstance(base, dict) and isinstance(over, dict)
            and "name" in over and "name" in base and over["name"] != base["name"])


def load_raw(path: str | Path, _seen: tuple = ()) -> tuple[dict, dict]:
    """Read a config file and everything it ``extends`` (paths relative to the file).

    Returns (data, origins) where origins maps key paths to the file that set them.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise UserError(f"{path}: extends: circular chain {chain}")
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        parents = []
    elif isinstance(parents, str):
        parents = [parents]
    elif not (isinstance(parents, list) and all(isinstance(p, str) for p in parents)):
        raise UserError(f"{path}: extends: expected a path or a list of paths, got {parents!r}")
    merged: dict = {}
    origins: dict = {}
    for parent in parents:
        parent_path = path.parent / parent
        if not parent_path.exists():
            raise UserError(f"{path}: extends: file not found: {parent_path}")
        pdata, porigins = load_raw(parent_path, (*_seen, resolved))
        merged = _merge(merged, pdata, origins, str(parent_path), over_origins=porigins)
    merged = _merge(merged, data, origins, str(path))
    return merged, origins


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override '{text}': expected KEY.PATH=VALUE")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override '{text}': empty key in '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, origins: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"override '{text}': {'.'.join(parts[: i + 1])}: no list item {part}")
                node = node[int(part)]
                continue
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise UserError(f"override '{text}': no list item {last}")
            key: Any = int(last)
        else:
            key = last
        current = node[key] if isinstance(node, list) else node.get(key)
        if _is_section(parts) and isinstance(value, dict) and "name" not in value and isinstance(current, dict):
            # `optim={lr: 0.5}` keeps the file's optimizer and its other keys: a section given
            # without a name merges; one with a name replaces the section.
            node[key] = _merge(current, value, origins, "command line", tuple(parts))
            continue
        node[key] = value
        _set_origin(origins, tuple(parts), "command line")
    return data


def _is_section(parts: list[str]) -> bool:
    """A whole section: ``trainer``, a component section, or one item of ``loggers`` / ``callbacks``."""
    if len(parts) == 1:
        return parts[0] in ("trainer", *SINGLE_SECTIONS)
    return len(parts) == 2 and parts[0] in LIST_SECTIONS and parts[1].isdigit()


# ------------------------------------------------------------------------------------- validation

def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        return text if len(text) < 60 else text[:57] + "..."
    return str(value)


def _field(model: type[BaseModel], loc: tuple):
    """The pydantic FieldInfo at ``loc`` inside ``model``, or None; an item of a tuple or list
    (``betas.1``) gets one of its own, so its bounds are known."""
    field = None
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            args = [a for a in typing.get_args(current) if a is not Ellipsis]
            if typing.get_origin(current) not in (tuple, list) or not args:
                return None
            field = FieldInfo.from_annotation(args[part] if len(args) > part else args[-1])
            current = field.annotation
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    return field


def _expected_number(model: type[BaseModel], loc: tuple) -> str:
    """'a number > 0' / 'an integer >= 1': the field's type and numeric bounds."""
    field = _field(model, loc)
    if field is None:
        return "a number"
    kind = "an integer" if field.annotation in (int, int | None) else "a number"
    bounds = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                bounds.append(f"{sym} {bound}")
    return kind + ((" " + " and ".join(bounds)) if bounds else "")


def _error_text(err: dict, model: type[BaseModel], loc: tuple, valid_keys) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    got = f", got {_describe(value)}"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        match = difflib.get_close_matches(key, list(valid_keys), n=1, cutoff=0.5)
        hint = f" (did you mean '{match[0]}'?)" if match else ""
        return f"unknown key{hint}"
    if kind == "missing":
        if loc and isinstance(loc[-1], int):
            return f"expected more items: item {loc[-1]} is missing"
        return "required key is missing"
    if kind == "finite_number":
        return f"expected {_expected_number(model, loc).replace('a number', 'a finite number')}{got}"
    if kind in ("float_parsing", "float_type", "greater_than", "greater_than_equal", "less_than",
                "less_than_equal"):
        return f"expected {_expected_number(model, loc)}{got}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected {_expected_number(model, loc)}{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false{got}"
    if kind in ("string_type",):
        return f"expected a string{got}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '')}{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping{got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list{got}"
    if kind in ("too_short", "too_long"):
        return f"expected {ctx.get('min_length', ctx.get('max_length'))} items{got}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg'][0].lower()}{err['msg'][1:]}{got}"


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed next to the last key of ``loc`` (for 'did you mean' hints)."""
    field = _field(model, loc[:-1]) if loc[:-1] else None
    parent = field.annotation if field is not None else (model if not loc[:-1] else None)
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        return list(parent.model_fields)
    return []


def _source(origins: dict, path: tuple, default: str) -> str:
    """The file (or "command line") that set ``path``: the nearest setting at or above a key; for a
    section whose keys came from several, the one applied last (a child over its parents, the
    command line over both: the likeliest place of the change that broke it)."""
    path = tuple(str(p) for p in path)
    under = [source for p, source in origins.items() if p[: len(path)] == path]  # in the order applied
    if under:
        return under[-1]
    for n in range(len(path) - 1, 0, -1):
        if path[:n] in origins:
            return origins[path[:n]]
    return default


def _named_key(model: type[BaseModel], message: str, prefix: tuple, origins: dict, given=()) -> tuple:
    """The key a model-wide check (a ``model_validator``) is about: of the keys its message names,
    the one set last (the likeliest change that broke it), else one the config gives (``given``)
    over a default, else the first named; () if none."""
    named = sorted((m.start(), key) for key in model.model_fields
                   if (m := re.search(rf"\b{re.escape(key)}\b", message)))
    if not named:
        return ()
    applied = [tuple(p) for p in origins]  # in the order applied

    def last_set(key: str) -> int:
        path = tuple(str(p) for p in (*prefix, key))
        return max((i for i, p in enumerate(applied) if p[: len(path)] == path), default=-1)

    return (max((key for _, key in named), key=lambda key: (last_set(key), key in given)),)


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: tuple, origins: dict,
                  default_source: str, extra_keys=(), given=()) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        valid = [*_valid_keys(model, loc), *extra_keys] if len(loc) <= 1 else _valid_keys(model, loc)
        text = _error_text(err, model, loc, valid)
        if err["type"] == "missing" and loc and isinstance(loc[-1], int):
            loc = loc[:-1]  # name the list, not the absent item
        if not loc:
            loc = _named_key(model, text, prefix, origins, given)
        path = prefix + loc
        key = ".".join(str(p) for p in path) or "(top level)"
        lines.append(f"{_source(origins, path, default_source)}: {key}: {text}")
    return lines


def _validate_component(registry: "Registry", kind: str, section: dict, prefix: tuple, origins: dict,
                        source: str, errors: list[str]):
    where = _source(origins, prefix, source)
    key = ".".join(str(p) for p in prefix)
    if not isinstance(section, dict):
        errors.append(f"{where}: {key}: expected a mapping with a 'name' key, got {_describe(section)}")
        return None
    name = section.get("name")
    if not isinstance(name, str):
        errors.append(f"{where}: {key}.name: required: the name of a registered {kind}"
                      f" ({', '.join(registry.names(kind)) or 'none registered'})")
        return None
    try:
        component = registry.get(kind, name)
    except UserError as e:
        errors.append(f"{_source(origins, prefix + ('name',), source)}: {key}.name: {e}")
        return None
    body = {k: v for k, v in section.items() if k != "name"}
    try:
        # The registry in the context: a config model may look names up in it (model presets).
        return component.config.model_validate(body, context={"registry": registry})
    except ValidationError as e:
        errors.extend(format_errors(e, component.config, prefix, origins, source, extra_keys=("name",), given=body))
        return None


def resolve(data: dict, registry: "Registry", origins: dict | None = None, source: str = "config") -> RunConfig:
    """Validate raw config data into a RunConfig; raise UserError listing every problem."""
    origins = origins or {}
    errors: list[str] = []
    if isinstance(data, dict):
        # A section given without a name keeps the default component: `optim: {lr: 1e-3}` is AdamW.
        data = dict(data)
        for section, field in RunConfig.model_fields.items():
            default = field.default
            if isinstance(default, dict) and isinstance(data.get(section), dict) and "name" not in data[section]:
                data[section] = {**default, **data[section]}
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        errors.extend(format_errors(e, RunConfig, (), origins, source))
        cfg = None
        # A component section that is present is checked below, with a better message.
        present = {s for s in (*SINGLE_SECTIONS, *LIST_SECTIONS) if isinstance(data, dict) and s in data}
        errors = [line for line, err in zip(errors, e.errors()) if not (err["loc"] and err["loc"][0] in present)]
    # Validate component sections even when core keys failed, so one run reports every problem.
    components: dict[str, Any] = {}
    defaults = {k: f.get_default(call_default_factory=True)
                for k, f in RunConfig.model_fields.items() if not f.is_required()}
    raw = {**defaults, **data} if isinstance(data, dict) else {}
    for section, kind in SINGLE_SECTIONS.items():
        if section in raw:
            components[section] = _validate_component(registry, kind, raw[section], (section,), origins,
                                                      source, errors)
    for section, kind in LIST_SECTIONS.items():
        items = raw.get(section)
        if not isinstance(items, list):
            errors.append(f"{_source(origins, (section,), source)}: {section}: expected a list of mappings with a "
                          f"'name' key ([] for none), got {_describe(items)}")
            continue
        components[section] = [_validate_component(registry, kind, item, (section, i), origins, source, errors)
                               for i, item in enumerate(items)]
    if errors:
        raise UserError("\n".join(dict.fromkeys(errors)))
    assert cfg is not None
    cfg._components = components
    return cfg


def load_config(path: str | Path, overrides: list[str], registry: "Registry") -> RunConfig:
    data, origins = load_raw(path)
    data = apply_overrides(data, origins, overrides)
    return resolve(data, registry, origins, str(path))
