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

    def hf_tokenizer(self) -> tuple[str, dict[str, str]]:
        """(tokenizer.json text, special token names) of the same ids for ``tokenizers``/
        ``transformers`` (``trainframe export --format hf``): byte b is token b, spelt as the
        byte-level alphabet spells it, with no merges; EOS and PAD are the special tokens 256, 257."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE(vocab={c: b for b, c in enumerate(byte_level_chars())}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in HF_SPECIALS])
        return tok.to_str(), {"eos_token": HF_SPECIALS[0], "pad_token": HF_SPECIALS[1]}


HF_SPECIALS = ("<|eos|>", "<|pad|>")  # the names of ids 256 and 257 in the transformers tokenizer


def byte_level_chars() -> list[str]:
    """The character the byte-level pre-tokenizer writes for each byte 0..255: printable Latin-1
    characters stand for themselves, the other bytes for 256, 257, ... in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)}
    chars, extra = [], 256
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(extra))
            extra += 1
    return chars


class ByteTokenizerConfig(ComponentConfig):
    pass


def build_byte_tokenizer(cfg: ByteTokenizerConfig) -> ByteTokenizer:
    return ByteTokenizer()
