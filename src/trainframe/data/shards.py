"""Token shards on disk and the windows training reads from them.

A shard directory holds ``index.json`` and flat ``.bin`` files of uint16 or uint32 token ids
(uint32 when the vocabulary exceeds 65535), read by memmap so a corpus larger than memory costs
nothing to open. Documents are separated by the tokenizer's EOS id. The index records the largest
id (``max_id``), so that a dataset can refuse ids its tokenizer does not have when it opens the
shards, instead of failing in an embedding lookup mid-run, without reading them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from trainframe.errors import UserError
from trainframe.fileio import atomic_dir, relative_note

INDEX = "index.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def write_shards(out_dir: Path, token_chunks, vocab_size: int, meta: dict, shard_tokens: int = 1 << 26,
                 size: int | None = None) -> dict:
    """Write an iterable of token-id lists as shards plus index.json, atomically: the directory
    appears complete under its final name or not at all. ``size``: about the bytes it takes (for
    the disk-full message)."""
    out_dir = Path(out_dir)
    dtype = token_dtype(vocab_size)
    shards, buf, count, top = [], [], 0, -1

    def flush():
        nonlocal buf, count
        if not count:
            return
        name = f"shard_{len(shards):05d}.bin"
        np.concatenate(buf).astype(dtype).tofile(tmp / name)
        shards.append({"file": name, "tokens": int(count)})
        buf, count = [], 0

    # Unreadable input or a full disk leave no half-written directory; another process that
    # finished the same cache first keeps theirs.
    with atomic_dir(out_dir, "token shards", size, keep_existing=True) as tmp:
        for chunk in token_chunks:
            arr = np.asarray(chunk, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise ValueError(f"token id out of range for vocab {vocab_size}")
            top = max(top, int(arr.max())) if arr.size else top
            buf.append(arr)
            count += arr.size
            if count >= shard_tokens:
                flush()
        flush()
        index = {"dtype": dtype.name, "vocab_size": vocab_size, "max_id": top, "shards": shards, **meta}
        (tmp / INDEX).write_text(json.dumps(index, indent=1))
    return json.loads((out_dir / INDEX).read_text())


def open_shards(path: Path) -> tuple[dict, list[np.memmap]]:
    path = Path(path)
    index_file = path / INDEX
    if not index_file.exists():
        raise UserError(f"{path}: not a token shard directory (no {INDEX}){relative_note(path)}")
    try:
        index = json.loads(index_file.read_text())
        dtype = np.dtype(index["dtype"])
        arrays = []
        for shard in index["shards"]:
            arr = np.memmap(path / shard["file"], dtype=dtype, mode="r")
            if arr.size != shard["tokens"]:
                raise UserError(f"{path / shard['file']}: holds {arr.size} tokens, index says {shard['tokens']}")
            arrays.append(arr)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{index_file}: malformed shard index: {e}") from None
    except FileNotFoundError as e:
        raise UserError(f"{path}: shard file missing: {e.filename}") from None
    return index, arrays


def check_ids(index: dict, arrays: list[np.ndarray], vocab_size: int, where: str) -> None:
    """Refuse shards with an id the tokenizer does not have. The index's ``max_id`` says it at no
    cost; shards written without it (by hand, or by an older trainframe) are read once."""
    top = index.get("max_id")
    if not isinstance(top, int):
        top = max((int(a.max()) for a in arrays if a.size), default=-1)
    if top >= vocab_size:
        raise UserError(f"{where}: the shards hold token id {top}, but the tokenizer has only {vocab_size} ids "
                        f"(0 to {vocab_size - 1}); they were made with another tokenizer")


def eos_positions(inputs: np.ndarray, eos: int) -> np.ndarray:
    """(B, T) positions within documents: 0 at each row's start and at each EOS, counting up between."""
    index = np.arange(inputs.shape[1])
    starts = np.where(inputs == eos, index, 0)  # index 0 starts every row
    return index - np.maximum.accumulate(starts, axis=1)


