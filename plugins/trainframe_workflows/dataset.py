"""The ``workflows`` dataset: a workflow corpus tokenized once into a cache, split by repository,
read as windows (see ``windowing``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from trainframe.config import ComponentConfig
from trainframe.data.datasets import cache_root
from trainframe.data.shards import token_dtype
from trainframe.errors import UserError
from trainframe.fileio import writing

from .corpus import corpus_files, count_records, iter_records
from .corpus_cache import tokenize_corpus
from .windowing import (
    PREFIX_MODES,
    Layout,
    apply_prefix,
    build_fim_row,
    build_row,
    epoch_offset,
    num_gaps,
    pack_batch,
    pack_rows,
    segment_bound,
    window_starts,
)

CACHE_VERSION = "workflows-v3"  # v3: several paths; a .jsonl row's repository from its `repo` field
SHOW_SKIPPED = 20  # skipped workflows named in the run log; the cache lists all


class WorkflowsConfig(ComponentConfig):
    path: str | list[str] = Field(
        description="a .jsonl of workflows (or .jsonl.xz, .jsonl.gz), a directory of .yml/.yaml/.json files, "
                    "one file, or a list of these, read in order")
    val_ratio: float = Field(0.1, ge=0, lt=1, description="share of repositories held out for validation")
    cache_dir: str | None = Field(None, description="where tokenized corpora go; default ~/.cache/trainframe")
    epoch_offset: bool = Field(False, description="shift window starts by offset_stride each epoch")
    offset_stride: int = Field(32, ge=1, description="the shift of window starts per epoch, in tokens (epoch_offset)")
    position_token: bool = Field(False, description="lead each window with a token giving its start")
    prefix: Literal[PREFIX_MODES] = Field("all", description="which prefix lengths of a document-start window train")
    prefix_count: int = Field(8, ge=1, description="prefix lengths per window for linear, sample and hybrid")
    prefix_bias: Literal["short", "uniform"] = Field(
        "uniform", description="short draws short prefixes more often (probability ~ 1/length) for sample and hybrid")
    fim_rate: float = Field(0.0, ge=0, le=1, description="share of windows that may get masked gaps")
    geometric_p: float = Field(1.0, gt=0, le=1, description="gaps per FIM window ~ Geometric(p) - 1; 1.0 = none")
    fim_max_gaps: int = Field(3, ge=1, le=16, description="at most this many fill-in-the-middle gaps per window")
    workers: int | None = Field(None, ge=1, description="processes that tokenize the corpus the first time; "
                                "null = every core, at most 32; 1 = this process only")
    pack: bool = Field(False, description="pack several windows into each training row instead of padding "
                       "each one; attention stays within each window and its positions start at 0 "
                       "(docs/workflows.md); validation rows stay one window each")

    @field_validator("path")
    @classmethod
    def _some_path(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("expected a path or a non-empty list of paths")
        return v

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @property
    def label(self) -> str:
        """The paths for messages: ``a.jsonl`` or ``a.jsonl + b.jsonl.xz``."""
        return " + ".join(self.paths)

    @property
    def fim(self) -> bool:
        return self.fim_rate > 0 and self.geometric_p < 1

    def layout(self, tokenizer, context: int) -> Layout:
        return Layout(context=context, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id,
                      vocab_size=tokenizer.vocab_size(), position_token=self.position_token,
                      fim=self.fim, fim_max_gaps=self.fim_max_gaps)

    def start_tokens(self, tokenizer) -> list[int]:
        """The tokens a document starts with in training: the prompt that generates a new one."""
        return self.layout(tokenizer, 0).lead_tokens(None, 0)


# ------------------------------------------------------------------------------------ the corpus
Sources = list[tuple[Path, list[Path]]]


def corpus_sources(cfg: WorkflowsConfig) -> Sources:
    """(path, its workflow files) per entry of ``data.path``; a bad one raises UserError naming it."""
    single = isinstance(cfg.path, str)
    out = []
    for i, p in enumerate(cfg.paths):
        path = Path(p).expanduser()
        out.append((path, corpus_files(path, "data.path: " if single else f"data.path[{i}]: ")))
    return out


def cache_key(sources: Sources, fingerprint: str) -> str:
    """Content hash of corpus and tokenizer: any edit to either makes a new cache entry. Compressed
    files are hashed as they are stored (their bytes, not what they unpack to)."""
    h = hashlib.sha256(f"{CACHE_VERSION}\0{fingerprint}\0".encode())
    for i, (path, files) in enumerate(sources):
        h.update(f"\0path {i}\0".encode())
        for f in files:
            h.update(f"{f.relative_to(path) if path.is_dir() else ''}\0".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:24]


def iter_corpus(sources: Sources, single: bool) -> Iterator[tuple[str, str | None, str | None, str | None]]:
    """(name, repo, text, error) for every input of every path, in order; with several paths a
    skipped input's name leads with its file."""
    for i, (path, files) in enumerate(sources):
        where = "data.path: " if single else f"data.path[{i}]: "
        for name, repo, text, error in iter_records(path, files, where):
            if error is not None and len(sources) > 1:
                name = f"{path}: {name}"
            yield name, repo, text, error


