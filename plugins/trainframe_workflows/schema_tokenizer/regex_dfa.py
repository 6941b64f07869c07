"""A small regex engine for JSON Schema ``pattern``: lazy DFA over characters.

Constrained decoding needs to know, for a partial string, whether some continuation can still match
(Python's ``re`` cannot answer that). Patterns are parsed into a Thompson NFA; DFA states are frozen
sets of NFA states built on demand and memoized per character. JSON Schema patterns search (they are
not anchored unless written with ``^``/``$``), so unanchored ends get an any-character loop.

Supported: literals, ``.``, escapes (\\d \\w \\s and their negations, escaped punctuation, \\n \\r \\t),
classes with ranges and negation, groups ``(...)``/``(?:...)``, ``|``, ``* + ? {m} {m,} {m,n}`` (lazy
suffixes ignored: they do not change what matches), ``^`` at the start and ``$`` at the end.
Anything else raises :class:`Unsupported`; callers then check the pattern only on the whole string.
"""

from __future__ import annotations

from typing import Callable


class Unsupported(ValueError):
    """The pattern uses syntax this engine does not model."""


def _any(c: str) -> bool:
    return True


def _dot(c: str) -> bool:  # ECMA '.': anything but line terminators
    return c not in "\n\r\u2028\u2029"


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def _word(c: str) -> bool:
    return c == "_" or "0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z"


def _space(c: str) -> bool:
    return c.isspace()


_CLASS_ESCAPES: dict[str, Callable[[str], bool]] = {
    "d": _digit,
    "D": lambda c: not _digit(c),
    "w": _word,
    "W": lambda c: not _word(c),
    "s": _space,
    "S": lambda c: not _space(c),
}
_CHAR_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "f": "\f", "v": "\v", "0": "\0"}


class _Parser:
    """Recursive descent over the pattern; produces an AST of tuples."""

    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self) -> str:
        c = self.p[self.i]
        self.i += 1
        return c

    def parse(self):
        node = self.alternation()
        if self.i != len(self.p):
            raise Unsupported(f"unexpected {self.p[self.i]!r} at {self.i}")
        return node

    def alternation(self):
        branches = [self.sequence()]
        while self.peek() == "|":
            self.take()
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self):
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.quantified())
        return ("seq", items)

    def quantified(self):
        atom = self.atom()
        while True:
            c = self.peek()
            if c == "*":
                self.take()
                atom = ("rep", atom, 0, None)
            elif c == "+":
                self.take()
                atom = ("rep", atom, 1, None)
            elif c == "?":
                self.take()
                atom = ("rep", atom, 0, 1)
            elif c == "{" and self._is_counted():
                lo, hi = self._counted()
                atom = ("rep", atom, lo, hi)
            else:
                return atom
            if self.peek() == "?":  # lazy quantifier: same language
                self.take()

    def _is_counted(self) -> bool:
        j = self.p.find("}", self.i)
        body = self.p[self.i + 1 : j] if j > 0 else ""
        return bool(body) and all(ch.isdigit() or ch == "," for ch in body) and body[0].isdigit()

    def _counted(self):
        j = self.p.index("}", self.i)
        body = self.p[self.i + 1 : j]
        self.i = j + 1
        if "," in body:
            lo, hi = body.split(",", 1)
            return int(lo), (int(hi) if hi else None)
        return int(body), int(body)

    def atom(self):
        c = self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise Unsupported("lookaround and named groups")
            node = self.alternation()
            if self.peek() != ")":
                raise Unsupported("unbalanced parenthesis")
            self.take()
            return node
        if c == "[":
            return ("set", self.char_class())
        if c == ".":
            return ("set", _dot)
        if c == "\\":
            return self.escape(in_class=False)
        if c in "^$":
            raise Unsupported("anchor inside the pattern")
        if c in "*+?":
            raise Unsupported("quantifier without operand")
        return ("char", c)

    def escape(self, in_class: bool):
        if self.peek() is None:
            raise Unsupported("trailing backslash")
        c = self.take()
        if c in _CLASS_ESCAPES:
            return ("set", _CLASS_ESCAPES[c])
        if c in _CHAR_ESCAPES:
            return ("char", _CHAR_ESCAPES[c])
        if c == "u" and len(self.p) >= self.i + 4:
            code = self.p[self.i : self.i + 4]
            self.i += 4
            return ("char", chr(int(code, 16)))
        if c.isalnum():
            raise Unsupported(f"escape \\{c}")
        return ("char", c)

    def char_class(self) -> Callable[[str], bool]:
        negate = False
        if self.peek() == "^":
            self.take()
            negate = True
        preds: list[Callable[[str], bool]] = []
        chars: set[str] = set()
        ranges: list[tuple[str, str]] = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise Unsupported("unterminated class")
            if c == "]" and not first:
                self.take()
                break
            first = False
            self.take()
            if c == "\\":
                kind, val = self.escape(in_class=True)
                if kind == "set":
                    preds.append(val)
                    continue
                lo = val
            else:
                lo = c
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.take()
                hi = self.take()
                if hi == "\\":
                    kind, hi = self.escape(in_class=True)
                    if kind == "set":
                        raise Unsupported("class escape as range end")
                ranges.append((lo, hi))
            else:
                chars.add(lo)
        frozen = frozenset(chars)

        def member(ch: str) -> bool:
            hit = ch in frozen or any(a <= ch <= b for a, b in ranges) or any(p(ch) for p in preds)
            return hit != negate

        return member