class TokenWindows:
    """Non-overlapping windows of ``context + 1`` tokens over shards, split into train and val.

    Training draws windows in a fresh seeded permutation each epoch; the position (epoch, index)
    is the whole state, so a resumed run sees exactly the batches an uninterrupted one would.
    Under data parallelism rank r takes every world_size-th window of the permutation.

    With ``pack_eos`` (the EOS id) windows are read as packed documents: batches are (inputs,
    targets, positions), a document starting at each EOS input (the EOS that ended the one before
    acts as its beginning) and at the window's start, so attention stays within a document and
    positions restart. No target crosses a boundary: the last token of a document predicts its EOS,
    and the EOS predicts the first token of the document it begins.
    """

    def __init__(self, arrays, context: int, val_fraction: float, seed: int, rank: int = 0, world_size: int = 1,
                 pack_eos: int | None = None):
        self.arrays, self.context, self.seed = arrays, context, seed
        self.rank, self.world_size, self.pack_eos = rank, world_size, pack_eos
        train, val = [], []
        for s, arr in enumerate(arrays):
            n = (arr.size - 1) // context
            starts = np.arange(n, dtype=np.int64) * context
            n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
            if val_fraction > 0 and n > 1:
                n_val = max(1, n_val)
            # The tail of each shard is validation, so train and val never share a token.
            train.append(np.stack([np.full(n - n_val, s), starts[: n - n_val]], 1))
            val.append(np.stack([np.full(n_val, s), starts[n - n_val:]], 1))
        self.train = np.concatenate(train) if train else np.zeros((0, 2), np.int64)
        self.val = np.concatenate(val) if val else np.zeros((0, 2), np.int64)
        if len(self.train) < world_size:
            total = sum(a.size for a in arrays)
            raise UserError(f"dataset has {total} tokens: too few for one training window of {context + 1}")
        self.epoch, self.index = 0, 0
        self._perm = None
        self.held = np.zeros((0, 2), np.int64)  # training windows set aside by hold_out

    def hold_out(self, rows: int) -> tuple[torch.Tensor, ...]:
        """Sets ``rows`` training windows per rank aside for good (``SupportsHoldOut``); returns this
        rank's. The pick is seeded by the data seed alone, so every rank removes the same."""
        if len(self.held) == 0 and rows:
            n = rows * self.world_size
            if len(self.train) - n < self.world_size:
                raise UserError(f"data: {len(self.train)} training windows: too few to hold {n} out for verification")
            pick = np.random.default_rng([self.seed, 0x686F6C64]).choice(len(self.train), n, replace=False)
            self.held = self.train[np.sort(pick)]
            self.train, self._perm = np.delete(self.train, pick, 0), None
        elif len(self.held) != rows * self.world_size:
            raise ValueError(f"hold_out({rows}): {len(self.held) // self.world_size} rows per rank are held out already")
        return self._gather(self.held[self.rank:: self.world_size])

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.train))
            self._perm = perm[self.rank:: self.world_size]
        return self._perm

    def _gather(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        out = np.empty((len(rows), self.context + 1), dtype=np.int64)
        for i, (s, start) in enumerate(rows):
            out[i] = self.arrays[s][start: start + self.context + 1]
        t = torch.from_numpy(out)
        if self.pack_eos is None:
            return t[:, :-1], t[:, 1:]
        return t[:, :-1], t[:, 1:], torch.from_numpy(eos_positions(out[:, :-1], self.pack_eos))

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        while len(rows) < batch_size:
            perm = self._permutation()
            take = perm[self.index: self.index + batch_size - len(rows)]
            rows.extend(take.tolist())
            self.index += len(take)
            if self.index >= len(perm):
                self.epoch, self.index, self._perm = self.epoch + 1, 0, None
        return self._gather(self.train[rows])

    def val_batches(self, batch_size: int, max_batches: int):
        val = self.val[self.rank:: self.world_size]
        for b in range(min(max_batches, -(-len(val) // batch_size))):
            yield self._gather(val[b * batch_size: (b + 1) * batch_size])

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "index": self.index}
        if len(self.held):
            state["held"] = len(self.held) // self.world_size
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("held"):
            self.hold_out(int(state["held"]))
        self.epoch, self.index, self._perm = int(state["epoch"]), int(state["index"]), None
