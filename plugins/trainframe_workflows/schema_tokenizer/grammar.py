"""Compile a Draft-07 JSON Schema into a grammar of node objects.

Every schema position becomes one node. A node either accepts exactly one JSON type (``Null``,
``Bool``, ``Num``, ``Str``, ``Enum``, ``Arr``, ``Obj``) or is a ``Union`` of such nodes, chosen
by one token. The rules:

- ``$ref`` is followed and memoized; as in Draft-07, keywords beside a ``$ref`` are ignored.
- ``allOf`` merges its parts into one conjunction; ``type`` sets intersect.
- ``oneOf``/``anyOf`` distribute over the rest of the conjunction: each branch becomes one or more
  alternatives of a ``Union`` (alternatives keep branch order, so the first branch that validates is
  the one chosen). Branches that only speak about which keys an object has (``required``, trivial
  ``properties``, ``not`` of those) become a *key predicate* instead: a truth table over the keys it
  mentions, which lets the decoder forbid a key that would make the object invalid.
- ``oneOf`` exclusivity is proved at compile time where possible (different types, an enum value set
  that the other branch rejects, a key one branch requires and the other forbids, a required key
  with disjoint values). What cannot be proved, and keywords without a grammar form (``not`` over
  values, ``uniqueItems``, ``contains``, schema ``dependencies``, ``propertyNames``), become *checks*
  run by a compiled jsonschema validator when a value is complete.

Nodes are built lazily (object property and array item nodes on first use), so recursive schemas
compile in finite time.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any, Callable

import jsonschema

from .regex_dfa import DFA, Unsupported

ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "id", "$comment", "title", "description", "default", "examples",
        "markdownDescription", "deprecationMessage", "deprecated", "readOnly", "writeOnly",
        "definitions", "$defs", "format", "contentMediaType", "contentEncoding", "errorMessage",
        "markdownEnumDescriptions", "enumDescriptions", "patternErrorMessage", "doNotSuggest",
        "allowTrailingCommas", "defaultSnippets",
    }
)
# Keywords the grammar models; any other non-annotation keyword (if/then/else, ...) is checked by
# jsonschema on the finished value, so encoding never accepts what the schema rejects.
MODELLED = frozenset({
    "type", "enum", "const", "allOf", "anyOf", "oneOf", "not", "$ref", "properties",
    "patternProperties", "additionalProperties", "required", "minProperties", "maxProperties",
    "dependencies", "propertyNames", "items", "additionalItems", "minItems", "maxItems",
    "uniqueItems", "contains", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
})
ALL_TYPES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})


def json_type(value: Any) -> str:
    """The JSON type name of a Python value as the encoder sees it."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def json_key(value: Any) -> str:
    """Identity of a JSON value for enum comparison (1, 1.0 equal; True and 1 distinct)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# --- nodes -------------------------------------------------------------------------------------


class Node:
    """Base of all grammar nodes. ``checks``: validators run on the finished value."""

    kind = "node"
    types: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.checks: list[tuple[str, Callable[[Any], bool]]] = []

    def accepts_type(self, t: str) -> bool:
        return t in self.types or (t == "integer" and "number" in self.types)


class Never(Node):
    kind = "never"


class Null(Node):
    kind = "null"
    types = frozenset({"null"})


class Bool(Node):
    kind = "bool"
    types = frozenset({"boolean"})


class StrSpec:
    """Constraints on the characters of a string (also used for number literals and object keys).

    ``groups``: each group is a list of DFAs of which at least one must match (AND of ORs).
    ``regexes``: the original patterns, re-checked with Python ``re`` on the finished string.
    """

    _NUMBER = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
    _INTEGER = r"^-?(0|[1-9][0-9]*)$"

    def __init__(self, patterns: list[list[str]], min_len: int = 0, max_len: int | None = None,
                 literal: str = "string") -> None:
        self.literal = literal  # "string" | "number" | "integer"
        self.min_len = min_len
        self.max_len = max_len
        self.groups: list[list[DFA]] = []
        self.regexes: list[list[re.Pattern]] = []
        self.unmodelled: list[list[re.Pattern]] = []  # patterns only checked on the whole string
        if literal != "string":
            patterns = [[self._NUMBER if literal == "number" else self._INTEGER]] + patterns
        for group in patterns:
            try:
                self.groups.append([_dfa(p) for p in group])
            except Unsupported:
                self.unmodelled.append([re.compile(p) for p in group])
            self.regexes.append([re.compile(p) for p in group])
        self.key = (literal, min_len, max_len, tuple(tuple(g) for g in patterns))
        self.plain = not self.groups  # no DFA walking needed

    def start_states(self) -> tuple[int, ...]:
        return tuple(d.start for d in self.flat_dfas)

    @cached_property
    def flat_dfas(self) -> list[DFA]:
        return [d for g in self.groups for d in g]

    @cached_property
    def group_slices(self) -> list[tuple[int, int]]:
        out, i = [], 0
        for g in self.groups:
            out.append((i, i + len(g)))
            i += len(g)
        return out

    def advance(self, states: tuple[int, ...], text: str) -> tuple[int, ...] | None:
        """DFA states after ``text``; None when some group can no longer match."""
        if not text:
            return states
        new = tuple(d.run(s, text) if s >= 0 else -1 for d, s in zip(self.flat_dfas, states))
        for a, b in self.group_slices:
            if all(s < 0 for s in new[a:b]):
                return None
        return new

    def accepting(self, states: tuple[int, ...]) -> bool:
        dfas = self.flat_dfas
        for a, b in self.group_slices:
            if not any(dfas[i].accepting(states[i]) for i in range(a, b)):
                return False
        return True

    def check(self, text: str) -> str | None:
        """Why ``text`` is not acceptable as a whole, or None."""
        n = len(text)
        if n < self.min_len:
            return f"expected at least {self.min_len} characters, got {n}"
        if self.max_len is not None and n > self.max_len:
            return f"expected at most {self.max_len} characters, got {n}"
        for group in self.regexes:
            if not any(rx.search(text) for rx in group):
                return f"{text[:40]!r} does not match {group[0].pattern!r}"
        return None


_DFA_CACHE: dict[str, DFA] = {}


def _dfa(pattern: str) -> DFA:
    d = _DFA_CACHE.get(pattern)
    if d is None:
        d = _DFA_CACHE[pattern] = DFA(pattern)
    return d


class Str(Node):
    kind = "str"
    types = frozenset({"string"})

    def __init__(self, spec: StrSpec) -> None:
        super().__init__()
        self.spec = spec


class Num(Node):
    kind = "num"

    def __init__(self, integer: bool, bounds: dict[str, float]) -> None:
        super().__init__()
        self.integer = integer
        self.bounds = bounds
        self.types = frozenset({"integer"}) if integer else frozenset({"number"})
        self.spec = StrSpec([], literal="integer" if integer else "number")

    def check_value(self, v: float) -> str | None:
        b = self.bounds
        if "minimum" in b and v < b["minimum"]:
            return f"expected >= {b['minimum']}, got {v}"
        if "maximum" in b and v > b["maximum"]:
            return f"expected <= {b['maximum']}, got {v}"
        if "exclusiveMinimum" in b and v <= b["exclusiveMinimum"]:
            return f"expected > {b['exclusiveMinimum']}, got {v}"
        if "exclusiveMaximum" in b and v >= b["exclusiveMaximum"]:
            return f"expected < {b['exclusiveMaximum']}, got {v}"
        if "multipleOf" in b:
            q = v / b["multipleOf"]
            if q != int(q):
                return f"expected a multiple of {b['multipleOf']}, got {v}"
        return None


class Enum(Node):
    kind = "enum"

    def __init__(self, values: list[Any]) -> None:
        super().__init__()
        self.values = values
        self.index = {json_key(v): i for i, v in enumerate(values)}
        self.types = frozenset(json_type(v) for v in values)


class Arr(Node):
    kind = "arr"
    types = frozenset({"array"})

    def __init__(self, compiler: "Compiler", prefix: list[tuple], rest: tuple | None,
                 min_items: int, max_items: int | None) -> None:
        super().__init__()
        self._c = compiler
        self._prefix = prefix  # conjunctions for tuple-form items
        self._rest = rest  # conjunction for the other items; None: no more items allowed
        self.min_items = min_items
        self.max_items = max_items if rest is not None else min(max_items or len(prefix), len(prefix))
        self._nodes: dict[int, Node] = {}

    def item(self, i: int) -> Node:
        node = self._nodes.get(i) if i < len(self._prefix) else self._nodes.get(-1)
        if node is None:
            if i < len(self._prefix):
                node = self._nodes[i] = self._c.node(self._prefix[i])
            else:
                node = self._nodes[-1] = self._c.node(self._rest) if self._rest is not None else NEVER
        return node


class KeyPredicate:
    """A boolean function of which keys an object has, as a table of satisfying key sets."""

    def __init__(self, expr, allowed: Callable[[str], bool]) -> None:
        atoms: list[str] = []
        _collect_atoms(expr, atoms)
        self.atoms = atoms
        self.bit = {k: 1 << i for i, k in enumerate(atoms)}
        n = len(atoms)
        if n > 16:
            raise Unsupported("key predicate over more than 16 keys")
        addable = 0
        for k in atoms:
            if allowed(k):
                addable |= self.bit[k]
        self.sat = [m for m in range(1 << n) if m & ~addable == 0 and _eval(expr, m, self.bit)]
        self.sat_set = frozenset(self.sat)
        self._viable: dict[int, bool] = {}

    def mask(self, keys) -> int:
        m = 0
        for k in keys:
            m |= self.bit.get(k, 0)
        return m

    def viable(self, mask: int) -> bool:
        """Can keys still be added so that the predicate holds?"""
        v = self._viable.get(mask)
        if v is None:
            v = self._viable[mask] = any(s & mask == mask for s in self.sat)
        return v

    def holds(self, mask: int) -> bool:
        return mask in self.sat_set


def _collect_atoms(expr, out: list[str]) -> None:
    if expr[0] == "has":
        if expr[1] not in out:
            out.append(expr[1])
    else:
        for sub in expr[1]:
            _collect_atoms(sub, out)


def _eval(expr, m: int, bit: dict[str, int]) -> bool:
    op = expr[0]
    if op == "has":
        return bool(m & bit[expr[1]])
    if op == "and":
        return all(_eval(e, m, bit) for e in expr[1])
    if op == "or":
        return any(_eval(e, m, bit) for e in expr[1])
    if op == "one":
        return sum(_eval(e, m, bit) for e in expr[1]) == 1
    if op == "not":
        return not _eval(expr[1][0], m, bit)
    raise ValueError(op)


class Obj(Node):
    kind = "obj"
    types = frozenset({"object"})

    def __init__(self, compiler: "Compiler", sides: list[dict], predicate, min_props: int,
                 max_props: int | None) -> None:
        super().__init__()
        self._c = compiler
        self.sides = sides  # each: {"props": {name: schema}, "patterns": [(regex, schema)], "additional": schema|bool}
        names: list[str] = []
        for side in sides:
            for name in side["props"]:
                if name not in names:
                    names.append(name)
        self.names = [n for n in names if self.key_allowed(n)]
        self.name_index = {n: i for i, n in enumerate(self.names)}
        self.min_props = min_props
        self.max_props = max_props
        self.predicate = KeyPredicate(predicate, self.key_allowed) if predicate is not None else None
        self._value_nodes: dict[str, Node] = {}
        self.options_cache: dict[tuple, tuple[int, ...]] = {}  # decoder: allowed choices per key state
        self.free_allowed = any(self._free_possible())
        self.key_spec = self._key_spec()

    def _side_schemas(self, side: dict, key: str) -> list | None:
        out = []
        if key in side["props"]:
            out.append(side["props"][key])
        out.extend(s for rx, s in side["patterns"] if rx.search(key))
        if not out:
            add = side["additional"]
            if add is False:
                return None
            if add is not True:
                out.append(add)
        return out

    def key_allowed(self, key: str) -> bool:
        return all(self._side_schemas(s, key) is not None for s in self.sides)

    def value_conj(self, key: str) -> tuple | None:
        conj: list = []
        for side in self.sides:
            part = self._side_schemas(side, key)
            if part is None:
                return None
            conj.extend(part)
        return tuple(conj)

    def value_node(self, key: str) -> Node:
        node = self._value_nodes.get(key)
        if node is None:
            conj = self.value_conj(key)
            node = NEVER if conj is None else self._c.node(conj)
            if len(self._value_nodes) < 4096:  # free keys are unbounded; keep the memo bounded
                self._value_nodes[key] = node
        return node

    def _free_possible(self):
        for side in self.sides:
            yield side["additional"] is not False or bool(side["patterns"])
        yield True

    def _key_spec(self) -> StrSpec:
        # Sides that forbid additional keys admit only keys matching one of their patterns.
        groups = []
        for side in self.sides:
            if side["additional"] is False:
                if not side["patterns"]:
                    self.free_allowed = False
                    break
                groups.append([rx.pattern for rx, _ in side["patterns"]])
        return StrSpec(groups)


class Union(Node):
    kind = "union"

    def __init__(self, alts: list[Node]) -> None:
        super().__init__()
        self.alts = alts
        self.types = frozenset(t for a in alts for t in a.types)
        # Alternatives that could take a value of each JSON type, in order.
        self.by_type: dict[str, list[int]] = {}
        for t in ALL_TYPES:
            self.by_type[t] = [i for i, a in enumerate(alts) if a.accepts_type(t)]


NEVER = Never()


# --- the compiler ------------------------------------------------------------------------------


class Compiler:
    """Turns (conjunctions of) raw schemas into nodes; every result is memoized."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self._memo: dict[tuple, Node] = {}
        self._keep: list[Any] = []  # derived dicts must stay alive: memo keys use id()
        self._derived: dict[tuple, dict] = {}
        cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft7Validator)
        self._validator = cls(root)
        self._validators: dict[int, Any] = {}
        self.root_node = self.node((root,))

    # jsonschema validators for checks, sharing the root's $ref resolution
    def validator(self, schema) -> Any:
        v = self._validators.get(id(schema))
        if v is None:
            v = self._validators[id(schema)] = self._validator.evolve(schema=schema)
            self._keep.append(schema)
        return v

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise Unsupported(f"only local $ref is supported, got {ref!r}")
        target: Any = self.root
        for part in ref[1:].lstrip("/").split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target[int(part)] if isinstance(target, list) else target[part]
        return target

    def without(self, schema: dict, keys: frozenset[str]) -> dict:
        k = (id(schema), keys)
        d = self._derived.get(k)
        if d is None:
            d = self._derived[k] = {a: b for a, b in schema.items() if a not in keys}
            self._keep.append(schema)
        return d

    def node(self, conj: tuple) -> Node:
        key = tuple(id(s) for s in conj)
        node = self._memo.get(key)
        if node is None:
            self._keep.append(conj)
            node = self._memo[key] = self._build(conj)
        return node

    # -- building ------------------------------------------------------------------------------
    def _flatten(self, conj: tuple) -> list | None:
        flat: list = []
        seen: set[int] = set()

        def add(s, depth=0):
            if depth > 64:
                raise Unsupported("$ref chain too deep")
            if s is True:
                return True
            if s is False:
                return False
            if not isinstance(s, dict):
                raise Unsupported(f"schema must be an object or boolean, got {type(s).__name__}")
            if "$ref" in s:  # Draft-07: siblings of $ref are ignored
                return add(self.resolve(s["$ref"]), depth + 1)
            if id(s) in seen:
                return True
            seen.add(id(s))
            flat.append(s)
            for sub in s.get("allOf", ()):
                if add(sub, depth + 1) is False:
                    return False
            return True

        for s in conj:
            if add(s) is False:
                return None
        return flat

    def _build(self, conj: tuple) -> Node:
        flat = self._flatten(conj)
        if flat is None:
            return NEVER
        types = set(ALL_TYPES)
        for s in flat:
            if "type" in s:
                ts = s["type"] if isinstance(s["type"], list) else [s["type"]]
                ts = set(ts)
                if "number" in ts:
                    ts.add("integer")
                types &= ts
        if not types:
            return NEVER
        # Split combinators: key-only ones become predicates, the first other one is distributed.
        preds: list = []
        for s in flat:
            for kw in ("anyOf", "oneOf"):
                if kw not in s:
                    continue
                if types == {"object"} and all(_key_only(b, self) for b in s[kw]):
                    op = "or" if kw == "anyOf" else "one"
                    preds.append((op, [_key_expr(b, self) for b in s[kw]]))
                    continue
                return self._distribute(flat, s, kw)
            if "not" in s and types == {"object"} and _key_only(s["not"], self):
                preds.append(("not", [_key_expr(s["not"], self)]))
        checks: list[tuple[str, Callable[[Any], bool]]] = []
        for s in flat:
            other = sorted(set(s) - MODELLED - ANNOTATIONS)
            if other:
                v = self.validator({k: s[k] for k in other})
                checks.append((f"fails the schema's {'/'.join(other)} rule", lambda x, v=v: v.is_valid(x)))
        for s in flat:
            if "not" in s and not (types == {"object"} and _key_only(s["not"], self)):
                v = self.validator(s["not"])
                checks.append(("must not match a forbidden schema", lambda x, v=v: not v.is_valid(x)))
        return self._typed(flat, types, preds, checks)

    def _distribute(self, flat: list, owner: dict, kw: str) -> Node:
        branches = owner[kw]
        # Remove the distributed keyword (and already-expanded allOf) from the rest of the conjunction.
        rest = tuple(
            self.without(s, frozenset({kw, "allOf"}) if s is owner else frozenset({"allOf"}))
            if (s is owner or "allOf" in s) else s
            for s in flat
        )
        groups: list[list[Node]] = []
        for b in branches:
            sub = self.node(rest + (b,))
            groups.append(sub.alts if isinstance(sub, Union) else ([] if sub is NEVER else [sub]))
        alts: list[Node] = []
        for gi, group in enumerate(groups):
            for alt in group:
                if kw == "oneOf":
                    for gj, other in enumerate(groups):
                        if gj != gi and not all(_disjoint(alt, o) for o in other):
                            v = self.validator(branches[gj])
                            alt = _with_check(alt, ("matches more than one oneOf branch", lambda x, v=v: not v.is_valid(x)))
                alts.append(alt)
        if not alts:
            return NEVER
        return alts[0] if len(alts) == 1 else Union(alts)

    def _typed(self, flat: list, types: set[str], preds: list, checks: list) -> Node:
        enum_vals = None
        for s in flat:
            vals = None
            if "const" in s:
                vals = [s["const"]]
            if "enum" in s:
                vals = list(s["enum"]) if vals is None else [v for v in vals if json_key(v) in {json_key(e) for e in s["enum"]}]
            if vals is not None:
                if enum_vals is None:
                    enum_vals = vals
                else:
                    keys = {json_key(v) for v in vals}
                    enum_vals = [v for v in enum_vals if json_key(v) in keys]
        if enum_vals is not None:
            # A finite set: keep the values the whole conjunction accepts, in schema order.
            whole = {"allOf": [self.without(s, frozenset({"enum", "const"})) for s in flat]}
            v = self.validator(whole)
            seen: set[str] = set()
            vals = []
            for x in enum_vals:
                k = json_key(x)
                if k not in seen and v.is_valid(x) and _type_ok(x, types):
                    seen.add(k)
                    vals.append(x)
            node: Node = Enum(vals) if vals else NEVER
            node.checks = checks
            return node
        alts: list[Node] = []
        order = ["null", "boolean", "integer", "number", "string", "array", "object"]
        for t in order:
            if t not in types or (t == "integer" and "number" in types):
                continue
            if t == "null":
                alts.append(Null())
            elif t == "boolean":
                alts.append(Bool())
            elif t in ("integer", "number"):
                bounds: dict[str, float] = {}
                for s in flat:
                    for b in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
                        if b in s and isinstance(s[b], (int, float)) and not isinstance(s[b], bool):
                            prev = bounds.get(b)
                            tighter = max if b in ("minimum", "exclusiveMinimum") else min
                            bounds[b] = s[b] if prev is None or b == "multipleOf" else tighter(prev, s[b])
                alts.append(Num(t == "integer", bounds))
            elif t == "string":
                pats = [[s["pattern"]] for s in flat if "pattern" in s]
                mn = max([s.get("minLength", 0) for s in flat] + [0])
                mxs = [s["maxLength"] for s in flat if "maxLength" in s]
                alts.append(Str(StrSpec(pats, mn, min(mxs) if mxs else None)))
            elif t == "array":
                alts.append(self._array(flat))
            elif t == "object":
                alts.append(self._object(flat, preds))
        for a in alts:
            a.checks = a.checks + checks
        alts = [a for a in alts if a is not NEVER]
        if not alts:
            return NEVER
        return alts[0] if len(alts) == 1 else Union(alts)

    def _array(self, flat: list) -> Node:
        prefix: list[list] = []
        rest: list = []
        rest_forbidden = False
        checks = []
        for s in flat:
            items = s.get("items")
            if isinstance(items, list):
                for i, it in enumerate(items):
                    while len(prefix) <= i:
                        prefix.append([])
                    prefix[i].append(it)
                add = s.get("additionalItems", True)
                if add is False:
                    rest_forbidden = True
                elif add is not True:
                    rest.append(add)
            elif items is not None:
                rest.append(items)
                for p in prefix:
                    p.append(items)
            if s.get("uniqueItems") or "contains" in s:
                v = self.validator(self.without(s, frozenset({"items", "additionalItems", "allOf", "anyOf", "oneOf", "not"})))
                checks.append(("array items", lambda x, v=v: v.is_valid(x)))
        mn = max([s.get("minItems", 0) for s in flat] + [0])
        mxs = [s["maxItems"] for s in flat if "maxItems" in s]
        node = Arr(self, [tuple(p) for p in prefix], None if rest_forbidden else tuple(rest), mn, min(mxs) if mxs else None)
        node.checks = checks
        return node

    def _object(self, flat: list, preds: list) -> Node:
        sides = []
        required: list[str] = []
        checks = []
        for s in flat:
            for r in s.get("required", ()):
                if r not in required:
                    required.append(r)
            if any(k in s for k in ("properties", "patternProperties", "additionalProperties")):
                sides.append({
                    "props": dict(s.get("properties", {})),
                    "patterns": [(re.compile(p), sub) for p, sub in s.get("patternProperties", {}).items()],
                    "additional": s.get("additionalProperties", True),
                })
            for k, dep in s.get("dependencies", {}).items():
                if isinstance(dep, list):
                    preds.append(("or", [("not", [("has", k)]), ("and", [("has", d) for d in dep])]))
                else:
                    v = self.validator({"dependencies": {k: dep}})
                    checks.append((f"dependency of {k!r}", lambda x, v=v: v.is_valid(x)))
            if "propertyNames" in s:
                v = self.validator({"propertyNames": s["propertyNames"]})
                checks.append(("property names", lambda x, v=v: v.is_valid(x)))
        for r in required:
            preds.append(("has", r))
        expr = ("and", preds) if preds else None
        mn = max([s.get("minProperties", 0) for s in flat] + [0])
        mxs = [s["maxProperties"] for s in flat if "maxProperties" in s]
        try:
            node = Obj(self, sides, expr, mn, min(mxs) if mxs else None)
        except Unsupported:  # too many keys for a truth table: check the whole object instead
            node = Obj(self, sides, None, mn, min(mxs) if mxs else None)
            v = self.validator({"allOf": [self.without(s, frozenset({"properties", "patternProperties", "additionalProperties"})) for s in flat]})
            checks.append(("required keys", lambda x, v=v: v.is_valid(x)))
        if node.predicate is not None and not node.predicate.sat:
            return NEVER
        node.checks = checks
        return node


