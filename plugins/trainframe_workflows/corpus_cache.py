"""Tokenizing a workflow corpus into a cache entry of the ``workflows`` dataset: in chunks of
``CHUNK_DOCS`` input documents, by worker processes, resumably.

Beside the entry ``<key>/`` (``tokens.bin`` + ``docs.json``) a run writes ``.<key>.partial/``::

    chunk_00000.bin   the chunk's tokens, each document followed by its end PAD, in the entry's dtype
    chunk_00000.json  its documents and skipped inputs: the chunk's completion marker, written last

Chunks are cut from the document stream by count, so the cut is the same on every run, and a killed
run redoes only the chunks without a marker. When every chunk is done the entry is assembled from
the chunks in corpus order in a temporary directory, renamed into place, and the partial directory
removed; the entry is byte-identical whatever the number of workers. Worker processes (spawned,
each building its own copy of the tokenizer) ignore Ctrl-C, which the parent handles, and exit
when their parent is gone, even killed.

This module imports neither torch nor the rest of trainframe's engine: workers start quickly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from trainframe.errors import UserError
from trainframe.fileio import TEMP_GLOB, atomic_dir, write_bytes_atomic, write_text_atomic
from trainframe.progress import Progress
from trainframe.workers import exit_with_parent

from .corpus import repo_of
from .schema_tokenizer.yaml_loader import load_document

CHUNK_DOCS = 64  # input documents per chunk: the unit of work and of resume
PICKLE_LIMIT = 64 << 20  # a tokenizer that pickles larger than this is tokenized with in one process
_WORKER: tuple | None = None  # (tokenizer, dtype name) in a worker process, set by _init_worker


# ------------------------------------------------------------------------------------- one chunk
def encode_documents(items, tokenizer) -> tuple[list, list, np.ndarray]:
    """(docs, skipped, tokens) of ``(name, repo, text, error)`` items: a doc row is
    ``[name, repo, tokens, compact JSON chars]``, ``tokens`` every document followed by its end PAD."""
    docs, skipped, parts = [], [], []
    for name, repo, text, error in items:
        if error is None:
            try:
                value = load_document(text)
                ids = tokenizer.encode_value(value)
            except (ValueError, RecursionError) as e:
                error = str(e).splitlines()[0] if str(e) else type(e).__name__
        if error is not None:
            skipped.append([name, error])
            continue
        chars = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        docs.append([name, repo or repo_of(name), len(ids), chars])
        parts.append(np.asarray([*ids, tokenizer.pad_id], dtype=np.int64))  # PAD: the end-of-document target
    return docs, skipped, np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _chunk_paths(part: Path, index: int) -> tuple[Path, Path]:
    return part / f"chunk_{index:05d}.bin", part / f"chunk_{index:05d}.json"


def tokenize_chunk(part: str, index: int, items: list, chunk_docs: int, dtype: str, tokenizer=None) -> int:
    """Encode one chunk and write its .bin, then its marker; returns the documents encoded.
    ``tokenizer``: None in a worker process (it has its own)."""
    tok = tokenizer if tokenizer is not None else _WORKER[0]
    docs, skipped, tokens = encode_documents(items, tok)
    bin_path, marker = _chunk_paths(Path(part), index)
    write_bytes_atomic(bin_path, tokens.astype(dtype).tobytes())
    write_text_atomic(marker, json.dumps({"chunk_docs": chunk_docs, "items": len(items), "tokens": int(tokens.size),
                                          "docs": docs, "skipped": skipped}))
    return len(docs)


def _finished(part: Path, index: int, n_items: int, chunk_docs: int, itemsize: int) -> bool:
    """Whether a previous run left this chunk complete (same cut, all its tokens)."""
    bin_path, marker = _chunk_paths(part, index)
    try:
        m = json.loads(marker.read_text())
        return (m["chunk_docs"] == chunk_docs and m["items"] == n_items
                and bin_path.stat().st_size == m["tokens"] * itemsize)
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ------------------------------------------------------------------------------ worker processes
def worker_recipe(tokenizer) -> tuple[Callable, tuple] | None:
    """(function, args) that build the same tokenizer in a worker process, or None if it cannot be
    sent there. The schema tokenizer does not pickle (its compiled schema holds closures), so a
    worker compiles it again from its schema and vocabulary (about 0.7 s); tct reimports the wheel."""
    from .schema_tokenizer import SchemaTokenizer

    if type(tokenizer) is SchemaTokenizer:
        return _schema_tokenizer, (tokenizer.schema_name, tokenizer.schema, tokenizer.vocab)
    module = getattr(getattr(tokenizer, "m", None), "__name__", None)
    if type(tokenizer).__name__ == "TctTokenizer" and module and importlib.util.find_spec(module):
        return _tct_tokenizer, (module,)
    try:
        data = pickle.dumps(tokenizer)
    except Exception:  # noqa: BLE001 - any reason it does not pickle: tokenize in one process
        return None
    return (pickle.loads, (data,)) if len(data) <= PICKLE_LIMIT else None


def _schema_tokenizer(name: str, schema: dict, vocab):
    from .schema_tokenizer import SchemaTokenizer, load_schema
    from .schema_tokenizer.tokenizer import BUILTIN_SCHEMAS

    if name in BUILTIN_SCHEMAS and load_schema(name)[1] == schema:
        return SchemaTokenizer(name, vocab=vocab)
    tok = SchemaTokenizer(schema, vocab=vocab)
    tok.schema_name = name  # the name its fingerprint carries (a file's stem, say)
    return tok


def _tct_tokenizer(module: str):
    from .tct import TctTokenizer

    return TctTokenizer(importlib.import_module(module))


def _init_worker(recipe_path: str, fingerprint: str, dtype: str, parent: int) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool
    exit_with_parent(parent)
    build, args = pickle.loads(Path(recipe_path).read_bytes())
    tok = build(*args)
    if tok.fingerprint() != fingerprint:
        raise RuntimeError(f"the worker's tokenizer differs from the parent's: {tok.fingerprint()} != {fingerprint}")
    _WORKER = (tok, dtype)


# ------------------------------------------------------------------------------------ the corpus
def _batched(items: Iterable, n: int):
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def tokenize_corpus(items: Iterable, out: Path, tokenizer, dtype, *, workers: int = 1, total: int | None = None,
                    label: str = "tokenizing", meta: dict | None = None, chunk_docs: int | None = None,
                    progress: bool | None = None, log=print) -> None:
    """Encode ``(name, repo, text, error)`` items into the cache entry ``out`` (tokens.bin + docs.json
    with ``meta`` and the documents), resuming from ``.<out>.partial``. ``workers`` > 1 runs a process
    pool once there is more than one chunk to do; ``total`` (items) sizes the progress bar, shown
    when stdout is a terminal (``progress`` None) or when asked."""
    chunk_docs = chunk_docs or CHUNK_DOCS
    dtype = np.dtype(dtype)
    part = out.with_name(f".{out.name}.partial")
    part.mkdir(parents=True, exist_ok=True)
    for stale in part.glob(TEMP_GLOB):  # left by a killed run; the caller holds the entry's lock
        stale.unlink(missing_ok=True)
    recipe = worker_recipe(tokenizer) if workers > 1 else None
    if workers > 1 and recipe is None:
        log(f"data: the {type(tokenizer).__name__} tokenizer cannot be sent to worker processes; "
            "tokenizing in this process")
        workers = 1
    show = Progress(sys.stdout.isatty() if progress is None else progress, "{task.fields[rate]:,.0f} docs/s")
    bar = show.task(label, total, rate=0.0)
    t0 = time.perf_counter()
    n_chunks = n_items = resumed = fresh = fresh_chunks = 0
    pool, pending, held = None, deque(), None  # held: the first chunk to do, until a second shows a pool pays

    def done(n: int) -> None:
        nonlocal fresh
        fresh += n
        show.update(bar, advance=n, rate=fresh / max(time.perf_counter() - t0, 1e-9))

    def submit(index: int, chunk: list) -> None:
        nonlocal pool
        if pool is None:
            # The recipe goes through a file: spawn's start-up pipe blocks the parent for good when a
            # worker dies before reading more than the pipe holds (CPython keeps the read end open).
            recipe_path = part / "tokenizer.pkl"
            write_bytes_atomic(recipe_path, pickle.dumps(recipe))
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                       initargs=(str(recipe_path), tokenizer.fingerprint(), dtype.name, os.getpid()))
        pending.append((len(chunk), pool.submit(tokenize_chunk, str(part), index, chunk, chunk_docs, dtype.name)))
        while len(pending) >= 2 * workers or (pending and pending[0][1].done()):
            n, future = pending.popleft()
            future.result()
            done(n)

    unreadable = False
    try:
        with show:
            for index, chunk in enumerate(_batched(items, chunk_docs)):
                n_chunks += 1
                n_items += len(chunk)
                if _finished(part, index, len(chunk), chunk_docs, dtype.itemsize):
                    resumed += 1
                    show.update(bar, advance=len(chunk), rate=fresh / max(time.perf_counter() - t0, 1e-9))
                    continue
                fresh_chunks += 1
                if workers == 1:
                    tokenize_chunk(str(part), index, chunk, chunk_docs, dtype.name, tokenizer)
                    done(len(chunk))
                elif held is None and pool is None:
                    held = (index, chunk)
                else:
                    if held is not None:
                        submit(*held)
                        held = None
                    submit(index, chunk)
            if held is not None:  # the only chunk to do: not worth starting processes
                tokenize_chunk(str(part), held[0], held[1], chunk_docs, dtype.name, tokenizer)
                done(len(held[1]))
            while pending:
                n, future = pending.popleft()
                future.result()
                done(n)
    except UserError:  # the input cannot be read: this key's chunks can never complete
        unreadable = True
        raise
    except BrokenProcessPool as e:
        raise UserError(f"data.workers: the tokenizer worker processes failed ({e}); a script that builds the "
                        "dataset needs `if __name__ == '__main__':`, or set data.workers: 1") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if unreadable:
            shutil.rmtree(part, ignore_errors=True)
    _assemble(part, n_chunks, out, dtype, meta or {})
    dt = time.perf_counter() - t0
    procs = f"{min(workers, fresh_chunks)} worker processes" if pool is not None else "1 process"
    again = f"; {resumed} of {n_chunks} chunks done by an earlier run" if resumed else ""
    log(f"data: tokenized {n_items:,} workflows in {dt:.1f}s, {fresh / max(dt, 1e-9):,.0f} docs/s ({procs}{again})")


def _assemble(part: Path, n_chunks: int, out: Path, dtype: np.dtype, meta: dict) -> None:
    """The entry from the finished chunks, in order, atomically; then the partial directory goes."""
    docs, skipped = [], []
    with atomic_dir(out, "the token cache", keep_existing=True) as tmp:  # another process's same entry stays
        with open(tmp / "tokens.bin", "wb") as dst:
            for i in range(n_chunks):
                bin_path, marker = _chunk_paths(part, i)
                m = json.loads(marker.read_text())
                docs += m["docs"]
                skipped += m["skipped"]
                with open(bin_path, "rb") as src:
                    shutil.copyfileobj(src, dst)
        (tmp / "docs.json").write_text(json.dumps({**meta, "dtype": dtype.name, "docs": docs, "skipped": skipped}))
    shutil.rmtree(part, ignore_errors=True)
