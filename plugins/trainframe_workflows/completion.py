"""Completion and infill of a workflow, the way an editor asks for them.

- **Completion** continues what a user has typed so far: the longest run of leading lines that
  reads as a document *being written* (its last entry and the containers around it still open,
  required keys still to come, the last string unfinished when the text stops mid-line) becomes
  the prompt, and constrained decoding writes the rest.
- **Infill** regenerates the value at a path (``jobs.build.steps[2]``) given everything before
  and after it, in the fill-in-the-middle layout the model was trained with (see ``windowing``):
  ``[window_pos, gap_pos] + prefix MASK suffix MASK -> middle PAD``. The middle is constrained to
  a complete value of the schema node at that path, so the suffix resumes where it belongs.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import numpy as np

from trainframe.errors import UserError

from .schema_tokenizer.codec import Encoder, SchemaDecodeError, StreamDecoder, format_path
from .schema_tokenizer.tokenizer import DecoderCache
from .schema_tokenizer.yaml_loader import load_document
from .windowing import Layout

_SEGMENT = re.compile(r"""\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|\['([^']*)'\]|([^.\[\]"']+)""")


def parse_path(text: str) -> tuple:
    """``jobs.build.steps[2]`` -> ("jobs", "build", "steps", 2); keys with dots go in brackets,
    ``jobs["a.b"]``. A malformed path raises ValueError."""
    parts: list = []
    pos = 0
    while pos < len(text):
        if parts and text[pos] == ".":
            pos += 1
        m = _SEGMENT.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"cannot read {text!r} at character {pos + 1}")
        index, dq, sq, bare = m.groups()
        parts.append(int(index) if index is not None else json.loads(dq) if dq is not None
                     else sq if sq is not None else bare)
        pos = m.end()
    if not parts:
        raise ValueError("the path is empty")
    return tuple(parts)


def value_at(doc: Any, path: tuple) -> Any:
    """The value at ``path``; a path that is not in ``doc`` raises UserError naming what is there."""
    here: Any = doc
    for i, part in enumerate(path):
        where = format_path(path[:i])
        if isinstance(here, dict) and isinstance(part, str):
            if part not in here:
                raise UserError(f"--at: {format_path(path)}: {where} has no key {part!r} "
                                f"(it has: {', '.join(map(str, here)) or 'nothing'})")
        elif isinstance(here, list) and isinstance(part, int):
            if part >= len(here):
                raise UserError(f"--at: {format_path(path)}: {where} has {len(here)} items (0 to {len(here) - 1})")
        else:
            kind = "an object" if isinstance(here, dict) else "a list" if isinstance(here, list) else "a scalar"
            raise UserError(f"--at: {format_path(path)}: {where} is {kind}, not indexable by {part!r}")
        here = here[part]
    return here


def encode_with_spans(tokenizer, value: Any) -> tuple[list[int], dict, dict]:
    """(tokens, {path: (start, end)} of every value, {path: start} of every entry with its key)."""
    enc = Encoder(tokenizer.vocab)
    enc.spans, enc.entries = {}, {}
    out: list[int] = []
    enc.value(tokenizer.root, value, out, ())
    return out, enc.spans, enc.entries


# ------------------------------------------------------------------------------------ completion
def _spine(value: Any) -> list[tuple]:
    """The paths of the last entry at each level: the containers a typed document leaves open."""
    paths, path = [()], ()
    while isinstance(value, (dict, list)) and value:
        last = next(reversed(value)) if isinstance(value, dict) else len(value) - 1
        path += (last,)
        paths.append(path)
        value = value[last]
    return paths


def encode_partial(tokenizer, value: Any, open_string: bool) -> tuple[list[int], bytes]:
    """(tokens, typed) of a document being written: everything of ``value`` in order, its last
    entries left open. With ``open_string`` and a string last, that string is left open with
    none of its text encoded: ``typed`` is its text, which the model must spell first (see
    :class:`Completion`). Raises ValueError if the schema rejects it or the decoder cannot go on."""
    spine = _spine(value)
    leaf = spine[-1]
    last = value
    for part in leaf:
        last = last[part]
    typed = last.encode("utf-8") if open_string and isinstance(last, str) else b""
    enc = Encoder(tokenizer.vocab)
    enc.open_paths = frozenset(p for p in spine if p != leaf or isinstance(last, (dict, list)) or last is None)
    enc.open_leaf = leaf if (last is None or typed) else None
    ids: list[int] = []
    enc.value(tokenizer.root, _with_leaf(value, leaf, "") if typed else value, ids, ())
    d = tokenizer.stream()
    for t in ids:
        d.feed(t)  # raises SchemaDecodeError (a ValueError) where it cannot continue
    if d.done or tokenizer.budget.closing_cost(d) >= 1 << 30:
        raise ValueError("the document cannot be continued from here")
    if typed and not tokenizer.budget.mask(d, d.allowed(), 1 << 20)[0][tokenizer.vocab.content_ids].any():
        raise ValueError("the open string cannot continue")
    return ids, typed


def _with_leaf(value: Any, leaf: tuple, new: Any) -> Any:
    """A copy of ``value`` with the value at ``leaf`` replaced (the containers on the way copied)."""
    if not leaf:
        return new
    out = dict(value) if isinstance(value, dict) else list(value)
    out[leaf[0]] = _with_leaf(value[leaf[0]], leaf[1:], new)
    return out


def encode_typed(tokenizer, text: str) -> tuple[list[int], int, bytes]:
    """(tokens, lines used, typed bytes of an open last string) of the longest run of leading
    lines of ``text`` that encodes as a document being written (see :func:`encode_partial`);
    ([], 0, b"") when none does."""
    lines = text.splitlines(keepends=True)
    for k in range(len(lines), 0, -1):
        chunk = "".join(lines[:k])
        try:
            value = load_document(chunk)
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue
        open_string = k == len(lines) and not text.endswith(("\n", "\r"))
        try:
            ids, typed = encode_partial(tokenizer, value, open_string)
            return ids, k, typed
        except (ValueError, RecursionError):
            continue
    return [], 0, b""


class Completion:
    """A workflow typed so far, to complete: the tokens of the document being written, and the
    mask for what follows (constrained, within a budget).

    When the text stops inside a string (``runs-on: ubuntu-la``), that string's typed characters
    are not encoded: the model spells them again, its first tokens held to the typed bytes, and
    goes on from there (*token healing*). Encoding ``ubuntu-la`` on its own would cut it into
    other pieces than the ``ubuntu-latest`` the model learned, and the model would continue from
    pieces it has rarely seen.
    """

    def __init__(self, tokenizer, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text
        self.prompt, self.lines, self.typed = encode_typed(tokenizer, text)
        self._heal: dict[bytes, np.ndarray] = {}

    def allowed(self, new: Sequence[int], budget: int) -> np.ndarray:
        """The next token's mask after ``new`` tokens: the tokenizer's, within ``budget``, and
        while typed bytes are left, only tokens that spell them on."""
        tok = self.tokenizer
        exp = tok.vocab.expansion
        spelled = b"".join(exp[int(t)] or b"" for t in new)
        healing = self.typed and len(spelled) < len(self.typed) and all(exp[int(t)] is not None for t in new)
        rest = self.typed[len(spelled):] if healing else b""
        # The typed bytes still to spell cost at most a token each: keep them out of the budget.
        m = tok.allowed_next(self.prompt + [int(t) for t in new], budget=budget - len(rest))
        if not healing:
            return m
        heal = self._healing(rest, first=not new)
        both = m & heal
        return both if both.any() else heal

    def min_tokens(self) -> int:
        """New tokens the shortest completion takes, its end token included."""
        return self.tokenizer.closing_cost(self.prompt) + len(self.typed) + 1

    def _healing(self, rest: bytes, first: bool) -> np.ndarray:
        """Content tokens that continue ``rest`` (or complete it and go on); at the first token,
        also dictionary strings that begin with everything typed."""
        key = rest + (b"\0" if first else b"")
        m = self._heal.get(key)
        if m is None:
            v = self.tokenizer.vocab
            m = np.zeros(v.size, dtype=bool)
            for t in v.content_ids:
                e = v.expansion[t]
                m[t] = rest.startswith(e) or e.startswith(rest)
            if first:
                for i, s in enumerate(v.dictionary):
                    m[v.dict_start + i] = s.encode("utf-8").startswith(self.typed)
            self._heal[key] = m
        return m


# ---------------------------------------------------------------------------------------- infill
class Infill:
    """One infill: the model's prompt, the mask for the middle, and the whole document after it.

    ``max_tokens`` bounds the middle, its closing PAD included; the document around the gap is
    cut to a window (prefix and suffix shared evenly) when prompt and middle would not fit in
    ``context``.
    """

    def __init__(self, tokenizer, layout: Layout, doc: Any, path: tuple, max_tokens: int) -> None:
        if not layout.fim:
            raise UserError("--infill: this run was not trained to fill in the middle (data.fim_rate 0 or "
                            "data.geometric_p 1); train with e.g. data.fim_rate=0.5 data.geometric_p=0.5")
        value_at(doc, path)
        self.tokenizer, self.path, self.max_tokens = tokenizer, path, max_tokens
        try:
            ids, spans, _ = encode_with_spans(tokenizer, doc)
        except ValueError as e:
            raise UserError(f"--infill: the document does not validate against the schema: {e}") from None
        a, b = spans[path]
        if a == b:
            raise UserError(f"--at: {format_path(path)}: the schema leaves this value no choice; nothing to fill")
        self.ids, self.start, self.end = ids, a, b
        self.original = ids[a:b]
        d = tokenizer.stream()
        for t in ids[:a]:
            d.feed(t)
        self.node = d.stack[-1].node  # the value's own frame: it has consumed nothing yet
        seq = ids + [layout.pad_id]  # the document's end PAD, as in training
        room = layout.context - 4 - max_tokens  # [window_pos, gap_pos], two MASKs
        if room < 2:
            raise UserError(f"--max-tokens: {max_tokens} leaves no room for the document around the gap in the "
                            f"model's context of {layout.context} tokens")
        before, after = a, len(seq) - b
        keep_before = min(before, max(room // 2, room - after))
        keep_after = min(after, room - keep_before)
        s = a - keep_before
        self.prompt = ([layout.pos_token(s), layout.pos_token(a - s)] + seq[s:a] + [layout.mask_id]
                       + seq[b:b + keep_after] + [layout.mask_id])
        self.pad_id = layout.pad_id
        self._streams = DecoderCache(lambda: StreamDecoder(self.node, tokenizer.tables))

    def allowed(self, middle: Sequence[int]) -> np.ndarray:
        """The mask for the next middle token: a complete value of the node at the path, closed
        within ``max_tokens``; then PAD."""
        d = self._streams.after(middle)
        if d.done:
            return self.tokenizer.tables.choice_mask((self.pad_id,)).copy()
        budget = self.tokenizer.budget
        return budget.mask(d, d.allowed(), self.max_tokens - 1 - len(middle))[0].copy()

    def document(self, middle: Sequence[int]) -> list[int]:
        """The whole document's tokens with ``middle`` in the gap."""
        return self.ids[: self.start] + [int(t) for t in middle] + self.ids[self.end:]


def infill_task(tokenizer, layout: Layout, text: str, at: str, max_tokens: int) -> Infill:
    """An :class:`Infill` for a workflow's text and a path string, bad input as one UserError."""
    try:
        path = parse_path(at)
    except ValueError as e:
        raise UserError(f"--at: {e}; expected a path such as jobs.build.steps[2] or jobs.test") from None
    try:
        doc = load_document(text)
    except ValueError as e:
        raise UserError(f"--infill: not a YAML or JSON document: {str(e).splitlines()[0]}") from None
    return Infill(tokenizer, layout, doc, path, max_tokens)


__all__ = ["Completion", "Infill", "infill_task", "encode_typed", "encode_partial", "encode_with_spans", "parse_path",
           "value_at", "SchemaDecodeError"]
