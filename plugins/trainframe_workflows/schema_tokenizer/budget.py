"""Closing a document within a token budget.

Constrained decoding keeps every prefix completable, but completable is not enough when the
sample must end within ``--max-tokens``: a model can open its fifth job with ten tokens left.
:class:`Budget` knows, for every grammar state, the fewest tokens that complete the document from
there (the *closing cost*), and narrows the decoder's mask to the moves whose closing cost still
fits in the tokens left.

Costs are exact minima over one fixed move set: every choice the grammar offers, dictionary
strings, and single printable-byte content tokens (merges can only make a string shorter). So the
estimate is consistent: from a state of cost c there is always an allowed move to a state of cost
c - 1, and a sample that starts within budget always closes within it. Costs are memoized per node
(whole values) and per object key state; string states are searched once per DFA state.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from .codec import ARR, BOOL, CHOOSE, ENUM, OBJ, R_KEY, R_NUMBER, R_STRING, STR, StreamDecoder, Tables, _split_options
from .grammar import NEVER, Node, Obj, StrSpec
from .vocab import END, N_CHOICE

INF = 1 << 30
SLACK = 32  # string moves are costed only this close to the end: one token seldom adds more
MAX_STRING = 24  # longest search for a string's completion, in byte tokens
PRINTABLE = [chr(c) for c in range(0x21, 0x7F)] + [" "]  # the move set for string content


def choice_len(n: int) -> int:
    return 1 if n <= N_CHOICE else 2


class Budget:
    """Closing costs and budget masks for one vocabulary's decoders."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.vocab = tables.vocab
        self._done: dict[tuple, int] = {}
        self._busy: set[tuple] = set()
        self._hits: set[tuple] = set()
        self._nodes: dict[int, Node] = {}
        self._str: dict[tuple, tuple[int, str]] = {}
        self._content: dict[tuple, np.ndarray] = {}
        # Continuation bytes a content token leaves owing, started from a clean UTF-8 state.
        self.tail_need = np.zeros(tables.size, dtype=np.int64)
        for t in tables.content_ids:
            tail = tables.clean_tail[t]
            if tail:
                self.tail_need[t] = _utf8_len(tail[0]) - len(tail)

    # -- whole values ---------------------------------------------------------------------------
    def _memo(self, key, compute: Callable[[], int]) -> int:
        """``compute()`` memoized under ``key``. A key asked for while it is being computed is a
        cycle: a minimal value never nests a state inside itself, so that way costs INF. Results
        that leaned on such an INF for a key still open above them are not kept (they are only
        upper bounds until that key is done)."""
        c = self._done.get(key)
        if c is not None:
            return c
        if key in self._busy:
            self._hits.add(key)
            return INF
        self._busy.add(key)
        saved, self._hits = self._hits, set()
        try:
            c = min(INF, compute())
        finally:
            self._busy.discard(key)
            mine, self._hits = self._hits, saved
        mine.discard(key)
        if not mine:
            self._done[key] = c
        self._hits |= mine
        return c

    def value_cost(self, node: Node) -> int:
        """Fewest tokens of a complete value of ``node``."""
        if id(node) not in self._nodes:
            self._nodes[id(node)] = node  # memo keys are ids: keep the nodes alive
        return self._memo(("v", id(node)), lambda: self._value_cost(node))

    def _value_cost(self, node: Node) -> int:
        kind = node.kind
        if kind == "union":
            return choice_len(len(node.alts)) + min(self.value_cost(a) for a in node.alts)
        if kind == "null":
            return 0
        if kind == "enum":
            return 0 if len(node.values) <= 1 else choice_len(len(node.values))
        if kind == "bool":
            return 1
        if kind in ("str", "num"):
            role = R_NUMBER if kind == "num" else R_STRING
            return self.string_cost(node.spec, role, node, "", b"", node.spec.start_states(), 0, 0)[0]
        if kind == "arr":
            return self.arr_rest(node, 0)
        if kind == "obj":
            return self.obj_rest(node, 0, 0, 0)
        return INF

    def arr_rest(self, node, count: int) -> int:
        """Finish an array that holds ``count`` items: the missing minimum, then stop."""
        cost = 1
        for i in range(count, node.min_items):
            item = node.item(i)
            cost += INF if item is NEVER else 1 + self.value_cost(item)
        return min(cost, INF)

    def obj_rest(self, node: Obj, declared: int, pmask: int, count: int) -> int:
        """Finish an object between keys: the cheapest key set its predicate and minProperties
        accept, then the end choice."""
        full = node.max_props is not None and count >= node.max_props
        self._nodes[id(node)] = node
        key = ("o", id(node), declared, pmask, min(count, node.min_props), full)
        return self._memo(key, lambda: self._obj_rest(node, declared, pmask, count))

    def _obj_rest(self, node: Obj, declared: int, pmask: int, count: int) -> int:
        cl = choice_len(len(node.names) + 2)
        pred = node.predicate
        best = INF
        for m in ([0] if pred is None else [m for m in pred.sat if m & pmask == pmask]):
            cost, added = cl, 0
            for k in (pred.atoms if pred is not None else ()):
                if m & ~pmask & pred.bit[k]:
                    cost += self.key_cost(node, k, declared, cl)
                    added += 1
            if node.max_props is not None and count + added > node.max_props:
                continue
            need = node.min_props - count - added
            if need > 0:
                atoms = pred.bit if pred is not None else {}
                extra = [self.key_cost(node, n, declared, cl) for n in node.names if n not in atoms]
                extra = sorted(extra + [self.free_key_cost(node, cl)] * need)  # free keys: one as dear as another
                cost += sum(extra[:need]) if len(extra) >= need else INF
            best = min(best, cost)
        return best

    def free_key_cost(self, node: Obj, cl: int) -> int:
        """Adding the cheapest free key (one the schema does not name) and its cheapest value."""
        if not node.free_allowed:
            return INF
        spec = node.key_spec
        n, key = self.string_cost(spec, R_KEY, node, "", b"", spec.start_states(), 0, 0)
        return INF if n >= INF else cl + n + self.value_cost(node.value_node(key))

    def key_cost(self, node: Obj, key: str, declared: int, cl: int) -> int:
        """Adding ``key`` and its cheapest value to an object."""
        i = node.name_index.get(key)
        if i is not None:
            return INF if declared >> i & 1 else cl + self.value_cost(node.value_node(key))
        if not (node.free_allowed and node.key_allowed(key)):
            return INF
        v = self.vocab
        literal = 1 if key in v.dict_index else len(v.encode_content(key)) + 1
        return cl + literal + self.value_cost(node.value_node(key))

    # -- strings --------------------------------------------------------------------------------
    def string_cost(self, spec: StrSpec, role, node, text: str, pending: bytes, states: tuple, nchars: int,
                    ntok: int, min_depth: int = 0) -> tuple[int, str]:
        """(tokens, the characters it adds) of the shortest way to finish a string, END included.
        ``node``: the Num of a number, the Obj of a key (whose keys must be free and allowed).
        ``min_depth``: characters that must still come (a key whose text is taken already).
        Memoized per DFA state (numbers: per text); a key's answer is taken as its state's."""
        if ntok == 0 and role == R_STRING and not pending and not min_depth and self.tables.dict_mask(spec).any():
            return 1, ""
        ck = (spec.key, role, id(node) if role != R_STRING else 0, pending, states,
              nchars if spec.max_len is not None else min(nchars, spec.min_len),
              text if (role == R_NUMBER or spec.unmodelled) else None, min_depth)
        out = self._str.get(ck)
        if out is None:
            out = self._str[ck] = self._search(spec, role, node, text, pending, states, nchars, min_depth)
        return out

    def _search(self, spec, role, node, text, pending, states, nchars, min_depth) -> tuple[int, str]:
        owed, start = 0, text
        if pending:  # finish the open character first, one continuation byte a token
            ch = _complete_char(pending)
            if ch is None:
                return INF, ""
            owed = _utf8_len(pending[0]) - len(pending)
            if not spec.plain:
                states = spec.advance(states, ch)
                if states is None:
                    return INF, ""
            text += ch
        frontier = [(text, states, nchars)]
        seen = {(states, min(nchars, spec.min_len))}
        for depth in range(MAX_STRING + 1):
            if depth >= min_depth:
                for t, s, n in frontier:
                    if _can_end(spec, role, node, t, s, n):
                        return owed + depth + 1, t[len(start):]
            nxt = []
            for t, s, n in frontier:
                if spec.max_len is not None and n >= spec.max_len:
                    continue
                for ch in PRINTABLE:
                    s2 = s if spec.plain else spec.advance(s, ch)
                    if s2 is None:
                        continue
                    mark = (s2, min(n + 1, spec.min_len))
                    if mark in seen and role == R_STRING:  # numbers and keys are judged by their text
                        continue
                    seen.add(mark)
                    nxt.append((t + ch, s2, n + 1))
            frontier = nxt[:4096]
            if not frontier:
                break
        return INF, ""

    def _content_costs(self, f) -> np.ndarray:
        """Per vocabulary id: the string frame's cost to finish after that content token (INF for
        tokens it cannot take); memoized per string state, like the decoder's content masks."""
        spec, tb = f.spec, self.tables
        text = bytes(f.buf).decode("utf-8", errors="ignore")
        ck = (spec.key, f.role, id(f.node), f.pending, f.states,
              f.nchars if spec.max_len is not None else min(f.nchars, spec.min_len),
              text if (f.role == R_NUMBER or spec.unmodelled) else None)
        out = self._content.get(ck)
        if out is not None:
            return out
        from .codec import _utf8_step

        out = np.full(tb.size, INF, dtype=np.int64)
        for t in np.flatnonzero(tb.content_mask(spec, f.pending, f.states)).tolist():
            if f.pending:
                r = _utf8_step(f.pending, self.vocab.expansion[t])
                if r is None:
                    continue
                add, tail = r
            else:
                add, tail = tb.clean_text[t], tb.clean_tail[t]
            states = f.states if spec.plain else spec.advance(f.states, add)
            if states is not None:
                out[t] = self.string_cost(spec, f.role, f.node, text + add, tail, states,
                                          f.nchars + int(tb.nstarts[t]), f.ntok + 1)[0]
        if len(self._content) < 20_000:
            self._content[ck] = out
        return out

    # -- decoder states -------------------------------------------------------------------------
    def closing_cost(self, d: StreamDecoder) -> int:
        """Fewest tokens that complete the document from the decoder's state (0 when done)."""
        if d.done:
            return 0
        return min(INF, sum(self._frame_rest(d, i) for i in range(len(d.stack))))

    def _frame_rest(self, d: StreamDecoder, i: int) -> int:
        """Tokens frame ``i`` still needs once the frame above it (if any) is complete."""
        f = d.stack[i]
        top = i == len(d.stack) - 1
        kind = f.kind
        if kind == CHOOSE:
            alts = range(len(f.node.alts)) if f.hi < 0 else [a for a in range(len(f.node.alts)) if a // N_CHOICE == f.hi]
            return (choice_len(f.n) if f.hi < 0 else 1) + min(self.value_cost(f.node.alts[a]) for a in alts)
        if kind in (ENUM, BOOL):
            return choice_len(f.n) if f.hi < 0 else 1
        if kind == ARR:
            return self.arr_rest(f.node, len(f.value) + (0 if top else 1))
        if kind == OBJ:
            if top:
                return self.obj_rest(f.node, f.declared, f.pmask, len(f.value))
            if d.stack[i + 1].kind == STR and d.stack[i + 1].role == R_KEY:
                return 0  # the key frame above counts this object's rest
            return self.obj_rest(f.node, f.declared, f.pmask, len(f.value) + 1)
        # STR: always the top frame
        if f.role == R_KEY:
            return self._key_rest(d, d.stack[i - 1], f)
        text = bytes(f.buf).decode("utf-8", errors="ignore")
        return self.string_cost(f.spec, f.role, f.node, text, f.pending, f.states, f.nchars, f.ntok)[0]

    def _key_rest(self, d: StreamDecoder, parent, f) -> int:
        """An open free key: the rest of its text, its value, then the rest of its object."""
        text = bytes(f.buf).decode("utf-8", errors="ignore")
        if not f.pending and _can_end(f.spec, R_KEY, f.node, text, f.states, f.nchars) and d._key_ok(parent, text):
            return 1 + self._after_key(parent, text)
        n, more = self.string_cost(f.spec, R_KEY, f.node, text, f.pending, f.states, f.nchars, f.ntok, min_depth=1)
        return INF if n >= INF else n + self._after_key(parent, text + more)

    def _after_key(self, parent, key: str) -> int:
        """A finished free key: its value, then the rest of its object."""
        node: Obj = parent.node
        pred = node.predicate
        pmask = parent.pmask | (pred.bit.get(key, 0) if pred is not None else 0)
        return self.value_cost(node.value_node(key)) + self.obj_rest(node, parent.declared, pmask, len(parent.value) + 1)

    def mask(self, d: StreamDecoder, allowed: np.ndarray, budget: int) -> tuple[np.ndarray, bool]:
        """(the tokens of ``allowed`` after which the document still closes within ``budget``
        tokens, counting the next one; whether that removed any). If none fits, the cheapest."""
        if d.done:
            return allowed, False
        outer = sum(self._frame_rest(d, i) for i in range(len(d.stack) - 1))
        room = budget - 1 - outer  # tokens the top frame may use after the next one
        f = d.stack[-1]
        if f.kind != STR:
            opts = d._options(f)
            if f.n > N_CHOICE:
                opts = _split_options(opts, f.hi)
            costs = {o: self._option_cost(d, f, o) for o in opts}
            keep = tuple(o for o in opts if costs[o] <= room)
            if not keep:
                low = min(costs.values())
                keep = tuple(o for o in opts if costs[o] == low)
            if len(keep) == len(opts):
                return allowed, False
            return self.tables.choice_mask(keep), True
        if room - self._frame_rest(d, len(d.stack) - 1) >= SLACK:
            return allowed, False
        ids = np.flatnonzero(allowed)
        costs = self._string_costs(d, f, ids)
        ok = costs <= room
        if not ok.any():
            ok = costs == costs.min()
        if ok.all():
            return allowed, False
        out = np.zeros_like(allowed)
        out[ids[ok]] = True
        return out, True

    def _option_cost(self, d: StreamDecoder, f, o: int) -> int:
        """Closing cost of the top choice frame after choice token ``o``, the outer frames excluded."""
        if f.n > N_CHOICE and f.hi < 0:  # first half of a two-token choice: the best option it leads to
            full = d._options(f)
            return 1 + min(self._full_option_cost(d, f, c) for c in full if c // N_CHOICE == o)
        return self._full_option_cost(d, f, o if f.hi < 0 else f.hi * N_CHOICE + o)

    def _full_option_cost(self, d: StreamDecoder, f, c: int) -> int:
        node = f.node
        kind = f.kind
        if kind == CHOOSE:
            return self.value_cost(node.alts[c])
        if kind in (ENUM, BOOL):
            return 0
        if kind == ARR:
            cnt = len(f.value)
            return 0 if c == 0 else min(INF, self.value_cost(node.item(cnt)) + self.arr_rest(node, cnt + 1))
        # OBJ
        if c == 0:
            return 0
        cnt = len(f.value)
        pred = node.predicate
        if c <= len(node.names):
            name = node.names[c - 1]
            pmask = f.pmask | (pred.bit.get(name, 0) if pred is not None else 0)
            return min(INF, self.value_cost(node.value_node(name))
                       + self.obj_rest(node, f.declared | 1 << (c - 1), pmask, cnt + 1))
        n, key = self.string_cost(node.key_spec, R_KEY, node, "", b"", node.key_spec.start_states(), 0, 0)
        return INF if n >= INF else min(INF, n + self._after_key(f, key))

    def _string_costs(self, d: StreamDecoder, f, ids: np.ndarray) -> np.ndarray:
        """Closing cost of the top string frame after each token of ``ids`` (outer frames excluded)."""
        tb, spec = self.tables, f.spec
        key_parent = d.stack[-2] if f.role == R_KEY else None
        if key_parent is None and f.role == R_STRING and spec.plain and not f.pending and not spec.unmodelled:
            # Plain content: finish the open character, reach minLength, then END.
            costs = self.tail_need[ids] + np.maximum(0, spec.min_len - f.nchars - tb.nstarts[ids]) + 1
        else:
            costs = self._content_costs(f)[ids].copy()
            if key_parent is not None:  # then the key's value and the rest of its object
                text = bytes(f.buf).decode("utf-8", errors="ignore")
                more = self.string_cost(spec, R_KEY, f.node, text, f.pending, f.states, f.nchars, f.ntok, 1)[1]
                costs += self._after_key(key_parent, text + more)
        text = bytes(f.buf).decode("utf-8", errors="ignore")
        for j in np.flatnonzero((ids == END) | tb.is_dict[ids]).tolist():  # tokens that end the string
            t = int(ids[j])
            s = text if t == END else self.vocab.dictionary[t - self.vocab.dict_start]
            costs[j] = 0 if key_parent is None else self._after_key(key_parent, s)
        return np.minimum(costs, INF)


def _utf8_len(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _complete_char(pending: bytes) -> str | None:
    """A character that ``pending`` (an unfinished UTF-8 sequence) can still become."""
    need = _utf8_len(pending[0]) - len(pending)
    for fill in (0xA0, 0x80, 0x90):
        try:
            return (pending + bytes([fill]) * need).decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _can_end(spec: StrSpec, role, node, text: str, states: tuple, nchars: int) -> bool:
    """Would END be accepted after ``text`` (the decoder's ``_end_ok`` for a searched string)?"""
    if nchars < spec.min_len or (spec.groups and not spec.accepting(states)) or spec.check(text) is not None:
        return False
    if role == R_NUMBER:
        try:
            return node.check_value(json.loads(text)) is None
        except ValueError:
            return False
    if role == R_KEY:  # a free key the object allows (whether it is taken is the decoder's to say)
        return text not in node.name_index and node.key_allowed(text) and node.value_node(text) is not NEVER
    return True


__all__ = ["Budget", "INF"]
