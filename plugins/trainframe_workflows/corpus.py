"""Reading workflow collections: a .jsonl of {"yaml": ...} rows, a directory, or one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from trainframe.errors import UserError

SUFFIXES = (".yml", ".yaml", ".json")
TEXT_FIELDS = ("yaml", "json", "text")


def iter_texts(path: str | Path) -> Iterator[tuple[str, str]]:
    """(name, text) for every workflow under ``path``; bad input raises UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory; expected a .jsonl of workflows, a directory or a workflow file")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
        if not files:
            raise UserError(f"{p}: no .yml, .yaml or .json files in this directory")
        for f in files:
            yield str(f.relative_to(p)), _read(f)
        return
    if p.suffix == ".jsonl":
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise UserError(f"{p}:{n}: not JSON; expected one object per line with a 'yaml' field") from None
                text = next((row[k] for k in TEXT_FIELDS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
                if text is None:
                    raise UserError(f"{p}:{n}: expected an object with a 'yaml' (or 'json', 'text') string field")
                name = row.get("path") or f"line {n}"
                yield (f"{row['repo']}/{name}" if row.get("repo") else name), text
        return
    if p.suffix in SUFFIXES:
        yield p.name, _read(p)
        return
    raise UserError(f"{p}: expected a .jsonl of workflows, a directory, or a .yml/.yaml/.json file")


def _read(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{f}: not UTF-8 text") from None
