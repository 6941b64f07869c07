"""``trainframe data prepare``: tokenize every source into token shards, in parallel and resumably.

Layout of ``data.dir``::

    manifest.json                 every source: rows, bad rows, bytes, tokens, tokenizer, shard list
    tokenizer.json                (the bpe tokenizer, when trained here)
    <source-key>/index.json       the shard index trainframe.data.shards reads; written last
    <source-key>/chunk_00000.bin  uint16/uint32 token ids, documents separated by EOS
    <source-key>/chunk_00000.json that chunk's counts: its completion marker, written after the .bin

A source's rows are cut into chunks of about ``chunk_bytes`` of text in stream order, so the cut
is the same on every run. Worker processes tokenize chunks (and exit when the parent is gone, even
killed); each chunk is written under a temporary name and renamed, then its marker. A killed run
resumes at the first chunk without a marker; a source with an index is done, and a second run does
nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from trainframe.data.shards import INDEX, token_dtype
from trainframe.errors import UserError
from trainframe.fileio import TEMP_GLOB, write_bytes_atomic, writing
from trainframe.progress import Progress
from trainframe.workers import exit_with_parent

from .sources import SourceConfig, iter_texts, open_rows, source_key

MANIFEST = "manifest.json"
_TOKENIZER = None  # set in each worker process by _init_worker


def _init_worker(tokenizer, parent: int) -> None:
    global _TOKENIZER
    exit_with_parent(parent)  # a killed `data prepare` leaves no workers behind
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process
    _TOKENIZER = tokenizer


def tokenize_chunk(out_dir: str, index: int, texts: list[str], bad: int, tokenizer=None) -> dict:
    """Tokenize one chunk, write its .bin, then its marker; returns the marker's counts."""
    tok = tokenizer or _TOKENIZER
    cpu0 = time.process_time()
    batch = getattr(tok, "encode_batch", None)
    encoded = batch(texts) if batch else [tok.encode(t) for t in texts]
    eos = np.array([tok.eos_id], dtype=np.int64)
    parts = [p for ids in encoded for p in (np.asarray(ids, dtype=np.int64), eos)]
    arr = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    vocab = tok.vocab_size()
    if arr.size and (arr.min() < 0 or arr.max() >= vocab):
        raise ValueError(f"token id out of range for vocab {vocab}")
    out = Path(out_dir)
    write_bytes_atomic(out / f"chunk_{index:05d}.bin", arr.astype(token_dtype(vocab)).tobytes())
    stats = {"rows": len(texts), "bad_rows": bad, "bytes": sum(len(t.encode("utf-8")) for t in texts),
             "tokens": int(arr.size), "max_id": int(arr.max()) if arr.size else -1, "cpu_s": time.process_time() - cpu0}
    write_bytes_atomic(out / f"chunk_{index:05d}.json", json.dumps(stats).encode())
    return stats


def _chunks(texts, chunk_bytes: int):
    """(texts, bad rows) groups of about chunk_bytes of UTF-8 text; the cut depends only on the rows."""
    buf, size, bad = [], 0, 0
    for text in texts:
        if text is None:
            bad += 1
            continue
        buf.append(text)
        size += len(text)  # characters: close enough to bytes for cutting, and cheap
        if size >= chunk_bytes:
            yield buf, bad
            buf, size, bad = [], 0, 0
    if buf or bad:
        yield buf, bad


def _prepare_source(src: SourceConfig, where: str, out: Path, tokenizer, pool, workers: int,
                    chunk_bytes: int, progress: Progress) -> dict:
    with writing(out, "prepared shards"):
        out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(TEMP_GLOB):  # left by a killed run; ours to remove
        stale.unlink(missing_ok=True)
    texts = iter_texts(open_rows(src, where), src.text_field, where)
    task = progress.task(src.label, src.max_tokens, mb=0.0, rate=0.0, bad=0)
    done = {"rows": 0, "bad_rows": 0, "bytes": 0, "tokens": 0, "cpu_s": 0.0}
    vocab = tokenizer.vocab_size()
    top = -1  # the largest id, for the index (see trainframe.data.shards)
    shards, resumed, fresh_bytes, t0 = [], 0, 0, time.perf_counter()
    pending = []  # (index, future) in chunk order

    def collect(index, stats):
        nonlocal top
        for k in done:
            done[k] += stats[k]
        top = max(top, stats.get("max_id", vocab - 1))  # a marker from before max_id: its ids were checked < vocab
        shards.append({"file": f"chunk_{index:05d}.bin", "tokens": stats["tokens"]})
        progress.update(task, completed=done["tokens"], mb=done["bytes"] / 1e6, bad=done["bad_rows"],
                        rate=fresh_bytes / 1e6 / max(time.perf_counter() - t0, 1e-9))

    capped = lambda: src.max_tokens is not None and done["tokens"] >= src.max_tokens
    for index, (chunk, bad) in enumerate(_chunks(texts, chunk_bytes)):
        marker = out / f"chunk_{index:05d}.json"
        if marker.exists() and (out / f"chunk_{index:05d}.bin").exists():
            while pending:
                collect(pending[0][0], pending.pop(0)[1].result())
            if capped():
                break
            collect(index, json.loads(marker.read_text()))
            resumed += 1
            continue
        fresh_bytes += sum(len(t) for t in chunk)
        if pool is None:
            collect(index, tokenize_chunk(str(out), index, chunk, bad, tokenizer))
        else:
            pending.append((index, pool.submit(tokenize_chunk, str(out), index, chunk, bad)))
            while len(pending) >= 2 * workers or (pending and pending[0][1].done()):
                collect(pending[0][0], pending.pop(0)[1].result())
        if capped():
            break
    for i, future in pending:
        stats = future.result()
        if not capped():
            collect(i, stats)
    last = len(shards)
    for extra in list(out.glob("chunk_*")):  # chunks past a max_tokens cap reached earlier
        if int(extra.stem.split("_")[1]) >= last:
            extra.unlink()
    if not shards or done["tokens"] == 0:
        raise UserError(f"{where}: no text found ({done['bad_rows']} rows without text in '{src.text_field}')")
    meta = {"source": src.label, **({"hf": src.hf, "config": src.config, "split": src.split} if src.hf
                                    else {"files": src.files}),
            "text_field": src.text_field, **done, "chunks_resumed": resumed, "tokenizer": tokenizer.fingerprint()}
    index_data = {"dtype": token_dtype(vocab).name, "vocab_size": vocab, "max_id": top, "shards": shards, **meta}
    write_bytes_atomic(out / INDEX, json.dumps(index_data, indent=1).encode())
    return index_data


