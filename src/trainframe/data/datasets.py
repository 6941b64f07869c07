"""Built-in datasets: ``tokens`` (a prepared shard directory) and ``textfile`` (plain text files,
tokenized once into a cache of shards keyed by content and tokenizer)."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from pydantic import Field

from trainframe.config import ComponentConfig
from trainframe.data.shards import TokenWindows, check_ids, open_shards, token_dtype, write_shards
from trainframe.errors import UserError
from trainframe.fileio import relative_note
from trainframe.protocols import SupportsFingerprint


PACK_HELP = ("attention within each document (split at the tokenizer's EOS) and positions restarting at "
             "each, instead of windows that run across documents (docs/engine.md)")


class TokensConfig(ComponentConfig):
    path: str = Field(description="directory with index.json and .bin shards")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="tail of each shard held out for validation")
    pack: bool = Field(False, description=PACK_HELP)


class TextFileConfig(ComponentConfig):
    path: str | list[str] = Field(description="a text file, a glob, or a list of them")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="tail of each file's token stream held out for validation")
    cache_dir: str | None = Field(None, description="where tokenized shards go; default ~/.cache/trainframe")
    pack: bool = Field(False, description=PACK_HELP)


def pack_eos(pack: bool, tokenizer) -> int | None:
    """The EOS id packed windows split documents at (None: not packed)."""
    if not pack:
        return None
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        raise UserError(f"data.pack: needs a tokenizer with an EOS token between documents "
                        f"({type(tokenizer).__name__} has no eos_id); set data.pack=false")
    return eos


def cache_root(cfg_dir: str | None) -> Path:
    if cfg_dir:
        return Path(cfg_dir).expanduser()
    if os.environ.get("TRAINFRAME_CACHE"):
        return Path(os.environ["TRAINFRAME_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trainframe"


def _expand(patterns: str | list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise UserError(f"data.path: no file matches '{pattern}'{relative_note(pattern)}")
        files.extend(Path(m) for m in matches)
    for f in files:
        if not f.is_file():
            raise UserError(f"data.path: '{f}' is not a file")
    return files


def build_tokens(cfg: TokensConfig, *, tokenizer, context: int, seed: int, rank: int = 0, world_size: int = 1):
    index, arrays = open_shards(Path(cfg.path))
    if index.get("vocab_size", 0) > tokenizer.vocab_size():
        raise UserError(f"data.path: {cfg.path}: shards use vocab {index['vocab_size']}, "
                        f"the tokenizer has {tokenizer.vocab_size()}")
    check_ids(index, arrays, tokenizer.vocab_size(), f"data.path: {cfg.path}")
    return TokenWindows(arrays, context, cfg.val_fraction, seed, rank, world_size, pack_eos(cfg.pack, tokenizer))


def build_textfile(cfg: TextFileConfig, *, tokenizer, context: int, seed: int, rank: int = 0, world_size: int = 1):
    files = _expand(cfg.path)
    digest = hashlib.sha256()
    fingerprint = tokenizer.fingerprint() if isinstance(tokenizer, SupportsFingerprint) else type(tokenizer).__name__
    digest.update(fingerprint.encode())
    for f in files:
        digest.update(f.read_bytes())
    out = cache_root(cfg.cache_dir) / "tokens" / digest.hexdigest()[:24]
    if not (out / "index.json").exists():
        eos = getattr(tokenizer, "eos_id", None)

        def chunks():
            for f in files:
                try:
                    text = f.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{f}: not UTF-8 text (byte {e.start})") from None
                ids = tokenizer.encode(text)
                yield ids + ([eos] if eos is not None else [])

        # At most a token per byte (the byte tokenizer's count, plus each file's EOS)
        size = sum(f.stat().st_size + 1 for f in files) * token_dtype(tokenizer.vocab_size()).itemsize
        write_shards(out, chunks(), tokenizer.vocab_size(),
                     {"sources": [str(f) for f in files], "tokenizer": fingerprint}, size=size)
    _, arrays = open_shards(out)
    return TokenWindows(arrays, context, cfg.val_fraction, seed, rank, world_size, pack_eos(cfg.pack, tokenizer))
