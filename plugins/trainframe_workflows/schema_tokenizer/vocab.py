"""Token id layout, the learned string vocabulary (dictionary + BPE merges) and its file format.

Layout of the 8192 ids (the same for every schema):

====================  ==========================================================================
0 .. 63               choice tokens: which union branch, which key, which enum value, array
                      continue/stop, false/true. A choice among more than 64 options takes two.
64                    END: closes a string, number literal or free key
65 .. 320             the 256 bytes (UTF-8 of string content)
321 .. 321+D-1        dictionary: whole common strings (one token = the string and its END)
then M ids            BPE merges of two content tokens, learned on string content only
..                    unused ids (when training found fewer merges)
size-2, size-1        MASK (8190) and PAD (8191)
====================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

N_CHOICE = 64
END = 64
BYTE0 = 65
FIRST_LEARNED = BYTE0 + 256
DEFAULT_SIZE = 8192
FORMAT = "trainframe-schema-tokenizer"

# Pre-tokenization for merges: identifiers (letters, digits after a letter, underscore) keep
# together, numbers in groups of three, punctuation runs, whitespace runs. Merges never cross
# these chunk boundaries, which keeps training fast and the learned pieces reusable.
PRETOKENIZE = re.compile(
    r"[^\r\n\w]?[^\W\d]\w*|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def chunks(text: str) -> list[str]:
    parts = PRETOKENIZE.findall(text)
    if sum(map(len, parts)) != len(text):  # cannot happen with the pattern above; stay lossless
        return [text]
    return parts


class Vocab:
    """Dictionary and merges with their ids, and the string-content encoder they define."""

    def __init__(self, dictionary: list[str], merges: list[tuple[int, int]], size: int = DEFAULT_SIZE,
                 meta: dict | None = None) -> None:
        if size < FIRST_LEARNED + 2:
            raise ValueError(f"vocab size must be at least {FIRST_LEARNED + 2}, got {size}")
        if FIRST_LEARNED + len(dictionary) + len(merges) > size - 2:
            raise ValueError(
                f"{len(dictionary)} dictionary strings and {len(merges)} merges do not fit in {size} ids"
            )
        self.size = size
        self.mask_id = size - 2
        self.pad_id = size - 1
        self.dictionary = list(dictionary)
        self.merges = [tuple(m) for m in merges]
        self.meta = dict(meta or {})
        self.dict_start = FIRST_LEARNED
        self.merge_start = FIRST_LEARNED + len(dictionary)
        self.merge_end = self.merge_start + len(merges)
        self.dict_index = {s: FIRST_LEARNED + i for i, s in enumerate(dictionary)}
        # expansion[i]: the bytes of content token i (None for every other id)
        self.expansion: list[bytes | None] = [None] * size
        for b in range(256):
            self.expansion[BYTE0 + b] = bytes([b])
        self.ranks: dict[tuple[int, int], int] = {}
        for j, (a, b) in enumerate(self.merges):
            ea, eb = self.expansion[a], self.expansion[b]
            if ea is None or eb is None:
                raise ValueError(f"merge {j} uses a token that is not string content: {a}, {b}")
            self.expansion[self.merge_start + j] = ea + eb
            self.ranks[(a, b)] = j
        self.content_ids = list(range(BYTE0, FIRST_LEARNED)) + list(range(self.merge_start, self.merge_end))
        self._chunk_cache: dict[str, list[int]] = {}

    # -- string content -> tokens ------------------------------------------------------------
    def encode_chunk(self, chunk: str) -> list[int]:
        ids = self._chunk_cache.get(chunk)
        if ids is not None:
            return ids
        ids = [BYTE0 + b for b in chunk.encode("utf-8")]
        ranks = self.ranks
        while len(ids) > 1:
            best = None
            best_rank = None
            for i in range(len(ids) - 1):
                r = ranks.get((ids[i], ids[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, (ids[i], ids[i + 1])
            if best is None:
                break
            new = self.merge_start + best_rank
            out = []
            i = 0
            n = len(ids)
            while i < n:
                if i < n - 1 and ids[i] == best[0] and ids[i + 1] == best[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        if len(self._chunk_cache) < 200_000:
            self._chunk_cache[chunk] = ids
        return ids

    def encode_content(self, text: str) -> list[int]:
        out: list[int] = []
        for c in chunks(text):
            out.extend(self.encode_chunk(c))
        return out

    def fingerprint(self) -> str:
        body = json.dumps([self.size, self.dictionary, self.merges], ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    # -- file format ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "vocab_size": self.size,
            "layout": {"choices": N_CHOICE, "end": END, "bytes": BYTE0, "learned": FIRST_LEARNED,
                       "mask": self.mask_id, "pad": self.pad_id},
            "meta": self.meta,
            "dictionary": self.dictionary,
            "merges": [list(m) for m in self.merges],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, ensure_ascii=False, separators=(",", ":"))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a vocabulary is shared data
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def from_json(cls, data: dict, where: str = "vocabulary") -> "Vocab":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{where}: not a schema tokenizer vocabulary (expected format {FORMAT!r})")
        lay = data.get("layout", {})
        if lay.get("choices") != N_CHOICE or lay.get("learned") != FIRST_LEARNED:
            raise ValueError(f"{where}: token layout {lay} differs from this version's")
        return cls(data["dictionary"], [tuple(m) for m in data["merges"]], int(data["vocab_size"]), data.get("meta"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls.from_json(data, str(path))

    @classmethod
    def empty(cls, size: int = DEFAULT_SIZE) -> "Vocab":
        """Bytes only: works for any schema before training."""
        return cls([], [], size)


def schema_fingerprint(schema: dict) -> str:
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]