def _type_ok(x: Any, types: set[str]) -> bool:
    t = json_type(x)
    return t in types or (t == "integer" and "number" in types)


def _with_check(node: Node, check) -> Node:
    # Nodes are shared through the memo: add the check to a shallow copy.
    clone = object.__new__(type(node))
    clone.__dict__.update(node.__dict__)
    clone.checks = node.checks + [check]
    return clone


_KEY_ONLY_KEYWORDS = frozenset({"type", "required", "properties", "not", "anyOf", "oneOf", "allOf"})


def _trivial(s) -> bool:
    return s is True or (isinstance(s, dict) and set(s) <= ANNOTATIONS)


def _key_only(s, c: Compiler) -> bool:
    """Does this schema only say which keys an object has?"""
    if isinstance(s, dict) and "$ref" in s:
        return False
    if not isinstance(s, dict) or not set(s) - ANNOTATIONS <= _KEY_ONLY_KEYWORDS:
        return False
    if "type" in s and s["type"] not in ("object", ["object"]):
        return False
    if not all(_trivial(p) for p in s.get("properties", {}).values()):
        return False
    subs = list(s.get("anyOf", ())) + list(s.get("oneOf", ())) + list(s.get("allOf", ()))
    if "not" in s:
        subs.append(s["not"])
    return all(_key_only(b, c) for b in subs)


