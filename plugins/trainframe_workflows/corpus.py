"""Reading workflow collections: a .jsonl of {"yaml": ...} rows, a directory, or one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from trainframe.errors import UserError

SUFFIXES = (".yml", ".yaml", ".json")
TEXT_FIELDS = ("yaml", "json", "text")


def corpus_files(path: Path, where: str = "") -> list[Path]:
    """The workflow files of a collection (``[path]`` for a single file); a bad path raises UserError
    led by ``where`` (e.g. ``"data.path: "``)."""
    if not path.exists():
        raise UserError(f"{where}{path}: no such file or directory; expected a .jsonl of workflows, "
                        "a directory or a workflow file")
    if path.is_dir():
        files = dir_files(path)
        if not files:
            raise UserError(f"{where}{path}: no .yml, .yaml or .json files in this directory")
        return files
    if path.suffix not in (*SUFFIXES, ".jsonl"):
        raise UserError(f"{where}{path}: expected a .jsonl of workflows, a directory, or a .yml/.yaml/.json file")
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
    if path.is_dir():
        for f in files if files is not None else dir_files(path):
            yield (str(f.relative_to(path)), *_read(f))
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    yield f"line {n}", None, "not JSON; expected one object per line with a 'yaml' field"
                    continue
                text = next((row[k] for k in TEXT_FIELDS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
                if text is None:
                    yield f"line {n}", None, "no 'yaml' (or 'json', 'text') string field"
                    continue
                name = row.get("path") or f"line {n}"
                yield (f"{row['repo']}/{name}" if row.get("repo") else name), text, None
    else:
        yield (path.name, *_read(path))


def _read(f: Path) -> tuple[str | None, str | None]:
    try:
        return f.read_text(encoding="utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start})"


def dir_files(path: Path) -> list[Path]:
    """Workflow files anywhere under a directory, sorted."""
    return sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
