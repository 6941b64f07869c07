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


def encode_partial(tokenizer, value: Any, open_string: bool) -> list[int]:
    """Tokens of a document being written: everything of ``value`` in order, its last entries
    left open (the last string too, with ``open_string``). Raises ValueError if the schema rejects
    it or the decoder cannot go on from it."""
    spine = _spine(value)
    leaf = spine[-1]
    last = value
    for part in leaf:
        last = last[part]
    enc = Encoder(tokenizer.vocab)
    enc.open_paths = frozenset(p for p in spine if p != leaf or isinstance(last, (dict, list)) or last is None)
    enc.open_leaf = leaf if (last is None or (open_string and isinstance(last, str))) else None
    ids: list[int] = []
    enc.value(tokenizer.root, value, ids, ())
    d = tokenizer.stream()
    for t in ids:
        d.feed(t)  # raises SchemaDecodeError (a ValueError) where it cannot continue
    if d.done or tokenizer.budget.closing_cost(d) >= 1 << 30:
        raise ValueError("the document cannot be continued from here")
    return ids


def encode_typed(tokenizer, text: str) -> tuple[list[int], int]:
    """(tokens, lines used) of the longest run of leading lines of ``text`` that encodes as a
    document being written (see :func:`encode_partial`); ([], 0) when none does."""
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
            return encode_partial(tokenizer, value, open_string), k
        except (ValueError, RecursionError):
            continue
    return [], 0


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
        self._streams: dict[tuple, StreamDecoder] = {}

    def allowed(self, middle: Sequence[int]) -> np.ndarray:
        """The mask for the next middle token: a complete value of the node at the path, closed
        within ``max_tokens``; then PAD."""
        key = tuple(int(t) for t in middle)
        d = self._streams.pop(key[:-1], None) if key else None
        if d is not None:
            d.feed(key[-1])
        else:
            d = StreamDecoder(self.node, self.tokenizer.tables)
            for t in key:
                d.feed(t)
        self._streams[key] = d
        if len(self._streams) > 64:
            self._streams.pop(next(iter(self._streams)))
        if d.done:
            return self.tokenizer.tables.choice_mask((self.pad_id,)).copy()
        budget = self.tokenizer.budget
        return budget.mask(d, d.allowed(), self.max_tokens - 1 - len(key))[0].copy()

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


__all__ = ["Infill", "infill_task", "encode_typed", "encode_partial", "encode_with_spans", "parse_path",
           "value_at", "SchemaDecodeError"]
