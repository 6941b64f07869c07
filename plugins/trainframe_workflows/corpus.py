"""Reading workflow collections: a .jsonl of {"yaml": ...} rows (plain, .jsonl.xz or .jsonl.gz, read
as a stream), a directory, or one file."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import zlib
from pathlib import Path
from typing import IO, Iterator

from trainframe.errors import UserError
from trainframe.fileio import relative_note

SUFFIXES = (".yml", ".yaml", ".json")
JSONL_SUFFIXES = (".jsonl", ".jsonl.xz", ".jsonl.gz")
TEXT_FIELDS = ("yaml", "json", "text")
_OPENERS = {".xz": lzma.open, ".gz": gzip.open}
# What a truncated or corrupt compressed stream raises while it is read (gzip.BadGzipFile is an OSError).
_READ_ERRORS = (EOFError, lzma.LZMAError, zlib.error, OSError)


def is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


def open_jsonl(path: Path, mode: str = "rt") -> IO:
    """A .jsonl, .jsonl.xz or .jsonl.gz opened for streaming (text mode: UTF-8, bad bytes replaced)."""
    opener = _OPENERS.get(path.suffix, open)
    if "b" in mode:
        return opener(path, mode)
    return opener(path, mode, encoding="utf-8", errors="replace")


def repo_of(name: str) -> str:
    """The repository of a workflow known only by name: the part before ``/.github/``, else its
    directory. (A .jsonl row's own ``repo`` field is used when it has one.)"""
    if "/.github/" in name:
        return name.split("/.github/")[0]
    return os.path.dirname(name) or name


def corpus_files(path: Path, where: str = "") -> list[Path]:
    """The workflow files of a collection (``[path]`` for a single file); a bad path raises UserError
    led by ``where`` (e.g. ``"data.path: "``)."""
    if not path.exists():
        raise UserError(f"{where}{path}: no such file or directory{relative_note(path)}; expected a .jsonl of "
                        "workflows (or .jsonl.xz, .jsonl.gz), a directory or a workflow file")
    if path.is_dir():
        files = dir_files(path)
        if not files:
            raise UserError(f"{where}{path}: no .yml, .yaml or .json files in this directory")
        return files
    if path.suffix not in SUFFIXES and not is_jsonl(path):
        raise UserError(f"{where}{path}: expected a .jsonl of workflows (or .jsonl.xz, .jsonl.gz), a directory, "
                        "or a .yml/.yaml/.json file")
    return [path]


def iter_texts(path: str | Path) -> Iterator[tuple[str, str]]:
    """(name, text) for every workflow under ``path``; the first unreadable one raises UserError."""
    p = Path(path)
    for name, text, error in iter_workflows(p, corpus_files(p)):
        if error is not None:
            raise UserError(f"{p}: {name}: {error}")
        yield name, text


def iter_workflows(path: Path, files: list[Path] | None = None) -> Iterator[tuple[str, str | None, str | None]]:
    """(name, text, None) per workflow, or (name, None, reason) for input that cannot be read.
    ``files``: a directory's files as :func:`corpus_files` listed them (listed again if not given)."""
    for name, _, text, error in iter_records(path, files):
        yield name, text, error


def iter_records(path: Path, files: list[Path] | None = None,
                 where: str = "") -> Iterator[tuple[str, str | None, str | None, str | None]]:
    """(name, repo, text, error) per workflow: :func:`iter_workflows` plus the repository a .jsonl row
    names (None elsewhere). A compressed file that is truncated or corrupt raises one UserError, led
    by ``where``, naming the file and the last line read whole."""
    if path.is_dir():
        for f in files if files is not None else dir_files(path):
            yield (str(f.relative_to(path)), None, *_read(f))
    elif is_jsonl(path):
        n = 0
        try:
            with open_jsonl(path) as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        yield _row(line, n)
        except _READ_ERRORS as e:
            kind = f"truncated or corrupt {path.suffix} data" if path.suffix in _OPENERS else "read error"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            at = f"after line {n}" if n else "at the start"
            raise UserError(f"{where}{path}: {kind} {at} ({reason})") from None
    else:
        yield (path.name, None, *_read(path))


def _row(line: str, n: int) -> tuple[str, str | None, str | None, str | None]:
    try:
        row = json.loads(line)
    except ValueError:
        return f"line {n}", None, None, "not JSON; expected one object per line with a 'yaml' field"
    if not isinstance(row, dict):
        return f"line {n}", None, None, "not a JSON object; expected one object per line with a 'yaml' field"
    text = next((row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str)), None)
    if text is None:
        return f"line {n}", None, None, "no 'yaml' (or 'json', 'text') string field"
    name = row.get("path") or f"line {n}"
    repo = row.get("repo") if isinstance(row.get("repo"), str) and row.get("repo") else None
    return (f"{repo}/{name}" if repo else name), repo, text, None


def count_records(path: Path, files: list[Path]) -> int | None:
    """How many items :func:`iter_records` will yield (for a progress bar); None if the file cannot
    be read to the end (reading it for real then says why)."""
    if path.is_dir():
        return len(files)
    if not is_jsonl(path):
        return 1
    try:
        with open_jsonl(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except _READ_ERRORS:
        return None


def _read(f: Path) -> tuple[str | None, str | None]:
    try:
        return f.read_text(encoding="utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start})"
    except OSError as e:
        return None, f"cannot read: {e.strerror}"


def dir_files(path: Path) -> list[Path]:
    """Workflow files anywhere under a directory, sorted."""
    return sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
