"""Adapter for the compiled ``tct_github_workflow`` wheel (not on any package index).

It gives the wheel the same object API as :class:`SchemaTokenizer`, so the rest of the project does
not care which backend runs. Without the wheel, building it fails with one line saying how to get
it and what to use instead.
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Sequence

from trainframe.config import ComponentConfig
from trainframe.errors import UserError

from .schema_tokenizer.tokenizer import WorkflowText

MODULE = "tct_github_workflow"
INSTALL_HINT = (
    f"tokenizer 'tct' needs the {MODULE} wheel, which is not installed: "
    f"pip install path/to/{MODULE}-*.whl (or use the built-in `tokenizer: {{name: schema}}`)"
)


class TctConfig(ComponentConfig):
    """No options: the wheel fixes schema and vocabulary."""


def import_wheel(module: str = MODULE):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(INSTALL_HINT) from None


class TctTokenizer(WorkflowText):
    """The wheel's functions as a tokenizer object. YAML input is converted to JSON first
    (the wheel reads JSON only; GitHub-style YAML reading keeps the key "on" a string)."""

    def __init__(self, module=None) -> None:
        self.m = module if module is not None else import_wheel()
        self._size = int(self.m.vocab_size())

    def vocab_size(self) -> int:
        return self._size

    @property
    def pad_id(self) -> int:
        return self._size - 1

    @property
    def mask_id(self) -> int:
        return self._size - 2

    def fingerprint(self) -> str:
        return f"tct-{getattr(self.m, '__version__', 'unknown')}-{self._size}"

    def encode_value(self, value: Any) -> list[int]:
        return list(self.m.encode(json.dumps(value, ensure_ascii=False)))

    def decode(self, tokens: Sequence[int]) -> tuple[str, int, int]:
        json_str, consumed, total = self.m.decode([int(t) for t in tokens])
        return json_str, int(consumed), int(total)

    def decode_value(self, tokens: Sequence[int]) -> tuple[Any, int]:
        json_str, consumed, _ = self.decode(tokens)
        return json.loads(json_str), consumed

    def decode_prefix(self, tokens: Sequence[int]) -> tuple[Any, bool]:
        if hasattr(self.m, "decode_prefix"):
            doc, complete = self.m.decode_prefix([int(t) for t in tokens])
            return (json.loads(doc) if isinstance(doc, str) else doc), bool(complete)
        try:  # the wheel only decodes whole documents
            return self.decode_value(tokens)[0], True
        except ValueError:
            return None, False

    def extract_window(self, tokens: Sequence[int], start: int, end: int) -> list[int]:
        return list(self.m.extract_window([int(t) for t in tokens], start, end))


def build_tct_tokenizer(cfg: TctConfig) -> TctTokenizer:
    return TctTokenizer()
