"""The schema tokenizer: the same API as the tct_github_workflow wheel, for any JSON Schema."""

from __future__ import annotations

import importlib.resources
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .budget import Budget
from .codec import Encoder, SchemaDecodeError, SchemaEncodeError, StreamDecoder, Tables
from .grammar import Compiler
from .vocab import Vocab, schema_fingerprint
from .yaml_loader import load_document

# Schemas known by name. The GitHub workflow schema ships inside check-jsonschema (pinned), so it
# is available offline without a copy in this package.
BUILTIN_SCHEMAS = {
    "github-workflow": ("check_jsonschema", "builtin_schemas/vendor/github-workflows.json"),
}
_DATA = Path(__file__).resolve().parent.parent / "data"


class SchemaNotFound(LookupError):
    """An unknown schema name or a schema file that cannot be read."""


def load_schema(schema: str | os.PathLike | dict) -> tuple[str, dict]:
    """(name, schema dict) for a built-in name, a file path or an already loaded schema."""
    if isinstance(schema, dict):
        return schema.get("$id", "custom"), schema
    text = str(schema)
    if text in BUILTIN_SCHEMAS:
        package, resource = BUILTIN_SCHEMAS[text]
        try:
            data = (importlib.resources.files(package) / resource).read_text(encoding="utf-8")
        except (ModuleNotFoundError, FileNotFoundError) as e:
            raise SchemaNotFound(f"schema {text!r} needs the package {package!r} ({e})") from None
        return text, json.loads(data)
    path = Path(text)
    if not path.is_file():
        known = ", ".join(sorted(BUILTIN_SCHEMAS))
        raise SchemaNotFound(f"schema {text!r}: not a known name ({known}) nor an existing file")
    try:
        return path.stem, json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SchemaNotFound(f"schema file {text}: not valid JSON ({e})") from None


def default_vocab_path(name: str) -> Path:
    return _DATA / f"{name}.tokenizer.json"


class WorkflowText:
    """The text side of a workflow tokenizer, on top of its ``encode_value``/``decode_value``;
    shared with the tct adapter so both read and write workflow files the same way."""

    # Why `trainframe export --format hf` refuses it (a transformers tokenizer maps text through a vocabulary).
    hf_unsupported = ("it encodes a workflow's parsed structure against the JSON Schema, which no transformers "
                      "tokenizer (text through a vocabulary) can reproduce")

    def parse(self, text: str) -> Any:
        """Workflow text (YAML or JSON) to JSON data, with GitHub's reading of YAML."""
        return load_document(text)

    def encode(self, text: str) -> list[int]:
        """YAML or JSON text -> token ids. Raises SchemaEncodeError if the schema rejects it."""
        return self.encode_value(load_document(text))

    def decode_file(self, tokens: Sequence[int]) -> tuple[str, str]:
        """(YAML text, ".yml") of the first complete document: what ``trainframe generate`` writes."""
        from ..generation import workflow_yaml

        return workflow_yaml(self.decode_value(tokens)[0]), ".yml"