@contextlib.contextmanager
def _entry_lock(out: Path):
    """One process at a time tokenizes into ``out`` (the ranks of a run all open the corpus); the
    others wait and then find the entry. Without flock (or on a filesystem without locks) no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = out.with_name(f".{out.name}.lock")
    with open(lock, "a") as fh:
        locked = True
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"data: waiting for another process tokenizing into {out}")
                fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # no locks on this filesystem
            locked = False
        try:
            yield
        finally:
            if locked and (out / "docs.json").exists():
                lock.unlink(missing_ok=True)  # a process still waiting on it finds the entry done


def open_corpus(cfg: WorkflowsConfig, tokenizer) -> tuple[np.ndarray, dict, Path]:
    """(tokens, meta, cache dir): reuses the cache entry of this corpus and tokenizer if there is one."""
    if not hasattr(tokenizer, "encode_value") or not hasattr(tokenizer, "mask_id"):
        raise UserError("data 'workflows': needs a workflow tokenizer (tokenizer.name: schema or tct), "
                        f"got {type(tokenizer).__name__}")
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned tokenizer worker is importing the main script, which builds the dataset again.
        raise RuntimeError("the workflows dataset was built while a worker process started: a script that "
                           "builds it needs `if __name__ == '__main__':` (or data.workers: 1)")
    sources = corpus_sources(cfg)
    out = cache_root(cfg.cache_dir) / "workflows" / cache_key(sources, tokenizer.fingerprint())
    reused = (out / "docs.json").exists()
    if not reused:
        dtype = token_dtype(tokenizer.vocab_size())
        # About a token per byte at most (compressed corpora aside): for the disk-full message
        size = sum(f.stat().st_size for _, files in sources for f in files) * dtype.itemsize
        with writing(out, "the tokenized corpus cache", size):
            out.parent.mkdir(parents=True, exist_ok=True)
            with _entry_lock(out):
                reused = (out / "docs.json").exists()  # another process may have finished it meanwhile
                if not reused:
                    show = sys.stdout.isatty()
                    total = sum(count_records(p, f) or 0 for p, f in sources) if show else None
                    label = f"tokenizing {', '.join(p.name for p, _ in sources)}"
                    meta = {"version": CACHE_VERSION, "source": [str(p) for p, _ in sources]}
                    tokenize_corpus(iter_corpus(sources, isinstance(cfg.path, str)), out, tokenizer, dtype,
                                    workers=cfg.workers or min(os.cpu_count() or 1, 32),
                                    total=total or None, label=label, meta=meta, progress=show)
    meta = json.loads((out / "docs.json").read_text())
    tokens = np.memmap(out / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r") if meta["docs"] else np.zeros(0)
    n_tok = sum(d[2] for d in meta["docs"])  # not counting the end PADs
    print(f"data: {cfg.label}: {len(meta['docs'])} workflows, {n_tok:,} tokens, {len(meta['skipped'])} skipped "
          f"({'cached' if reused else 'tokenized'} in {out})")
    for name, reason in meta["skipped"][:SHOW_SKIPPED]:
        print(f"data: skipped {name}: {reason}")
    if len(meta["skipped"]) > SHOW_SKIPPED:
        print(f"data: ... {len(meta['skipped']) - SHOW_SKIPPED} more skipped, all listed in {out / 'docs.json'}")
    return tokens, meta, out


def repo_bucket(repo: str) -> float:
    """A stable number in [0, 1) per repository: the split never depends on order or run."""
    return int.from_bytes(hashlib.sha256(repo.encode()).digest()[:8], "big") / 2 ** 64


def split_docs(repos: list[str], val_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices; a repository's workflows are all on one side."""
    buckets = {r: repo_bucket(r) for r in set(repos)}
    val_repos = {r for r, u in buckets.items() if u < val_ratio}
    if val_ratio > 0 and not val_repos and len(buckets) > 1:
        val_repos = {min(buckets, key=buckets.get)}  # a tiny corpus still gets a validation set
    is_val = np.array([r in val_repos for r in repos], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# ----------------------------------------------------------------------------------- the windows
class WorkflowWindows:
    """Windows over tokenized workflows. Each epoch lays windows over every training document
    (shifted by the epoch's offset), shuffles them with a seeded permutation and deals every
    world_size-th one to this rank. (epoch, index) is the whole state; per-window randomness
    (prefix samples, gaps) is seeded by (seed, epoch, window), so a resume is exact.

    Packed (``data.pack``), an epoch's shuffled windows are first grouped into rows of ``context``
    positions (``pack_rows``, by each window's most positions), the rows shuffled and dealt to the
    ranks, and ``index`` counts rows; a batch is then (inputs, targets, positions)."""

    def __init__(self, tokens: np.ndarray, lengths: np.ndarray, chars: np.ndarray, train: np.ndarray,
                 val: np.ndarray, cfg: WorkflowsConfig, layout: Layout, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.tokens = np.asarray(tokens)  # a plain view of the memmap: cheaper to slice
        self.lengths, self.cfg, self.layout = lengths, cfg, layout
        self.offsets = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
        self.train_docs, self.val_docs = train, val
        self.seed, self.rank, self.world_size = seed, rank, world_size
        if layout.capacity < 2:
            raise UserError(f"model.context {layout.context} is too short for this data layout "
                            f"(each window needs {layout.context + 1 - layout.capacity} lead/FIM tokens)")
        val_chars = float(chars[val].sum()) if len(val) else 0.0
        # Targets per document: its tokens plus the end-of-document PAD.
        self.chars_per_token = val_chars / float((lengths[val] + 1).sum()) if len(val) else None
        # In a fixed shuffled order: the training eval reads only its first eval_batches, which in
        # corpus order would all come from the first validation repositories (one corpus of several).
        windows = self._windows(val, 0)
        self.val_windows = windows[np.random.default_rng(0).permutation(len(windows))]
        self.epoch, self.index = 0, 0
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self.held, self.held_windows = 0, np.zeros((0, 3), np.int64)  # rows per rank set aside by hold_out
        if len(self._epoch(0)[1]) < 1:
            raise UserError(f"data.path: {cfg.label}: no training windows for rank {rank} of {world_size} "
                            f"({len(train)} training workflows)")

    def hold_out(self, rows: int) -> tuple[torch.Tensor, ...]:
        """Sets whole training workflows aside for good (``SupportsHoldOut``), in a seeded order until
        their windows give ``rows`` per rank; returns this rank's, as plain rows like validation's."""
        if not self.held and rows:
            need = rows * self.world_size
            order = self.train_docs[np.random.default_rng([self.seed, 0x686F6C64]).permutation(len(self.train_docs))]
            held = self._windows(order, 0)[:need]  # rows come grouped by document, in ``order``
            # the fewest documents with enough windows: up to the one the last held window is from
            taken = int(np.flatnonzero(order == held[-1, 0])[0]) + 1 if len(held) == need else len(order)
            if taken >= len(order):
                raise UserError(f"data.path: {self.cfg.label}: {len(order)} training workflows: too few to hold "
                                f"{need} windows out for verification")
            self.held_windows = held
            self.train_docs, self.held, self._epoch_cache = np.sort(order[taken:]), rows, None
        elif self.held != rows:
            raise ValueError(f"hold_out({rows}): {self.held} rows per rank are held out already")
        return self._stack([self.row(w, None) for w in self.held_windows[self.rank:: self.world_size]])

    def _windows(self, docs: np.ndarray, offset: int) -> np.ndarray:
        """(doc, start, end) rows of one epoch's windows over ``docs``."""
        rows = [(d, a, b) for d in docs.tolist()
                for a, b in window_starts(int(self.lengths[d]) + 1, self.layout.capacity, offset)]
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, list]:
        """(windows, this rank's order) for ``epoch``: window indices, or packed, rows of them."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            offset = epoch_offset(epoch, self.cfg.offset_stride, self.layout.capacity) if self.cfg.epoch_offset else 0
            windows = self._windows(self.train_docs, offset)
            order = np.random.default_rng([self.seed, epoch]).permutation(len(windows))
            if self.cfg.pack:
                bounds = np.array([segment_bound(int(b - a), self.layout) for a, b in windows[order, 1:]])
                rows = [order[r] for r in pack_rows(bounds, self.layout.context)]
                order = [rows[i] for i in np.random.default_rng([self.seed, epoch, 1]).permutation(len(rows))]
            self._epoch_cache = (epoch, windows, order[self.rank:: self.world_size])
        return self._epoch_cache[1], self._epoch_cache[2]

    def seq(self, doc: int) -> np.ndarray:
        """A document's tokens and its end PAD (a view, no copy)."""
        off = int(self.offsets[doc])
        return self.tokens[off: off + int(self.lengths[doc]) + 1]

    def row(self, window: np.ndarray, seed: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """One training row, its random choices seeded by ``seed``; None gives the plain row (validation)."""
        doc, a, b = (int(x) for x in window)
        seq, cfg = self.seq(doc), self.cfg
        random = seed is not None and (cfg.fim or (a == 0 and cfg.prefix != "all"))
        rng = np.random.default_rng(seed) if random else None
        if rng is not None and cfg.fim and rng.random() < cfg.fim_rate:
            gaps = num_gaps(cfg.geometric_p, cfg.fim_max_gaps, rng)
            if gaps:
                return build_fim_row(seq, a, b, gaps, self.layout, rng)
        inputs, targets = build_row(seq, a, b, self.layout)
        if rng is not None and a == 0 and cfg.prefix != "all":
            targets = apply_prefix(targets, self.layout.lead, b - a, cfg.prefix, cfg.prefix_count,
                                   cfg.prefix_bias, rng)
        return inputs, targets

    @staticmethod
    def _stack(rows) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.stack([r[0] for r in rows])), torch.from_numpy(np.stack([r[1] for r in rows]))

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        rows = []
        while len(rows) < batch_size:
            windows, order = self._epoch(self.epoch)
            if self.cfg.pack:
                rows.append([self.row(windows[i], [self.seed, self.epoch, int(i)]) for i in order[self.index]])
            else:
                i = int(order[self.index])
                rows.append(self.row(windows[i], [self.seed, self.epoch, i]))
            self.index += 1
            if self.index >= len(order):
                self.epoch, self.index = self.epoch + 1, 0
        if self.cfg.pack:
            return tuple(torch.from_numpy(a) for a in pack_batch(rows, self.layout.context, self.layout.pad_id))
        return self._stack(rows)

    def val_batches(self, batch_size: int, max_batches: int):
        val = self.val_windows[self.rank:: self.world_size]
        for b in range(min(max_batches, -(-len(val) // batch_size))):
            yield self._stack([self.row(w, None) for w in val[b * batch_size: (b + 1) * batch_size]])

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "index": self.index}
        if self.held:
            state["held"] = self.held
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("held"):
            self.hold_out(int(state["held"]))
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def build_workflows(cfg: WorkflowsConfig, *, tokenizer, context: int, seed: int, rank: int = 0, world_size: int = 1):
    tokens, meta, _ = open_corpus(cfg, tokenizer)
    docs = meta["docs"]
    if not docs:
        raise UserError(f"data.path: {cfg.label}: no workflow could be encoded ({len(meta['skipped'])} skipped)")
    lengths = np.array([d[2] for d in docs], dtype=np.int64)
    chars = np.array([d[3] for d in docs], dtype=np.int64)
    train, val = split_docs([d[1] for d in docs], cfg.val_ratio)
    if rank == 0:
        print(f"data: split by repository: {len(train)} train / {len(val)} val workflows")
    return WorkflowWindows(tokens, lengths, chars, train, val, cfg, cfg.layout(tokenizer, context), seed, rank, world_size)
