"""Encoding a JSON value along the grammar, and decoding tokens with a stack machine.

The encoder walks value and node together and emits only what the schema leaves open: union and
enum choices, which key comes next, continue/stop for arrays, and string content. The decoder is a
pushdown automaton over the same nodes; it accepts one token at a time, so the same object serves
``decode``, ``decode_prefix`` and ``allowed_next`` (which asks it what it would accept now).
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any, Callable

import numpy as np

from .grammar import NEVER, Node, Obj, StrSpec, json_key, json_type
from .vocab import END, N_CHOICE, Vocab


class SchemaEncodeError(ValueError):
    """The document does not validate against the schema; ``path`` says where."""

    def __init__(self, path: tuple, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{format_path(path)}: {message}")


class SchemaDecodeError(ValueError):
    """The tokens do not form a schema-valid document; ``position`` is the offending token."""

    def __init__(self, position: int, message: str, path: tuple = ()) -> None:
        self.position = position
        self.path = path
        self.reason = message
        where = f" at {format_path(path)}" if path else ""
        super().__init__(f"token {position}{where}: {message}")


def format_path(path: tuple) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p and all(c.isalnum() or c in "_-" for c in p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out or "(document)"


def _type_names(node: Node) -> str:
    names = sorted({"number" if t == "integer" and "number" in node.types else t for t in node.types})
    return " or ".join(names) if names else "nothing"


def _choice_tokens(i: int, n: int, out: list[int]) -> None:
    if n <= N_CHOICE:
        out.append(i)
    else:
        out.append(i // N_CHOICE)
        out.append(i % N_CHOICE)


# --- encoder -----------------------------------------------------------------------------------


class Encoder:
    """Value -> tokens. With ``vocab=None`` it only validates (strings emit nothing)."""

    def __init__(self, vocab: Vocab | None, collect: Callable[[str, str], None] | None = None) -> None:
        self.vocab = vocab
        self.collect = collect  # training hook: sees every emitted string and its role
        # Where each value's tokens lie, {path: (start, end)}, and where each object entry or array
        # item starts (its key or continue token), {path: start}; filled when not None.
        self.spans: dict[tuple, tuple[int, int]] | None = None
        self.entries: dict[tuple, int] | None = None
        # Prefix encoding (a document being typed): the containers on these paths are still open,
        # so their required keys, minimum sizes and checks are not asked for yet; the value at
        # ``open_leaf`` is unfinished (None: not begun; a string: no END yet).
        self.open_paths: frozenset[tuple] = frozenset()
        self.open_leaf: tuple | None = None

    def encode(self, node: Node, value: Any) -> list[int]:
        out: list[int] = []
        self.value(node, value, out, ())
        return out

    def string(self, s: str, out: list[int], role: str) -> None:
        if self.collect is not None:
            self.collect(s, role)
        v = self.vocab
        if v is None:
            return
        tok = v.dict_index.get(s) if role != "number" else None
        if tok is not None:
            out.append(tok)
            return
        out.extend(v.encode_content(s))
        out.append(END)

    def value(self, node: Node, v: Any, out: list[int], path: tuple) -> None:
        mark = len(out)
        self._value(node, v, out, path)
        if self.spans is not None:
            self.spans[path] = (mark, len(out))

    def _value(self, node: Node, v: Any, out: list[int], path: tuple) -> None:
        kind = node.kind
        if v is None and path == self.open_leaf:
            return  # a key typed, its value not begun: the model writes the value
        if kind == "union":
            t = json_type(v)
            cands = node.by_type.get(t)
            if not cands:
                raise SchemaEncodeError(path, f"expected {_type_names(node)}, got {t}")
            n = len(node.alts)
            if len(cands) == 1:
                _choice_tokens(cands[0], n, out)
                self.value(node.alts[cands[0]], v, out, path)
                return
            errors = []
            for i in cands:  # the first alternative that accepts the value wins
                mark = len(out)
                _choice_tokens(i, n, out)
                try:
                    self.value(node.alts[i], v, out, path)
                    return
                except SchemaEncodeError as e:
                    del out[mark:]
                    errors.append(e)
            raise max(errors, key=lambda e: len(e.path))
        if kind == "str":
            if not isinstance(v, str):
                raise SchemaEncodeError(path, f"expected string, got {json_type(v)}")
            if path == self.open_leaf and self.vocab is not None:  # being typed: no END, no dictionary
                out.extend(self.vocab.encode_content(v))
                return
            why = node.spec.check(v)
            if why:
                raise SchemaEncodeError(path, why)
            self.string(v, out, "string")
        elif kind == "obj":
            self.obj(node, v, out, path)
        elif kind == "arr":
            if not isinstance(v, list):
                raise SchemaEncodeError(path, f"expected array, got {json_type(v)}")
            if len(v) < node.min_items and path not in self.open_paths:
                raise SchemaEncodeError(path, f"expected at least {node.min_items} items, got {len(v)}")
            if node.max_items is not None and len(v) > node.max_items:
                raise SchemaEncodeError(path, f"expected at most {node.max_items} items, got {len(v)}")
            for i, item in enumerate(v):
                if self.entries is not None:
                    self.entries[path + (i,)] = len(out)
                out.append(1)
                self.value(node.item(i), item, out, path + (i,))
            if path not in self.open_paths:
                out.append(0)
        elif kind == "enum":
            i = node.index.get(json_key(v))
            if i is None:
                shown = ", ".join(json.dumps(x) for x in node.values[:8])
                more = ", ..." if len(node.values) > 8 else ""
                raise SchemaEncodeError(path, f"expected one of {shown}{more}; got {json.dumps(v)[:60]}")
            if len(node.values) > 1:
                _choice_tokens(i, len(node.values), out)
        elif kind == "num":
            t = json_type(v)
            if t not in ("integer", "number") or (node.integer and t != "integer"):
                raise SchemaEncodeError(path, f"expected {'integer' if node.integer else 'number'}, got {t}")
            if isinstance(v, float) and not math.isfinite(v):
                raise SchemaEncodeError(path, f"{v} is not a JSON number")
            why = node.check_value(v)
            if why:
                raise SchemaEncodeError(path, why)
            literal = str(int(v)) if t == "integer" and (node.integer or isinstance(v, int)) else repr(float(v))
            self.string(literal, out, "number")
        elif kind == "bool":
            if v is not True and v is not False:
                raise SchemaEncodeError(path, f"expected boolean, got {json_type(v)}")
            out.append(1 if v else 0)
        elif kind == "null":
            if v is not None:
                raise SchemaEncodeError(path, f"expected null, got {json_type(v)}")
        else:
            raise SchemaEncodeError(path, "no value is allowed here")
        if path in self.open_paths:
            return
        for message, ok in node.checks:
            if not ok(v):
                raise SchemaEncodeError(path, message)

    def obj(self, node: Obj, v: Any, out: list[int], path: tuple) -> None:
        if not isinstance(v, dict):
            raise SchemaEncodeError(path, f"expected object, got {json_type(v)}")
        index = node.name_index
        for key in v:
            if key not in index and not (node.free_allowed and node.key_allowed(key)):
                allowed = ", ".join(node.names[:12]) + (", ..." if len(node.names) > 12 else "")
                raise SchemaEncodeError(path, f"unexpected key {key!r} (allowed: {allowed or 'none'})")
        pred = node.predicate
        if path in self.open_paths:  # keys still to come: what is there must only leave a way open
            if pred is not None and not pred.viable(pred.mask(v)):
                raise SchemaEncodeError(path, f"this combination of keys is not allowed: {', '.join(v)}")
        elif pred is not None and not pred.holds(pred.mask(v)):
            missing = [k for k in pred.atoms if k not in v and all(m & pred.bit[k] for m in pred.sat)]
            if missing:
                raise SchemaEncodeError(path, f"missing required key {missing[0]!r}")
            present = [k for k in pred.atoms if k in v]
            raise SchemaEncodeError(path, f"this combination of keys is not allowed: {', '.join(present) or 'none'}")
        if len(v) < node.min_props and path not in self.open_paths:
            raise SchemaEncodeError(path, f"expected at least {node.min_props} keys, got {len(v)}")
        if node.max_props is not None and len(v) > node.max_props:
            raise SchemaEncodeError(path, f"expected at most {node.max_props} keys, got {len(v)}")
        n = len(node.names) + 2
        free = len(node.names) + 1
        for key, val in v.items():  # document order: generated files read like written ones
            if self.entries is not None:
                self.entries[path + (key,)] = len(out)
            i = index.get(key)
            if i is not None:
                _choice_tokens(i + 1, n, out)
            else:
                _choice_tokens(free, n, out)
                self.string(key, out, "key")
            self.value(node.value_node(key), val, out, path + (key,))
        if path not in self.open_paths:
            _choice_tokens(0, n, out)


_VALIDATOR = Encoder(None)


def accepts(node: Node, value: Any) -> bool:
    try:
        _VALIDATOR.value(node, value, [], ())
        return True
    except SchemaEncodeError:
        return False


# --- decoder -----------------------------------------------------------------------------------

# Frame kinds
CHOOSE, BOOL, ENUM, ARR, OBJ, STR = range(6)
# String roles
R_STRING, R_NUMBER, R_KEY = range(3)


class Frame:
    __slots__ = ("kind", "node", "value", "path", "n", "hi", "key", "declared", "pmask", "count",
                 "spec", "role", "buf", "pending", "nchars", "states", "ntok")

    def __init__(self, kind: int, node: Node, path: tuple) -> None:
        self.kind = kind
        self.node = node
        self.path = path
        self.hi = -1  # first half of a two-token choice


class Tables:
    """Per-vocabulary precomputed facts about content tokens, and memoized masks."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        size = vocab.size
        self.size = size
        ids = vocab.content_ids
        self.content_ids = ids
        self.is_content = np.zeros(size, dtype=bool)
        self.is_content[ids] = True
        self.is_dict = np.zeros(size, dtype=bool)
        self.is_dict[vocab.dict_start:vocab.merge_start] = True
        # From a clean UTF-8 state: the text a token completes and the bytes it leaves pending.
        self.clean_text: list[str | None] = [None] * size
        self.clean_tail: list[bytes] = [b""] * size
        self.nstarts = np.zeros(size, dtype=np.int32)
        for t in ids:
            exp = vocab.expansion[t]
            self.nstarts[t] = sum(1 for b in exp if b & 0xC0 != 0x80)
            r = _utf8_step(b"", exp)
            if r is not None:
                self.clean_text[t], self.clean_tail[t] = r
        self.clean_ok = np.zeros(size, dtype=bool)
        self.clean_ok[[t for t in ids if self.clean_text[t] is not None]] = True
        self.dict_len = np.zeros(size, dtype=np.int32)
        for i, s in enumerate(vocab.dictionary):
            self.dict_len[vocab.dict_start + i] = len(s)
        self._content_masks: dict[tuple, np.ndarray] = {}
        self._dict_masks: dict[tuple, np.ndarray] = {}
        self._choice_masks: dict[tuple, np.ndarray] = {}

    def choice_mask(self, options: tuple[int, ...]) -> np.ndarray:
        m = self._choice_masks.get(options)
        if m is None:
            m = np.zeros(self.size, dtype=bool)
            m[list(options)] = True
            if len(self._choice_masks) < 100_000:
                self._choice_masks[options] = m
        return m

    def content_mask(self, spec: StrSpec, pending: bytes, states: tuple[int, ...]) -> np.ndarray:
        """Content tokens that keep the string valid UTF-8 and matchable by its patterns."""
        key = (spec.key, pending, states)
        m = self._content_masks.get(key)
        if m is not None:
            return m
        if spec.plain and not pending:
            m = self.clean_ok
        else:
            m = np.zeros(self.size, dtype=bool)
            exp = self.vocab.expansion
            for t in self.content_ids:
                if not pending:
                    text = self.clean_text[t]
                    if text is None:
                        continue
                    tail = self.clean_tail[t]
                else:
                    r = _utf8_step(pending, exp[t])
                    if r is None:
                        continue
                    text, tail = r
                if spec.plain:
                    m[t] = True
                    continue
                after = spec.advance(states, text)
                if after is not None and (not tail or _tail_viable(spec, after, tail)):
                    m[t] = True
        self._content_masks[key] = m
        return m

    def dict_mask(self, spec: StrSpec) -> np.ndarray:
        """Dictionary strings that satisfy the spec as whole strings."""
        m = self._dict_masks.get(spec.key)
        if m is None:
            m = np.zeros(self.size, dtype=bool)
            if spec.literal == "string":
                for i, s in enumerate(self.vocab.dictionary):
                    if spec.check(s) is None and (spec.plain or spec.accepting(spec.advance(spec.start_states(), s) or ())):
                        m[self.vocab.dict_start + i] = True
            self._dict_masks[spec.key] = m
        return m