def prepare(cfg, tokenizer, *, workers: int | None = None, progress: bool = True, log=print) -> dict:
    """Prepare every source of a ``text`` data config; returns the manifest."""
    data_dir = Path(cfg.dir)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = workers or cfg.workers or min(cores, 32)
    fingerprint = tokenizer.fingerprint()
    entries, todo = [], []
    for i, src in enumerate(cfg.sources):
        key = source_key(src, fingerprint, cfg.chunk_bytes)
        entries.append((i, src, key))
        if not (data_dir / key / INDEX).exists():
            todo.append((i, src, key))
    if todo:
        log(f"preparing {len(todo)} of {len(entries)} sources into {data_dir} with {workers} worker process(es)")
    pool = None
    if todo and workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=(tokenizer, os.getpid()))
    try:
        fields = "tokens  {task.fields[mb]:.1f} MB  {task.fields[rate]:.1f} MB/s  {task.fields[bad]} bad rows"
        with Progress(progress and bool(todo), fields, transient=False) as bar:
            for i, src, key in todo:
                t0 = time.perf_counter()
                index = _prepare_source(src, f"data.sources[{i}]", data_dir / key, tokenizer, pool, workers,
                                        cfg.chunk_bytes, bar)
                dt = time.perf_counter() - t0
                resumed = f", {index['chunks_resumed']} chunks resumed" if index["chunks_resumed"] else ""
                per_core = index["bytes"] / 1e6 / index["cpu_s"] if index["cpu_s"] else float("nan")
                log(f"{src.label}: {index['rows']:,} rows ({index['bad_rows']:,} skipped), {index['tokens']:,} tokens "
                    f"from {index['bytes'] / 1e6:.1f} MB in {dt:.1f}s: {index['bytes'] / 1e6 / dt:.1f} MB/s, "
                    f"{per_core:.1f} MB/s per core of tokenizing{resumed}")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    manifest = {"tokenizer": fingerprint, "vocab_size": tokenizer.vocab_size(),
                "dtype": token_dtype(tokenizer.vocab_size()).name, "sources": []}
    for i, src, key in entries:
        index = json.loads((data_dir / key / INDEX).read_text())
        manifest["sources"].append({"name": src.label, "dir": key, "weight": src.weight,
                                    **{k: index[k] for k in ("rows", "bad_rows", "bytes", "tokens")},
                                    "shards": [s["file"] for s in index["shards"]]})
    manifest["tokens"] = sum(s["tokens"] for s in manifest["sources"])
    text = json.dumps(manifest, indent=1) + "\n"
    path = data_dir / MANIFEST
    if not path.exists() or path.read_text() != text:
        write_bytes_atomic(path, text.encode())
    if not todo:
        log(f"{data_dir}: all {len(entries)} sources already prepared ({manifest['tokens']:,} tokens); nothing to do")
    return manifest


def prepare_main(args) -> int:
    from trainframe.config import load_config
    from trainframe.engine.build import build_tokenizer
    from trainframe.plugins import current

    plugins = current()
    cfg = load_config(args.config, args.overrides, plugins.registry)
    data_name, data_cfg = cfg.component("data")
    if data_name != "text":
        raise UserError(f"{args.config}: data.name: `data prepare` reads `text` datasets, got '{data_name}'")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: expected a positive integer, got {args.workers}")
    tokenizer = build_tokenizer(cfg, plugins)
    prepare(data_cfg, tokenizer, workers=args.workers, progress=sys.stderr.isatty() or args.progress)
    return 0


def prepare_args(p) -> None:
    p.add_argument("config", help="a run config whose data section is a `text` dataset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.dir=/scratch/x")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: data.workers or all cores)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
