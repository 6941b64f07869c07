"""The built-in byte-level tokenizer: 256 byte ids plus EOS and PAD, no training needed."""

from __future__ import annotations

from trainframe.config import ComponentConfig


class ByteTokenizer:
    """UTF-8 bytes as tokens. Every text round-trips; 258 ids in all."""

    eos_id = 256
    pad_id = 257

    def vocab_size(self) -> int:
        return 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """Identifies the tokenizer in data caches: a changed tokenizer must not reuse old tokens."""
        return "bytes-v1"


class ByteTokenizerConfig(ComponentConfig):
    pass


def build_byte_tokenizer(cfg: ByteTokenizerConfig) -> ByteTokenizer:
    return ByteTokenizer()
