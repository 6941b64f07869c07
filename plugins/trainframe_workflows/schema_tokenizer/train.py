"""Learn the string vocabulary: a dictionary of whole common strings, then BPE merges.

Only string content is learned (values, free keys, number literals): the structure costs no tokens
already. The budget of learned ids (vocab size minus the fixed layout) is split between the two
greedily: a dictionary entry is worth the tokens it saves (count x its BPE length, its END
included), a merge is worth the occurrences of its pair, and the dictionary takes ids from the
end of the merge list while its next entry saves more than the merge it displaces. The merges are
then learned again without the strings the dictionary now covers.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, defaultdict
from typing import Callable, Iterable

from .codec import Encoder, SchemaEncodeError
from .grammar import Node
from .vocab import BYTE0, FIRST_LEARNED, Vocab, chunks

MAX_DICT_LEN = 200  # longer strings are rarely repeated verbatim and would bloat the file


def collect_strings(root: Node, documents: Iterable) -> tuple[Counter, Counter, int, int]:
    """Count string contents per role over the schema-valid documents.

    Returns (dictionary candidates: strings and keys, all content incl. numbers, valid, invalid).
    """
    strings: Counter = Counter()
    content: Counter = Counter()

    def seen(s: str, role: str) -> None:
        content[s] += 1
        if role != "number":
            strings[s] += 1

    enc = Encoder(None, collect=seen)
    valid = invalid = 0
    for doc in documents:
        # Count a document's strings only once it has encoded completely.
        local: list[tuple[str, str]] = []
        enc.collect = lambda s, role: local.append((s, role))
        try:
            enc.encode(root, doc)
        except SchemaEncodeError:
            invalid += 1
            continue
        for s, role in local:
            seen(s, role)
        valid += 1
    return strings, content, valid, invalid


def train_bpe(word_counts: dict[str, int], num_merges: int, first_id: int,
              progress: Callable[[int], None] | None = None) -> tuple[list[tuple[int, int]], list[int]]:
    """Byte-level BPE on pre-tokenized chunks. Returns merges (as id pairs) and their counts.

    Incremental: pair counts are updated only for the words a merge touches, and the best pair
    comes from a heap whose stale entries are corrected when popped.
    """
    words: list[list[int]] = []
    counts: list[int] = []
    for w, c in word_counts.items():
        ids = [BYTE0 + b for b in w.encode("utf-8")]
        if len(ids) > 1:
            words.append(ids)
            counts.append(c)
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        c = counts[wi]
        for p in zip(w, w[1:]):
            pair_count[p] += c
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    merge_counts: list[int] = []
    next_id = first_id
    while len(merges) < num_merges and heap:
        negc, p = heapq.heappop(heap)
        cur = pair_count.get(p, 0)
        if cur != -negc:
            if cur > 0:
                heapq.heappush(heap, (-cur, p))
            continue
        if cur < 2:
            break
        merges.append(p)
        merge_counts.append(cur)
        new = next_id
        next_id += 1
        a, b = p
        touched: set[tuple[int, int]] = set()
        for wi in where.pop(p, ()):
            w = words[wi]
            c = counts[wi]
            if len(w) < 2:
                continue
            out = []
            i, n = 0, len(w)
            changed = False
            while i < n:
                if i < n - 1 and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                    changed = True
                else:
                    out.append(w[i])
                    i += 1
            if not changed:
                continue
            for q in zip(w, w[1:]):
                pair_count[q] -= c
            for q in zip(out, out[1:]):
                pair_count[q] += c
                where[q].add(wi)
                touched.add(q)
            words[wi] = out
        pair_count.pop(p, None)
        for q in touched:
            if pair_count.get(q, 0) > 0:
                heapq.heappush(heap, (-pair_count[q], q))
        if progress is not None and len(merges) % 500 == 0:
            progress(len(merges))
    return merges, merge_counts


def _chunk_counts(content: Counter, skip: set[str] | None = None) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for s, c in content.items():
        if skip and s in skip:
            continue
        for ch in chunks(s):
            out[ch] += c
    return out


def _remap(merges: list[tuple[int, int]], provisional: int, start: int) -> list[tuple[int, int]]:
    shift = start - provisional
    return [tuple(x + shift if x >= provisional else x for x in m) for m in merges]


def train_vocab(root: Node, documents: Iterable, vocab_size: int = 8192, max_dict: int = 2048,
                log: Callable[[str], None] = lambda s: None, meta: dict | None = None) -> Vocab:
    t0 = time.perf_counter()
    strings, content, valid, invalid = collect_strings(root, documents)
    if valid == 0:
        raise ValueError("no schema-valid document to learn from")
    log(f"{valid} schema-valid documents ({invalid} skipped), {len(content)} distinct strings")
    budget = vocab_size - 2 - FIRST_LEARNED
    provisional = 1 << 30
    merges, mcounts = train_bpe(_chunk_counts(content), budget, provisional,
                                lambda n: log(f"  pass 1: {n} merges"))
    first = Vocab([], _remap(merges, provisional, FIRST_LEARNED), vocab_size)
    # What each repeated string would save as one dictionary token.
    cands = []
    for s, c in strings.items():
        if c >= 2 and 0 < len(s) <= MAX_DICT_LEN:
            # c x (content tokens + END) become c x one token
            cands.append((c * len(first.encode_content(s)), s))
    cands.sort(key=lambda x: (-x[0], x[1]))
    dictionary: list[str] = []
    tail = len(merges)
    for saved, s in cands:
        if len(dictionary) >= max_dict:
            break
        displaced = mcounts[tail - 1] if tail > 0 else 0
        if saved <= displaced:
            break
        dictionary.append(s)
        tail -= 1
    log(f"dictionary: {len(dictionary)} strings; pass 1 had {len(merges)} merges")
    # Learn the merges again on what the dictionary does not cover.
    covered = set(dictionary)
    rest = Counter({s: c for s, c in content.items()})
    for s in covered:
        rest[s] -= strings[s]  # occurrences as values/keys go to the dictionary; numbers stay
        if rest[s] <= 0:
            del rest[s]
    merges2, _ = train_bpe(_chunk_counts(rest), budget - len(dictionary), provisional,
                           lambda n: log(f"  pass 2: {n} merges"))
    start = FIRST_LEARNED + len(dictionary)
    info = dict(meta or {})
    info.update({"documents": valid, "skipped": invalid, "dictionary": len(dictionary),
                 "merges": len(merges2), "seconds": round(time.perf_counter() - t0, 1)})
    vocab = Vocab(dictionary, _remap(merges2, provisional, start), vocab_size, info)
    log(f"vocabulary: {len(dictionary)} strings + {len(merges2)} merges in {info['seconds']} s")
    return vocab