class DFA:
    """Lazy DFA. States are ints; ``step`` returns the next state or -1 (dead)."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        body = pattern
        start_anchor = body.startswith("^")
        if start_anchor:
            body = body[1:]
        end_anchor = body.endswith("$") and not body.endswith("\\$")
        if end_anchor:
            body = body[:-1]
        ast = _Parser(body).parse()
        # NFA: list of (kind, arg, next1, next2); kinds: 'eps' (two exits), 'pred' (one exit), 'match'.
        self._nodes: list[list] = []
        accept = self._new("match", None)
        exit_ = accept
        if not end_anchor:  # search semantics: anything may follow the match
            exit_ = self._any_loop(accept)
        start = self._build(ast, exit_)
        if not start_anchor:  # ... and anything may precede it
            loop = self._any_loop(start)
            start = loop
        self._accept = accept
        self._sets: list[frozenset[int]] = []
        self._index: dict[frozenset[int], int] = {}
        self._trans: list[dict[str, int]] = []
        self._accepting: list[bool] = []
        self.start = self._state(self._closure({start}))

    # --- NFA construction ---------------------------------------------------------------
    def _new(self, kind, arg) -> int:
        self._nodes.append([kind, arg, -1, -1])
        return len(self._nodes) - 1

    def _any_loop(self, exit_: int) -> int:
        """An eps node that either consumes any character and returns, or leaves to ``exit_``."""
        loop = self._new("eps", None)
        eat = self._new("pred", _any)
        self._nodes[eat][2] = loop
        self._nodes[loop][2], self._nodes[loop][3] = eat, exit_
        return loop

    def _build(self, ast, nxt: int) -> int:
        kind = ast[0]
        if kind == "char":
            ch = ast[1]
            n = self._new("pred", lambda c, ch=ch: c == ch)
            self._nodes[n][2] = nxt
            return n
        if kind == "set":
            n = self._new("pred", ast[1])
            self._nodes[n][2] = nxt
            return n
        if kind == "seq":
            for item in reversed(ast[1]):
                nxt = self._build(item, nxt)
            return nxt
        if kind == "alt":
            starts = [self._build(b, nxt) for b in ast[1]]
            while len(starts) > 1:
                e = self._new("eps", None)
                self._nodes[e][2], self._nodes[e][3] = starts.pop(), starts.pop()
                starts.append(e)
            return starts[0]
        if kind == "rep":
            _, sub, lo, hi = ast
            if hi is None:
                loop = self._new("eps", None)
                body = self._build(sub, loop)
                self._nodes[loop][2], self._nodes[loop][3] = body, nxt
                tail = loop
            else:
                tail = nxt
                for _ in range(hi - lo):
                    e = self._new("eps", None)
                    body = self._build(sub, tail)
                    self._nodes[e][2], self._nodes[e][3] = body, nxt
                    tail = e
            for _ in range(lo):
                tail = self._build(sub, tail)
            return tail
        raise Unsupported(kind)

    # --- DFA on demand ---------------------------------------------------------------
    def _closure(self, states) -> frozenset[int]:
        seen = set()
        stack = list(states)
        while stack:
            s = stack.pop()
            if s < 0 or s in seen:
                continue
            seen.add(s)
            if self._nodes[s][0] == "eps":
                stack.append(self._nodes[s][2])
                stack.append(self._nodes[s][3])
        return frozenset(seen)

    def _state(self, nfa_set: frozenset[int]) -> int:
        if not any(self._nodes[s][0] in ("pred", "match") for s in nfa_set):
            return -1
        idx = self._index.get(nfa_set)
        if idx is None:
            idx = len(self._sets)
            self._index[nfa_set] = idx
            self._sets.append(nfa_set)
            self._trans.append({})
            self._accepting.append(self._accept in nfa_set)
        return idx

    def step(self, state: int, ch: str) -> int:
        if state < 0:
            return -1
        table = self._trans[state]
        nxt = table.get(ch)
        if nxt is None:
            targets = [self._nodes[s][2] for s in self._sets[state] if self._nodes[s][0] == "pred" and self._nodes[s][1](ch)]
            nxt = self._state(self._closure(targets)) if targets else -1
            table[ch] = nxt
        return nxt

    def run(self, state: int, text: str) -> int:
        for ch in text:
            state = self.step(state, ch)
            if state < 0:
                return -1
        return state

    def accepting(self, state: int) -> bool:
        return state >= 0 and self._accepting[state]

    def matches(self, text: str) -> bool:
        return self.accepting(self.run(self.start, text))