class SchemaTokenizer(WorkflowText):
    """Schema-aware tokenizer.

    ``schema``: a built-in name (``github-workflow``), a path to a JSON Schema, or a dict.
    ``vocab``: a vocabulary file written by ``trainframe tokenizer train``; by default the one
    shipped for a built-in schema, else bytes only (every document still encodes, just longer).
    """

    def __init__(self, schema: str | os.PathLike | dict = "github-workflow",
                 vocab: str | os.PathLike | Vocab | None = None, vocab_size: int | None = None) -> None:
        self.schema_name, self.schema = load_schema(schema)
        if isinstance(vocab, Vocab):
            self.vocab = vocab
        elif vocab is not None:
            self.vocab = Vocab.load(vocab)
        elif isinstance(schema, str) and default_vocab_path(self.schema_name).is_file() and schema in BUILTIN_SCHEMAS:
            self.vocab = Vocab.load(default_vocab_path(self.schema_name))
        else:
            self.vocab = Vocab.empty(vocab_size or 8192)
        if vocab_size is not None and vocab_size != self.vocab.size:
            raise ValueError(f"vocabulary has {self.vocab.size} ids, {vocab_size} requested")
        self.compiler = Compiler(self.schema)
        self.root = self.compiler.root_node
        self.schema_fingerprint = schema_fingerprint(self.schema)
        self._encoder = Encoder(self.vocab)
        self._tables: Tables | None = None
        self._budget: Budget | None = None
        self._streams = DecoderCache(self.stream)

    # -- the tct API ---------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self.vocab.pad_id

    @property
    def mask_id(self) -> int:
        return self.vocab.mask_id

    def vocab_size(self) -> int:
        return self.vocab.size

    def fingerprint(self) -> str:
        """Identifies schema and vocabulary: tokens cached under another fingerprint are stale."""
        return f"schema-{self.schema_name}-{self.schema_fingerprint}-{self.vocab.fingerprint()}"

    def encode_value(self, value: Any) -> list[int]:
        """JSON data -> token ids."""
        try:
            return self._encoder.encode(self.root, value)
        except RecursionError:  # e.g. a YAML alias that contains itself
            raise SchemaEncodeError((), "the document is nested too deeply (or contains itself)") from None

    def decode_value(self, tokens: Sequence[int]) -> tuple[Any, int]:
        """(document, tokens consumed). Raises SchemaDecodeError with the token position."""
        d = self.stream()
        for t in tokens:
            d.feed(t)
            if d.done:
                return d.result, d.pos
        raise SchemaDecodeError(d.pos, "the tokens end before the document is complete", _open_path(d))

    def decode(self, tokens: Sequence[int]) -> tuple[str, int, int]:
        """(json_str, consumed, total): like the tct wheel; tokens after the document are left."""
        value, consumed = self.decode_value(tokens)
        return json.dumps(value, ensure_ascii=False), consumed, len(tokens)

    def decode_prefix(self, tokens: Sequence[int]) -> tuple[Any, bool]:
        """(partial document, complete). Raises SchemaDecodeError on a token that cannot occur."""
        d = self.stream()
        for t in tokens:
            if d.done:
                break
            d.feed(t)
        return d.partial(), d.done

    def complete_typed(self, text: str):
        """The completion of a workflow as it is being typed (``trainframe generate --prefix-from``):
        the longest run of its leading lines the schema can continue; see ``completion.Completion``."""
        from ..completion import Completion

        return Completion(self, text)

    def infill(self, text: str, at: str, layout, max_tokens: int):
        """The fill-in-the-middle task for the value at path ``at`` of a workflow's text
        (``trainframe generate --infill FILE --at PATH``); see ``completion.Infill``."""
        from ..completion import infill_task

        return infill_task(self, layout, text, at, max_tokens)

    def extract_window(self, tokens: Sequence[int], start: int, end: int) -> list[int]:
        """``[start] + tokens[start:end]``: a training window led by its position, as the wheel does."""
        if start < 0 or end < start:
            raise ValueError(f"bad window [{start}, {end})")
        return [int(start)] + [int(t) for t in tokens[start:end]]

    # -- constrained decoding ---------------------------------------------------------------------
    @property
    def tables(self) -> Tables:
        if self._tables is None:
            self._tables = Tables(self.vocab)
        return self._tables

    def stream(self) -> StreamDecoder:
        """A decoder to advance token by token (``feed``), asking ``allowed()`` before each step."""
        return StreamDecoder(self.root, self.tables)

    @property
    def budget(self) -> Budget:
        if self._budget is None:
            self._budget = Budget(self.tables)
        return self._budget

    def allowed_next(self, prefix_tokens: Sequence[int], budget: int | None = None) -> np.ndarray:
        """Boolean mask (length vocab_size) of tokens that keep the prefix completable.

        ``budget``: the document tokens that may still follow, the next one included; only tokens
        after which the document can still be completed within them are allowed (see ``budget``).
        The decoder state of recent prefixes is kept, so calling this with a prefix one token
        longer than a previous call costs one step, not a re-decode.
        """
        d = self._decoder(prefix_tokens)
        if budget is None:
            return d.allowed().copy()
        return self.budget.mask(d, d.allowed(), budget)[0].copy()

    def closing_cost(self, prefix_tokens: Sequence[int]) -> int:
        """The fewest tokens that complete the document after ``prefix_tokens`` (0 if complete)."""
        return self.budget.closing_cost(self._decoder(prefix_tokens))

    def budget_limited(self, prompt: Sequence[int], new: Sequence[int], budget: int) -> bool:
        """Did the budget narrow any step of ``new`` (sampled after ``prompt`` with ``budget``)?"""
        d = self.stream()  # a decoder of its own: the cached ones stay as they are
        for t in prompt:
            d.feed(t)
        for i, t in enumerate(new):
            if d.done:
                break
            if self.budget.mask(d, d.allowed(), budget - i)[1]:
                return True
            d.feed(t)
        return False

    def _decoder(self, prefix_tokens: Sequence[int]) -> StreamDecoder:
        """The decoder after ``prefix_tokens``, from the cache of recent prefixes when it can."""
        return self._streams.after(prefix_tokens)


class DecoderCache:
    """Decoders of recent prefixes, so a prefix one token longer than an earlier one costs one
    step, not a re-decode (rows of a batch each grow by one token per step). ``new()`` starts a
    decoder; the decoders it returns are shared: feed them only through :meth:`after`."""

    def __init__(self, new, size: int = 64) -> None:
        self.new, self.size = new, size
        self._cache: OrderedDict[tuple, StreamDecoder] = OrderedDict()

    def after(self, tokens: Sequence[int]) -> StreamDecoder:
        key = tuple(int(t) for t in tokens)
        d = self._cache.get(key)
        if d is not None:
            self._cache.move_to_end(key)
            return d
        d = self._cache.pop(key[:-1], None) if key else None
        if d is not None:
            try:
                d.feed(key[-1])
            except SchemaDecodeError:
                d = None
        if d is None:
            d = self.new()
            for t in key:
                d.feed(t)
        self._cache[key] = d
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return d


def _open_path(d: StreamDecoder) -> tuple:
    return d.stack[-1].path if d.stack else ()


__all__ = ["SchemaTokenizer", "SchemaEncodeError", "SchemaDecodeError", "SchemaNotFound", "load_schema"]