def _tail_viable(spec: StrSpec, states: tuple[int, ...], tail: bytes) -> bool:
    """Could the character that ``tail`` starts still be accepted by the patterns?

    Tested with one representative completion: patterns here treat non-ASCII characters alike
    (``.``, negated classes), so one stands for all.
    """
    need = 2 if tail[0] >= 0xC0 and tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
    for fill in (0xA0, 0x80, 0x90):
        try:
            ch = (tail + bytes([fill]) * (need - len(tail))).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return spec.advance(states, ch) is not None
    return False


def _utf8_step(pending: bytes, data: bytes) -> tuple[str, bytes] | None:
    """Decode ``pending + data`` as far as possible: (complete text, incomplete tail) or None."""
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        text = dec.decode(pending + data, final=False)
    except UnicodeDecodeError:
        return None
    tail = dec.getstate()[0]
    if len(tail) >= 2 and not _second_byte_ok(tail[0], tail[1]):
        return None  # e.g. ED A0: a surrogate, which the incremental decoder only rejects later
    return text, tail


def _second_byte_ok(lead: int, second: int) -> bool:
    lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))
    return lo <= second <= hi


class StreamDecoder:
    """Consumes tokens one at a time; knows what may come next.

    Usage: ``d = tok.stream()``, then ``d.allowed()`` (a mask) and ``d.feed(token)`` per step,
    until ``d.done``; ``d.result`` is the document and ``d.partial()`` the document so far.
    """

    def __init__(self, root: Node, tables: Tables) -> None:
        self.tables = tables
        self.vocab = tables.vocab
        self.stack: list[Frame] = []
        self.pos = 0
        self.done = False
        self.result: Any = None
        self._open(root, ())

    # -- opening and closing values -------------------------------------------------------------
    def _open(self, node: Node, path: tuple) -> None:
        kind = node.kind
        if kind == "union":
            f = Frame(CHOOSE, node, path)
            f.n = len(node.alts)
        elif kind == "null":
            self._close(node, None, path)
            return
        elif kind == "enum":
            if len(node.values) == 1:
                self._close(node, node.values[0], path)
                return
            f = Frame(ENUM, node, path)
            f.n = len(node.values)
        elif kind == "bool":
            f = Frame(BOOL, node, path)
            f.n = 2
        elif kind == "arr":
            f = Frame(ARR, node, path)
            f.n = 2
            f.value = []
        elif kind == "obj":
            f = Frame(OBJ, node, path)
            f.n = len(node.names) + 2
            f.value = {}
            f.declared = 0
            f.pmask = 0
            f.key = None
        elif kind in ("str", "num"):
            f = Frame(STR, node, path)
            f.role = R_STRING if kind == "str" else R_NUMBER
            self._init_str(f, node.spec)
        else:
            raise SchemaDecodeError(self.pos, "no value is allowed here", path)
        self.stack.append(f)

    def _init_str(self, f: Frame, spec: StrSpec) -> None:
        f.spec = spec
        f.buf = bytearray()
        f.pending = b""
        f.nchars = 0
        f.states = spec.start_states()
        f.ntok = 0

    def _close(self, node: Node, value: Any, path: tuple) -> None:
        for message, ok in node.checks:
            if not ok(value):
                raise SchemaDecodeError(self.pos, message, path)
        while True:
            if not self.stack:
                self.done = True
                self.result = value
                return
            parent = self.stack[-1]
            if parent.kind == ARR:
                parent.value.append(value)
                return
            if parent.kind == OBJ:
                parent.value[parent.key] = value
                parent.key = None
                return
            raise AssertionError("value closed under a non-container frame")

    # -- what may come next -----------------------------------------------------------------------
    def _options(self, f: Frame) -> tuple[int, ...]:
        kind = f.kind
        if kind == CHOOSE or kind == ENUM or kind == BOOL:
            return _RANGES[f.n] if f.n < len(_RANGES) else tuple(range(f.n))
        if kind == ARR:
            node = f.node
            cnt = len(f.value)
            can_end = cnt >= node.min_items
            can_add = (node.max_items is None or cnt < node.max_items) and node.item(cnt) is not NEVER
            return (0, 1) if can_end and can_add else (0,) if can_end else (1,) if can_add else ()
        # OBJ
        return _obj_options(f)

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary: the tokens :meth:`feed` would accept now."""
        tb = self.tables
        if self.done:
            return tb.choice_mask((self.vocab.pad_id,))
        f = self.stack[-1]
        if f.kind != STR:
            opts = self._options(f)
            if f.n > N_CHOICE:
                opts = _split_options(opts, f.hi)
            return tb.choice_mask(opts)
        return self._str_allowed(f)

    def _str_allowed(self, f: Frame) -> np.ndarray:
        tb = self.tables
        spec = f.spec
        m = tb.content_mask(spec, f.pending, f.states)
        if spec.max_len is not None:
            m = m & (tb.nstarts <= spec.max_len - f.nchars)
        extra = []
        if self._end_ok(f):
            extra.append(END)
        if f.ntok == 0 and f.role != R_NUMBER:
            d = tb.dict_mask(spec)
            if f.role == R_KEY:
                d = d.copy()
                parent = self.stack[-2]
                for name in list(parent.node.names) + list(parent.value):
                    t = self.vocab.dict_index.get(name)
                    if t is not None:
                        d[t] = False
                for i, s in enumerate(self.vocab.dictionary):
                    if d[self.vocab.dict_start + i] and not self._key_ok(parent, s):
                        d[self.vocab.dict_start + i] = False
            m = m | d
        if extra:
            m = m.copy()
            m[END] = True
        return m

    def _end_ok(self, f: Frame) -> bool:
        if f.pending or f.nchars < f.spec.min_len:
            return False
        spec = f.spec
        if spec.groups and not spec.accepting(f.states):
            return False
        text = f.buf.decode("utf-8")
        if spec.check(text) is not None:
            return False
        if f.role == R_NUMBER:
            return f.node.check_value(json.loads(text)) is None
        if f.role == R_KEY:
            return self._key_ok(self.stack[-2], text)
        return True

    def _key_ok(self, parent: Frame, key: str) -> bool:
        node: Obj = parent.node
        if key in node.name_index or key in parent.value or not node.key_allowed(key):
            return False
        if node.value_node(key) is NEVER:
            return False
        pred = node.predicate
        if pred is not None and key in pred.bit and not pred.viable(parent.pmask | pred.bit[key]):
            return False
        return True

    # -- consuming ---------------------------------------------------------------------------------
    def feed(self, token: int) -> None:
        if self.done:
            raise SchemaDecodeError(self.pos, "the document is already complete")
        f = self.stack[-1]
        token = int(token)
        if f.kind == STR:
            self._feed_str(f, token)
        else:
            self._feed_choice(f, token)
        self.pos += 1

    def _feed_choice(self, f: Frame, token: int) -> None:
        if not 0 <= token < N_CHOICE:
            raise SchemaDecodeError(self.pos, f"expected a choice token (0-{N_CHOICE - 1}), got {token}", f.path)
        opts = self._options(f)
        if f.n > N_CHOICE:
            if f.hi < 0:
                if token not in _split_options(opts, -1):
                    raise SchemaDecodeError(self.pos, f"choice {token} is not allowed here", f.path)
                f.hi = token
                return
            token = f.hi * N_CHOICE + token
            f.hi = -1
        if token not in opts:
            raise SchemaDecodeError(self.pos, f"choice {token} is not allowed here", f.path)
        kind = f.kind
        node = f.node
        if kind == CHOOSE:
            self.stack.pop()
            self._open(node.alts[token], f.path)
        elif kind == ENUM:
            self.stack.pop()
            self._close(node, node.values[token], f.path)
        elif kind == BOOL:
            self.stack.pop()
            self._close(node, token == 1, f.path)
        elif kind == ARR:
            if token == 0:
                self.stack.pop()
                self._close(node, f.value, f.path)
            else:
                i = len(f.value)
                self._open(node.item(i), f.path + (i,))
        else:  # OBJ
            if token == 0:
                self.stack.pop()
                self._close(node, f.value, f.path)
            elif token <= len(node.names):
                name = node.names[token - 1]
                f.declared |= 1 << (token - 1)
                if node.predicate is not None:
                    f.pmask |= node.predicate.bit.get(name, 0)
                f.key = name
                self._open(node.value_node(name), f.path + (name,))
            else:
                k = Frame(STR, node, f.path)
                k.role = R_KEY
                self._init_str(k, node.key_spec)
                self.stack.append(k)

    def _feed_str(self, f: Frame, token: int) -> None:
        tb = self.tables
        spec = f.spec
        if token == END:
            if not self._end_ok(f):
                raise SchemaDecodeError(self.pos, "the string cannot end here", f.path)
            self._finish_str(f, f.buf.decode("utf-8"))
            return
        if tb.is_content[token]:
            if spec.max_len is not None and f.nchars + tb.nstarts[token] > spec.max_len:
                raise SchemaDecodeError(self.pos, "string too long", f.path)
            if f.pending:
                r = _utf8_step(f.pending, self.vocab.expansion[token])
                if r is None:
                    raise SchemaDecodeError(self.pos, "invalid UTF-8 in string", f.path)
                text, tail = r
            else:
                text = tb.clean_text[token]
                if text is None:
                    raise SchemaDecodeError(self.pos, "invalid UTF-8 in string", f.path)
                tail = tb.clean_tail[token]
            if not spec.plain:
                states = spec.advance(f.states, text)
                if states is None:
                    raise SchemaDecodeError(self.pos, "the string can no longer match its pattern", f.path)
                f.states = states
            f.buf += self.vocab.expansion[token]
            f.pending = tail
            f.nchars += int(tb.nstarts[token])
            f.ntok += 1
            return
        if tb.is_dict[token] and f.ntok == 0 and f.role != R_NUMBER:
            s = self.vocab.dictionary[token - self.vocab.dict_start]
            if not tb.dict_mask(spec)[token] or (f.role == R_KEY and not self._key_ok(self.stack[-2], s)):
                raise SchemaDecodeError(self.pos, f"dictionary string {s[:30]!r} is not allowed here", f.path)
            self._finish_str(f, s)
            return
        raise SchemaDecodeError(self.pos, f"token {token} cannot continue a string", f.path)

    def _finish_str(self, f: Frame, text: str) -> None:
        self.stack.pop()
        if f.role == R_KEY:
            parent = self.stack[-1]
            node: Obj = parent.node
            parent.key = text
            if node.predicate is not None:
                parent.pmask |= node.predicate.bit.get(text, 0)
            self._open(node.value_node(text), parent.path + (text,))
        elif f.role == R_NUMBER:
            value = json.loads(text)
            if f.node.integer and isinstance(value, float):
                value = int(value)
            self._close(f.node, value, f.path)
        else:
            self._close(f.node, text, f.path)

    # -- partial documents ---------------------------------------------------------------------
    def partial(self) -> Any:
        """The document so far: open containers included, an open string as far as it goes."""
        if self.done:
            return self.result
        value: Any = None
        have = False
        for f in reversed(self.stack):
            if f.kind == STR:
                text = bytes(f.buf).decode("utf-8", errors="ignore")
                if f.role == R_KEY:
                    value, have = None, False  # an unfinished key has no value yet
                    continue
                value, have = (text if f.role == R_STRING else None), f.role == R_STRING
            elif f.kind in (ARR, OBJ):
                container = list(f.value) if f.kind == ARR else dict(f.value)
                if have:
                    if f.kind == ARR:
                        container.append(value)
                    elif f.key is not None:
                        container[f.key] = value
                value, have = container, True
            else:
                have = False
        return value


_RANGES = [tuple(range(n)) for n in range(N_CHOICE + 1)]


def _split_options(opts: tuple[int, ...], hi: int) -> tuple[int, ...]:
    if hi < 0:
        return tuple(sorted({o // N_CHOICE for o in opts}))
    return tuple(o % N_CHOICE for o in opts if o // N_CHOICE == hi)


def _obj_options(f: Frame) -> tuple[int, ...]:
    node: Obj = f.node
    cnt = len(f.value)
    min_ok = cnt >= node.min_props
    room = node.max_props is None or cnt < node.max_props
    key = (f.declared, f.pmask, min_ok, room)
    cache = node.options_cache
    opts = cache.get(key)
    if opts is not None:
        return opts
    pred = node.predicate
    out = []
    if min_ok and (pred is None or pred.holds(f.pmask)):
        out.append(0)
    if room:
        for i, name in enumerate(node.names):
            if f.declared >> i & 1:
                continue
            if node.value_node(name) is NEVER:
                continue
            if pred is not None and name in pred.bit and not pred.viable(f.pmask | pred.bit[name]):
                continue
            out.append(i + 1)
        if node.free_allowed:
            out.append(len(node.names) + 1)
    opts = tuple(out)
    if len(cache) < 100_000:
        cache[key] = opts
    return opts
