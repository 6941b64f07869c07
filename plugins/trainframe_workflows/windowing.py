"""Training windows over tokenized workflows: epoch offsets, PAD masking, prefix-aware targets, FIM.

A document of ``n`` tokens is read as ``seq = tokens + [PAD]``: the first PAD after a workflow is its
end-of-document target (so a model learns to stop), every later PAD is padding with target -1.

A window is one row of ``context + 1`` tokens, ``inputs = row[:-1]`` and ``targets = row[1:]``:

    [lead tokens] + seq[start:end] + PAD...

The lead is what the model sees before the window's first token: the position token ``start``
(``position_token``), or else the token before the window (PAD at a document's start, acting as
the beginning of a document). With FIM enabled every row leads with ``[window_pos, gap_pos]``.
Every token of ``seq`` is a target exactly once per epoch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

PREFIX_MODES = ("all", "log", "linear", "sample", "hybrid")


@dataclass(frozen=True)
class Layout:
    """How rows are built; the dataset derives it from its config and the tokenizer."""

    context: int
    pad_id: int
    mask_id: int
    vocab_size: int
    position_token: bool = False
    fim: bool = False  # rows lead with [window_pos, gap_pos]
    fim_max_gaps: int = 3

    @property
    def lead(self) -> int:
        return 2 if self.fim else 1

    @property
    def capacity(self) -> int:
        """Document tokens per window: the row minus lead tokens and the room FIM needs
        (one MASK in place and one before each middle, one PAD ending the last middle)."""
        room = 2 * self.fim_max_gaps + 1 if self.fim else 0
        return self.context + 1 - self.lead - room

    def pos_token(self, p: int) -> int:
        # Position p is written as token id p; positions past the ids below MASK share the last one.
        return min(int(p), self.mask_id - 1)

    def lead_tokens(self, seq: np.ndarray | None, start: int) -> list[int]:
        """What a plain row holds before ``seq[start]`` (``seq`` may be None at start 0)."""
        if self.fim:
            return [self.pos_token(start), self.mask_id]  # gap_pos MASK: this row has no gap
        if self.position_token:
            return [self.pos_token(start)]
        return [int(seq[start - 1]) if start > 0 else self.pad_id]


def window_starts(n: int, capacity: int, offset: int) -> list[tuple[int, int]]:
    """(start, end) of the windows covering ``n`` tokens in one epoch: a document's beginning
    always starts a window; with ``offset`` > 0 the next windows start at offset, offset +
    capacity, ...; windows never overlap and together cover every token once."""
    cuts = [0] + list(range(offset or capacity, n, capacity))
    return [(a, min(b, a + capacity)) for a, b in zip(cuts, cuts[1:] + [n])]


def epoch_offset(epoch: int, stride: int, capacity: int) -> int:
    return (epoch * stride) % capacity


def build_row(seq: np.ndarray, start: int, end: int, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one plain window (no gap)."""
    row = np.full(layout.context + 1, layout.pad_id, dtype=np.int64)
    lead = layout.lead_tokens(seq, start)
    k = len(lead)
    row[:k] = lead
    row[k: k + end - start] = seq[start:end]
    targets = row[1:].copy()
    targets[: k - 1] = -1  # the gap_pos token is given, not predicted
    targets[k - 1 + end - start:] = -1  # padding
    return row[:-1], targets


def prefix_positions(m: int, mode: str, count: int, bias: str, rng: np.random.Generator) -> np.ndarray:
    """Prefix lengths (0 .. m-1) trained in a document-start window of ``m`` targets: target j is
    the next token after the first j document tokens."""
    if mode == "all":
        return np.arange(m)
    picks: list[np.ndarray] = []
    if mode in ("log", "hybrid"):
        picks.append(np.array([0] + [2 ** i for i in range(max(m, 1).bit_length()) if 2 ** i < m]))
    if mode == "linear":
        picks.append(np.unique(np.linspace(0, m - 1, min(count, m)).round().astype(np.int64)))
    if mode in ("sample", "hybrid"):
        weights = 1.0 / np.arange(1, m + 1) if bias == "short" else np.ones(m)
        picks.append(rng.choice(m, size=min(count, m), replace=False, p=weights / weights.sum()))
    return np.unique(np.concatenate(picks))


def apply_prefix(targets: np.ndarray, lead: int, m: int, mode: str, count: int, bias: str,
                 rng: np.random.Generator) -> np.ndarray:
    """Keep only the selected prefix targets of a document-start window (``m`` document targets)."""
    if mode == "all":
        return targets
    keep = prefix_positions(m, mode, count, bias, rng) + lead - 1
    out = np.full_like(targets, -1)
    out[keep] = targets[keep]
    return out


