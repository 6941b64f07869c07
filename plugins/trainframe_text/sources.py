"""Text sources: a hub dataset or local files, read through ``datasets.load_dataset``.

Local files go through the same call as hub ids (with the parquet/json/text builders), so the
path the tests exercise is the one users run. ``datasets`` is imported only when a source is
actually read: training from prepared shards never imports it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from trainframe.config import ComponentConfig
from trainframe.errors import UserError
from trainframe.fileio import relative_note

# Named sources with the real hub ids and columns; a source's own keys override the preset's.
PRESETS: dict[str, dict] = {
    "fineweb-edu": {"hf": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT", "split": "train", "text_field": "text"},
    "tinystories": {"hf": "roneneldan/TinyStories", "split": "train", "text_field": "text"},
    "the-stack-smol-python": {"hf": "bigcode/the-stack-smol", "data_dir": "data/python", "split": "train",
                              "text_field": "content"},
    "finemath": {"hf": "HuggingFaceTB/finemath", "config": "finemath-4plus", "split": "train", "text_field": "text"},
    "ml-arxiv": {"hf": "CShorten/ML-ArXiv-Papers", "split": "train", "text_field": ["title", "abstract"]},
    "gsm8k": {"hf": "openai/gsm8k", "config": "main", "split": "train", "text_field": ["question", "answer"]},
}

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


class SourceConfig(ComponentConfig):
    """One entry of ``data.sources``: ``hf`` (a hub id), ``files`` (local globs) or ``preset``."""

    preset: str | None = Field(None, description=f"one of {', '.join(PRESETS)}")
    hf: str | None = Field(None, description="hub dataset id, ORG/NAME")
    config: str | None = Field(None, description="hub dataset config (subset), e.g. sample-10BT")
    data_dir: str | None = Field(None, description="hub dataset folder to read, e.g. data/python")
    split: str = Field("train", description="hub dataset split to read")
    files: list[str] | None = Field(None, description="globs of .parquet, .jsonl, .json or .txt files")
    text_field: str | list[str] = Field("text", description="the column with the text; several are joined by a blank line")
    weight: float = Field(1.0, gt=0, description="share of training draws (normalised over the sources)")
    name: str | None = Field(None, description="label in the manifest and metrics; default from hf/files")
    sample_by: Literal["line", "paragraph", "document"] = Field(
        "document", description=".txt files: one row per line, blank-line paragraph or whole file")
    max_tokens: int | None = Field(None, gt=0, description="stop preparing this source after about this many tokens")
    streaming: bool = Field(True, description="read rows as a stream (no local Arrow copy of the whole dataset)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") is not None:
            preset = PRESETS.get(data["preset"])
            if preset is None:
                raise ValueError(f"unknown preset '{data['preset']}'; known: {', '.join(PRESETS)}")
            data = {**preset, **({"name": data["preset"]} if "name" not in data else {}), **data}
        return data

    @model_validator(mode="after")
    def _one_origin(self):
        if (self.hf is None) == (self.files is None):
            raise ValueError("give exactly one of hf (a hub dataset id) or files (local globs)")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.hf:
            return self.hf.split("/")[-1] + (f"-{self.config}" if self.config else "")
        return Path(self.files[0]).stem

    def spec(self) -> dict:
        """What determines this source's rows (weight does not): part of its shard key."""
        return self.model_dump(exclude={"weight", "name", "preset", "max_tokens"})


def source_key(src: SourceConfig, tokenizer_fingerprint: str, chunk_bytes: int) -> str:
    """Directory name of a source's shards: changes when its rows, cap, chunking or tokenizer would."""
    blob = json.dumps([src.spec(), src.max_tokens, tokenizer_fingerprint, chunk_bytes], sort_keys=True)
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in src.label)[:40]
    return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _expand(src: SourceConfig, where: str) -> tuple[str, list[str]]:
    files: list[str] = []
    for pattern in src.files:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise UserError(f"{where}.files: no file matches '{pattern}'{relative_note(pattern)}")
        files.extend(m for m in matches if os.path.isfile(m))
    kinds = {BUILDERS.get("".join(Path(f).suffixes[-1:]).lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise UserError(f"{where}.files: expected files of one type among {', '.join(BUILDERS)}, got "
                        f"{', '.join(sorted({Path(f).suffix or Path(f).name for f in files}))}")
    return kinds.pop(), files


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def _hub_error(src: SourceConfig, where: str, reason: str) -> UserError:
    return UserError(f"{where}: cannot load '{src.hf}' from the Hugging Face hub ({reason}); download it, or point "
                     f"the source at local files: {{files: [path/*.parquet], text_field: {src.text_field}}}")


def open_rows(src: SourceConfig, where: str):
    """The source's rows: a ``datasets`` (Iterable)Dataset, for local files read through
    ``_local_rows``. Bad names and an unreachable hub become one-line UserErrors naming the source."""
    try:
        import datasets  # lazy: only preparing and tokenizer training read sources
    except ModuleNotFoundError as e:
        raise UserError(f"{where}: reading text sources needs {e.name}: pip install 'trainframe[text]'") from None

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if src.files is not None:
        builder, files = _expand(src, where)
        kwargs = {"sample_by": src.sample_by} if builder == "text" else {}
        try:
            rows = datasets.load_dataset(builder, data_files=files, split="train", streaming=src.streaming, **kwargs)
        except Exception as e:  # noqa: BLE001 - a corrupt file: name it, never a traceback
            raise UserError(f"{where}.files: cannot read {files[0] if len(files) == 1 else src.files}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        return _local_rows(rows, files, where)
    if offline():
        # datasets would try its local cache only; say at once what to do instead of a long error.
        reason = "offline: " + ", ".join(f"{v}={os.environ[v]}" for v in OFFLINE_VARS if os.environ.get(v))
        try:
            return datasets.load_dataset(src.hf, src.config, data_dir=src.data_dir, split=src.split, streaming=False)
        except Exception:  # noqa: BLE001 - not in the local cache, whatever the error
            raise _hub_error(src, where, reason) from None
    try:
        return datasets.load_dataset(src.hf, src.config, data_dir=src.data_dir, split=src.split,
                                     streaming=src.streaming)
    except Exception as e:  # noqa: BLE001 - network, auth, missing dataset: all one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _hub_error(src, where, f"{type(e).__name__}: {first[:200]}") from None


def _local_rows(rows, files: list[str], where: str) -> Iterator[dict]:
    """``rows``, with a file that is not UTF-8 (``datasets`` fails on it mid-stream, naming no file)
    reported in one line: which file, at which byte."""
    try:
        yield from rows
    except UnicodeDecodeError:
        for f in files:  # only now, on the way out: find the file and the byte
            try:
                Path(f).read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where}.files: {f}: not UTF-8 text (byte {e.start})") from None
        raise


def _text(value) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def iter_texts(rows, text_field: str | list[str], where: str) -> Iterator[str | None]:
    """Each row's text, or None for a row that has none (missing, empty, not text, not UTF-8)."""
    fields = [text_field] if isinstance(text_field, str) else text_field
    checked = False
    for row in rows:
        if not checked:
            missing = [f for f in fields if f not in row]
            if missing:
                raise UserError(f"{where}.text_field: no column '{missing[0]}'; columns: {', '.join(row)}")
            checked = True
        parts = [_text(row.get(f)) for f in fields]
        value = None if None in parts else "\n\n".join(parts)
        if not isinstance(value, str) or not value.strip():
            yield None
            continue
        try:
            value.encode("utf-8")  # lone surrogates cannot be tokenized as UTF-8
        except UnicodeEncodeError:
            yield None
            continue
        yield value
