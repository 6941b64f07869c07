"""Measure the schema tokenizer against its targets.

    python -m trainframe_workflows.bench --data workflows.jsonl [--heldout] [--json]

Prints: schema-valid count, round trip, JSON characters per token and tokens per workflow for the
schema tokenizer and for HF ``tokenizers`` byte-level BPE with the same vocabulary size trained on
the same corpus (YAML text and compact JSON text), encode speed at the median document size on one
core, and ``allowed_next`` latency at the median token length. ``--heldout`` also trains both on
the documents of 80% of the repositories and measures on the other 20%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jsonschema

from .cli import compact_json, same_json
from .corpus import iter_texts
from .schema_tokenizer import SchemaTokenizer
from .schema_tokenizer.train import train_vocab
from .schema_tokenizer.yaml_loader import load_document


def _hf_bpe(texts, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return t


def compression(tok, train_rows, test_rows, vocab_size=8192) -> dict:
    """Tokens per workflow and JSON chars per token on ``test_rows`` (schema-valid ones)."""
    out = {}
    chars = sum(len(compact_json(r["doc"])) for r in test_rows)
    ours = [len(tok.encode_value(r["doc"])) for r in test_rows]
    out["schema"] = {"tokens_per_doc": sum(ours) / len(ours), "median": statistics.median(ours),
                     "chars_per_token": chars / sum(ours)}
    try:
        for form in ("yaml", "json"):
            text = (lambda r: r["text"]) if form == "yaml" else (lambda r: compact_json(r["doc"]))
            bpe = _hf_bpe([text(r) for r in train_rows], vocab_size)
            n = [len(bpe.encode(text(r)).ids) for r in test_rows]
            out[f"bpe_{form}"] = {"tokens_per_doc": sum(n) / len(n), "median": statistics.median(n),
                                  "chars_per_token": chars / sum(n)}
            out[f"fewer_tokens_than_bpe_{form}"] = sum(a < b for a, b in zip(ours, n)) / len(n)
    except ImportError:
        out["bpe"] = "HF tokenizers not installed"
    return out


def encode_speed(tok, rows) -> dict:
    """Documents within 10% of the median size, encoded from YAML text on this one process."""
    med = statistics.median(len(r["text"]) for r in rows)
    near = [r["text"] for r in rows if abs(len(r["text"]) - med) <= 0.1 * med]
    fresh = SchemaTokenizer(tok.schema_name, vocab=tok.vocab)  # empty caches: the first pass is cold
    t0 = time.perf_counter()
    for t in near:
        fresh.encode(t)
    cold = len(near) / (time.perf_counter() - t0)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for t in near:
            fresh.encode(t)
        best = min(best, time.perf_counter() - t0)
    return {"median_chars": med, "documents": len(near), "cold_docs_per_s": cold, "warm_docs_per_s": len(near) / best}


def allowed_next_speed(tok, rows) -> dict:
    encs = [tok.encode_value(r["doc"]) for r in rows]
    med = int(statistics.median(len(e) for e in encs))
    sample = [e for e in encs if len(e) >= med][:20]
    tok.allowed_next([])  # build the per-vocabulary tables once
    cold = []
    for e in sample:
        tok._streams.clear()
        t0 = time.perf_counter()
        tok.allowed_next(e[:med])
        cold.append(time.perf_counter() - t0)
    step = []
    for e in sample[:5]:
        tok._streams.clear()
        for n in range(med):
            t0 = time.perf_counter()
            tok.allowed_next(e[:n])
            step.append(time.perf_counter() - t0)
    step.sort()
    return {"median_tokens": med, "full_prefix_ms_median": 1e3 * statistics.median(cold),
            "full_prefix_ms_max": 1e3 * max(cold), "incremental_ms_median": 1e3 * statistics.median(step),
            "incremental_ms_p99": 1e3 * step[int(0.99 * len(step))]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--schema", default="github-workflow")
    p.add_argument("--vocab", default=None)
    p.add_argument("--heldout", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tok = SchemaTokenizer(args.schema, vocab=args.vocab)
    v = jsonschema.Draft7Validator(tok.schema)
    rows = []
    for name, text in iter_texts(args.data):
        doc = load_document(text)
        rows.append({"name": name, "text": text, "doc": doc, "valid": v.is_valid(doc)})
    valid = [r for r in rows if r["valid"]]
    rt = sum(same_json(tok.decode_value(tok.encode(r["text"]))[0], r["doc"]) for r in valid)
    report = {"documents": len(rows), "schema_valid": len(valid), "roundtrip_ok": rt,
              "in_sample": compression(tok, rows, valid),
              "encode": encode_speed(tok, valid), "allowed_next": allowed_next_speed(tok, valid)}
    if args.heldout:
        repos = sorted({r["name"].split("/.github")[0] for r in rows})
        test_repos = set(repos[::5])  # every fifth repository, by name
        train = [r for r in rows if r["name"].split("/.github")[0] not in test_repos]
        test = [r for r in valid if r["name"].split("/.github")[0] in test_repos]
        vocab = train_vocab(tok.root, [r["doc"] for r in train], tok.vocab.size)
        held = SchemaTokenizer(tok.schema_name, vocab=vocab)
        report["heldout"] = {"train_docs": len(train), "test_docs": len(test), **compression(held, train, test)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    return 0


def _print(r: dict) -> None:
    print(f"documents {r['documents']}, schema-valid {r['schema_valid']}, round trip ok {r['roundtrip_ok']}")
    for section in ("in_sample", "heldout"):
        if section not in r:
            continue
        s = r[section]
        head = f"{section}" + (f" ({s['train_docs']} train / {s['test_docs']} test docs)" if section == "heldout" else "")
        print(head)
        for k in ("schema", "bpe_yaml", "bpe_json"):
            if k in s:
                print(f"  {k:9s} tokens/doc {s[k]['tokens_per_doc']:8.1f} (median {s[k]['median']:6.0f})"
                      f"  JSON chars/token {s[k]['chars_per_token']:.2f}")
        for k in ("fewer_tokens_than_bpe_yaml", "fewer_tokens_than_bpe_json"):
            if k in s:
                print(f"  {k}: {100 * s[k]:.1f}% of documents")
    e = r["encode"]
    print(f"encode at median size ({e['median_chars']:.0f} chars, {e['documents']} docs): "
          f"{e['cold_docs_per_s']:.0f} docs/s cold, {e['warm_docs_per_s']:.0f} docs/s warm")
    a = r["allowed_next"]
    print(f"allowed_next at {a['median_tokens']} tokens: full prefix {a['full_prefix_ms_median']:.3f} ms median "
          f"({a['full_prefix_ms_max']:.2f} max); one more token {a['incremental_ms_median']:.3f} ms median "
          f"({a['incremental_ms_p99']:.2f} p99)")


if __name__ == "__main__":
    sys.exit(main())