def num_gaps(geometric_p: float, max_gaps: int, rng: np.random.Generator) -> int:
    """Gaps in a FIM window: failures before the first success at ``geometric_p`` (1.0 gives 0)."""
    if geometric_p >= 1.0:
        return 0
    return min(int(rng.geometric(geometric_p)) - 1, max_gaps)


def build_fim_row(seq: np.ndarray, start: int, end: int, gaps: int, layout: Layout,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of a fill-in-the-middle window with up to ``gaps`` masked spans:

        [window_pos, gap_pos] + prefix MASK middle... MASK suffix + MASK middle_1 ... MASK middle_k PAD

    Each span is replaced by one MASK in place; the middles follow, each after a MASK, in order,
    the last ended by PAD. ``gap_pos`` is the first gap's offset in the window. Every document
    token of the window is still a target once; the in-place MASKs are not targets.
    """
    body = seq[start:end]
    m = len(body)
    gaps = min(gaps, m // 2)
    if gaps == 0:
        return build_row(seq, start, end, layout)
    cuts = np.sort(rng.choice(m + 1, size=2 * gaps, replace=False))
    spans = cuts.reshape(gaps, 2)
    parts, middles, at = [], [], 0
    for a, b in spans:
        parts += [body[at:a], [layout.mask_id]]
        middles += [[layout.mask_id], body[a:b]]
        at = b
    parts.append(body[at:])
    tokens = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts + middles + [[layout.pad_id]]])
    row = np.full(layout.context + 1, layout.pad_id, dtype=np.int64)
    row[:2] = [layout.pos_token(start), layout.pos_token(spans[0, 0])]
    row[2: 2 + len(tokens)] = tokens
    targets = row[1:].copy()
    targets[0] = -1
    targets[1 + len(tokens):] = -1
    part_rows = 2 + np.cumsum([0] + [len(p) for p in parts[:-1]])  # row index where each part begins
    targets[part_rows[1::2] - 1] = -1  # the odd parts are the in-place MASKs
    return row[:-1], targets


# ---------------------------------------------------------------------------------------- packing
def segment_bound(m: int, layout: Layout) -> int:
    """The most row positions a window of ``m`` document tokens can take: its lead tokens, its
    tokens, and with FIM one MASK in place and one before each middle plus the closing PAD."""
    room = 2 * min(layout.fim_max_gaps, m // 2) + 1 if layout.fim and m >= 2 else 0
    return layout.lead - 1 + m + room


def used_length(targets: np.ndarray) -> int:
    """Positions of a row that matter: up to its last counted target (later tokens are padding, or
    unselected prefix targets whose tokens no counted target can see)."""
    counted = np.flatnonzero(targets != -1)
    return int(counted[-1]) + 1 if len(counted) else 0


def pack_rows(lengths: np.ndarray, capacity: int, chunk: int = 8192) -> list[list[int]]:
    """Group items (indices into ``lengths``) into rows of at most ``capacity`` positions: best fit,
    longest first, within consecutive chunks of ``chunk`` items (the order given is already
    shuffled, so a chunk is a random sample; chunking keeps an epoch's plan linear in its size).
    Deterministic, and every item lands in exactly one row."""
    rows: list[list[int]] = []
    for begin in range(0, len(lengths), chunk):
        items = np.arange(begin, min(begin + chunk, len(lengths)))
        free: list[tuple[int, int]] = []  # (room left, row) sorted: the tightest fitting row first
        for i in items[np.argsort(-lengths[items], kind="stable")].tolist():
            need = int(lengths[i])
            j = bisect.bisect_left(free, (need, -1))
            if j < len(free):
                room, r = free.pop(j)
                rows[r].append(i)
            else:
                room, r = capacity, len(rows)
                rows.append([i])
            if room - need > 0:
                bisect.insort(free, (room - need, r))
    return rows


def pack_batch(rows: list[list[tuple[np.ndarray, np.ndarray]]], context: int,
               pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, positions), each (len(rows), context), of packed rows: each row's
    segments (a window's inputs and targets, cut to ``used_length``) one after another, positions
    restarting at 0 for each, the rest padding (one more segment, with no targets)."""
    inputs = np.full((len(rows), context), pad_id, dtype=np.int64)
    targets = np.full((len(rows), context), -1, dtype=np.int64)
    positions = np.zeros((len(rows), context), dtype=np.int64)
    for r, segments in enumerate(rows):
        at = 0
        for x, y in segments:
            n = used_length(y)
            inputs[r, at: at + n], targets[r, at: at + n] = x[:n], y[:n]
            positions[r, at: at + n] = np.arange(n)
            at += n
        positions[r, at:] = np.arange(context - at)
    return inputs, targets, positions
