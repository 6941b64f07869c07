"""The ``text`` dataset: prepared shards of weighted sources, drawn as a seeded mixture.

Each source is a :class:`~trainframe.data.shards.TokenWindows` over its own shards (its own
epochs and permutation). Which source the n-th training window comes from is a pure function of
(seed, n), so the whole mixture position is ``n`` plus each source's window position: a resumed
run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field, field_validator

from trainframe.config import ComponentConfig
from trainframe.data.datasets import PACK_HELP, pack_eos
from trainframe.data.shards import INDEX, TokenWindows, check_ids, open_shards
from trainframe.errors import UserError

from .sources import SourceConfig, source_key

BLOCK = 4096  # mixture draws generated per RNG block


class TextDataConfig(ComponentConfig):
    sources: list[SourceConfig] = Field(description="hub datasets or local files, each with a weight")
    dir: str = Field(description="where `trainframe data prepare` writes shards and the manifest")
    val_fraction: float = Field(0.01, ge=0, lt=1, description="tail share of each source's shards held out")
    chunk_bytes: int = Field(4 << 20, ge=1024, description="text per tokenization chunk (the unit of resume)")
    workers: int | None = Field(None, gt=0, description="`data prepare` processes; null = all cores")
    pack: bool = Field(False, description=PACK_HELP)

    @field_validator("sources")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("expected at least one source")
        return v


class MixtureWindows:
    def __init__(self, sources: list[TokenWindows], weights: list[float], seed: int, chars_per_token: float | None):
        self.sources = sources
        self.p = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.seed = seed
        self.drawn = 0  # training windows drawn so far (the same count on every rank)
        self.chars_per_token = chars_per_token
        self._block: tuple[int, np.ndarray] | None = None

    def choices(self, start: int, n: int) -> np.ndarray:
        """The sources of draws start .. start + n - 1: a pure function of (seed, draw number)."""
        parts, pos, end = [], start, start + n
        while pos < end:
            b, j = divmod(pos, BLOCK)
            if self._block is None or self._block[0] != b:
                rng = np.random.default_rng([self.seed, 0x6D6978, b])
                self._block = (b, rng.choice(len(self.p), size=BLOCK, p=self.p))
            take = min(BLOCK - j, end - pos)
            parts.append(self._block[1][j: j + take])
            pos += take
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(inputs, targets), or packed (inputs, targets, positions), each row from its drawn source."""
        which = self.choices(self.drawn, batch_size)
        self.drawn += batch_size
        if len(self.sources) == 1:
            return self.sources[0].next_batch(batch_size)
        out = None
        for s in np.unique(which):
            rows = np.nonzero(which == s)[0]
            part = self.sources[s].next_batch(len(rows))
            if out is None:
                out = tuple(torch.empty((batch_size, t.shape[1]), dtype=t.dtype) for t in part)
            for whole, t in zip(out, part):
                whole[rows] = t
        return out

    def hold_out(self, rows: int) -> tuple[torch.Tensor, ...]:
        """``SupportsHoldOut``: the rows shared among the sources by a seeded weighted draw, each
        source holding out its share (its state records it)."""
        shares = np.bincount(np.random.default_rng([self.seed, 0x686F6C64]).choice(len(self.p), size=rows, p=self.p),
                             minlength=len(self.p))
        parts = [src.hold_out(int(n)) for src, n in zip(self.sources, shares)]
        return tuple(torch.cat(ts) for ts in zip(*parts))

    def val_batches(self, batch_size: int, max_batches: int):
        """A fixed weighted interleaving of the sources' validation windows (the same every call)."""
        vals = [iter(src.val_batches(1, 1 << 30)) for src in self.sources]
        rng = np.random.default_rng([self.seed, 0x76616C])
        live = [len(src.val) > 0 for src in self.sources]
        for _ in range(max_batches):
            rows = []
            while len(rows) < batch_size and any(live):
                p = self.p * live
                s = rng.choice(len(p), p=p / p.sum())
                row = next(vals[s], None)
                if row is None:
                    live[s] = False
                    continue
                rows.append(row)
            if not rows:
                return
            yield tuple(torch.cat(parts) for parts in zip(*rows))

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["sources"]) != len(self.sources):
            raise UserError(f"checkpoint: data position has {len(state['sources'])} sources, the config "
                            f"{len(self.sources)}; a mixture cannot be resumed with other sources")
        self.drawn = int(state["drawn"])
        for src, s in zip(self.sources, state["sources"]):
            src.load_state_dict(s)


def _bytes_per_token(windows: TokenWindows, tokenizer, limit: int = 32) -> float | None:
    """UTF-8 bytes of decoded text per token over (up to) the first validation windows."""
    n_bytes = n_tokens = 0
    for batch in windows.val_batches(1, limit):
        ids = batch[0][0].tolist()
        n_bytes += len(tokenizer.decode(ids).encode("utf-8"))
        n_tokens += len(ids)
    return n_bytes / n_tokens if n_tokens else None


def open_prepared(cfg: TextDataConfig, tokenizer) -> list[tuple[SourceConfig, dict, list]]:
    """(source, index, memmapped shards) for each source, or one line saying how to prepare them."""
    fingerprint = tokenizer.fingerprint()
    out = []
    for i, src in enumerate(cfg.sources):
        path = Path(cfg.dir) / source_key(src, fingerprint, cfg.chunk_bytes)
        if not (path / INDEX).exists():
            raise UserError(f"data.sources[{i}] ({src.label}): not prepared for this tokenizer in {cfg.dir}; "
                            "run `trainframe data prepare CONFIG` first")
        index, arrays = open_shards(path)
        out.append((src, index, arrays))
    return out


def build_text(cfg: TextDataConfig, *, tokenizer, context: int, seed: int, rank: int = 0, world_size: int = 1):
    opened = open_prepared(cfg, tokenizer)
    windows, weights, rates = [], [], []
    for i, (src, index, arrays) in enumerate(opened):
        if index["vocab_size"] > tokenizer.vocab_size():
            raise UserError(f"data.sources[{i}]: shards use vocab {index['vocab_size']}, "
                            f"the tokenizer has {tokenizer.vocab_size()}")
        check_ids(index, arrays, tokenizer.vocab_size(), f"data.sources[{i}] ({src.label})")
        # Each source its own permutation stream, all derived from the run's seed.
        w = TokenWindows(arrays, context, cfg.val_fraction, seed + 1000003 * i, rank, world_size,
                         pack_eos(cfg.pack, tokenizer))
        windows.append(w)
        weights.append(src.weight)
        rates.append(_bytes_per_token(w, tokenizer))
    known = [(wt, r) for wt, r in zip(weights, rates) if r]
    chars = sum(wt * r for wt, r in known) / sum(wt for wt, _ in known) if known else None
    return MixtureWindows(windows, weights, seed, chars)