def _key_expr(s, c: Compiler):
    parts = [("has", r) for r in s.get("required", ())]
    if "anyOf" in s:
        parts.append(("or", [_key_expr(b, c) for b in s["anyOf"]]))
    if "oneOf" in s:
        parts.append(("one", [_key_expr(b, c) for b in s["oneOf"]]))
    for b in s.get("allOf", ()):
        parts.append(_key_expr(b, c))
    if "not" in s:
        parts.append(("not", [_key_expr(s["not"], c)]))
    return ("and", parts)


def _type_class(node: Node) -> frozenset[str]:
    out = set()
    for t in node.types:
        out.add("number" if t == "integer" else t)
    return frozenset(out)


def _disjoint(a: Node, b: Node, depth: int = 0) -> bool:
    """True when no value can be accepted by both nodes (sound, not complete)."""
    if a is NEVER or b is NEVER:
        return True
    if isinstance(a, Union):
        return all(_disjoint(x, b, depth) for x in a.alts)
    if isinstance(b, Union):
        return all(_disjoint(a, y, depth) for y in b.alts)
    if not (_type_class(a) & _type_class(b)):
        return True
    if isinstance(b, Enum) and not isinstance(a, Enum):
        a, b = b, a
    if isinstance(a, Enum):
        return all(not _node_accepts(b, v) for v in a.values)
    if isinstance(a, Obj) and isinstance(b, Obj) and depth < 3:
        for x, y in ((a, b), (b, a)):
            req = _required(x)
            for k in req:
                if not y.key_allowed(k):
                    return True
                if k in _required(y) and _disjoint(x.value_node(k), y.value_node(k), depth + 1):
                    return True
    return False


def _required(o: Obj) -> set[str]:
    p = o.predicate
    if p is None or not p.sat:
        return set()
    return {k for k in p.atoms if all(m & p.bit[k] for m in p.sat)}


def _node_accepts(node: Node, value: Any) -> bool:
    from .codec import accepts  # the encoder is the exact acceptance test

    return accepts(node, value)
