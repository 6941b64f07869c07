"""``trainframe tokenizer check`` and ``trainframe tokenizer train``.

``tokenizer train`` is a core command that dispatches on ``--kind``; this plugin registers the
``schema`` kind (``registry.add_tokenizer_trainer``) with the options and run function below.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from trainframe.errors import UserError
from trainframe.fileio import writing

from .corpus import iter_texts


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON data: booleans are not numbers, 1 equals 1.0, key order does not matter."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- tokenizer check ----------------------------------------------------------------------------


def check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default="schema", choices=["schema", "tct"], help="backend (default: schema)")
    p.add_argument("--schema", default="github-workflow", help="schema name or JSON Schema file (schema backend)")
    p.add_argument("--vocab", default=None, help="vocabulary file (default: the one shipped for the schema)")
    p.add_argument("--data", required=True,
                   help=".jsonl (or .jsonl.xz, .jsonl.gz) of {'yaml': ...} rows, a directory, or one file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, default=None, help="only the first N documents")
    p.add_argument("--show-failures", type=int, default=20, help="encode failures listed in text output")


def _build(args) -> Any:
    if args.tokenizer == "tct":
        from .tct import TctTokenizer

        return TctTokenizer()
    from .plugin import make_schema_tokenizer

    return make_schema_tokenizer(args.schema, args.vocab)


def run_check(tok, texts, schema: dict) -> dict:
    """The figures of ``tokenizer check`` for (name, text) pairs."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator = cls(schema)
    documents = schema_valid = roundtrip_ok = 0
    failures: list[dict] = []
    roundtrip_failures: list[dict] = []
    valid_not_encoded = 0
    tokens: list[int] = []
    chars = 0
    encode_s = 0.0
    for name, text in texts:
        documents += 1
        try:
            doc = tok.parse(text)
        except (yaml.YAMLError, ValueError) as e:
            failures.append({"document": name, "error": str(e).splitlines()[0] if str(e) else type(e).__name__})
            continue
        valid = validator.is_valid(doc)
        schema_valid += valid
        t0 = time.perf_counter()
        try:
            ids = tok.encode(text)
        except ValueError as e:
            encode_s += time.perf_counter() - t0
            failures.append({"document": name, "error": str(e)})
            valid_not_encoded += valid
            continue
        encode_s += time.perf_counter() - t0
        tokens.append(len(ids))
        chars += len(compact_json(doc))
        try:
            back, _ = tok.decode_value(ids)
            if same_json(back, doc):
                roundtrip_ok += 1
            else:
                roundtrip_failures.append({"document": name, "error": "decoded document differs"})
        except ValueError as e:
            roundtrip_failures.append({"document": name, "error": f"decode failed: {e}"})
    encoded = len(tokens)
    return {
        "documents": documents,
        "schema_valid": schema_valid,
        "encoded": encoded,
        "encode_failures": len(failures),
        "schema_valid_not_encoded": valid_not_encoded,
        "roundtrip_ok": roundtrip_ok,
        "tokens_per_doc": round(sum(tokens) / encoded, 2) if encoded else 0.0,
        "tokens_per_doc_median": statistics.median(tokens) if tokens else 0,
        "chars_per_token": round(chars / sum(tokens), 3) if tokens and sum(tokens) else 0.0,
        "docs_per_s": round(encoded / encode_s, 1) if encode_s > 0 else 0.0,
        "failures": failures,
        "roundtrip_failures": roundtrip_failures,
    }


def check_main(args: argparse.Namespace) -> int:
    tok = _build(args)
    schema = getattr(tok, "schema", None)
    if schema is None:  # the tct wheel is for GitHub workflows
        from .schema_tokenizer import load_schema

        schema = load_schema("github-workflow")[1]
    texts = iter_texts(args.data)
    if args.limit is not None:
        texts = (t for i, t in enumerate(texts) if i < args.limit)
    report = run_check(tok, texts, schema)
    if report["documents"] == 0:
        raise UserError(f"{args.data}: no documents found")
    if report["encoded"] == 0 and report["schema_valid"] == 0:
        raise UserError(f"{args.data}: no document is a {getattr(tok, 'schema_name', 'github-workflow')} "
                        f"document ({report['failures'][0]['error'] if report['failures'] else 'nothing parsed'})")
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_report(report, args.show_failures)
    bad = report["roundtrip_failures"] or report["schema_valid_not_encoded"]
    return 1 if bad else 0


def _print_report(r: dict, show: int) -> None:
    out = sys.stdout
    print(f"documents          {r['documents']}", file=out)
    print(f"schema-valid       {r['schema_valid']}", file=out)
    print(f"encode failures    {r['encode_failures']}", file=out)
    for f in r["failures"][:show]:
        print(f"  {f['document']}: {f['error']}", file=out)
    if len(r["failures"]) > show:
        print(f"  ... {len(r['failures']) - show} more", file=out)
    print(f"round trip ok      {r['roundtrip_ok']} of {r['encoded']} encoded", file=out)
    for f in r["roundtrip_failures"][:show]:
        print(f"  {f['document']}: {f['error']}", file=out)
    print(f"tokens per doc     {r['tokens_per_doc']} (median {r['tokens_per_doc_median']})", file=out)
    print(f"JSON chars/token   {r['chars_per_token']}", file=out)
    print(f"docs per second    {r['docs_per_s']} (encode, YAML/JSON text to tokens)", file=out)


# --- tokenizer train --kind schema ------------------------------------------------------------
def schema_train_args(g) -> None:
    g.add_argument("--schema", default="github-workflow", help="schema name or JSON Schema file")
    g.add_argument("--max-dict", type=int, default=2048, help="most dictionary strings")


def schema_train(args: argparse.Namespace) -> int:
    from .schema_tokenizer import SchemaNotFound, load_schema
    from .schema_tokenizer.grammar import Compiler
    from .schema_tokenizer.train import train_vocab
    from .schema_tokenizer.vocab import FIRST_LEARNED
    from .schema_tokenizer.yaml_loader import load_document

    if not args.data:
        raise UserError("--data: required for --kind schema (a .jsonl of {'yaml': ...} rows, a directory or a file)")
    if args.vocab_size < FIRST_LEARNED + 2:
        raise UserError(f"--vocab-size: expected at least {FIRST_LEARNED + 2}, got {args.vocab_size}")
    try:
        name, schema = load_schema(args.schema)
    except SchemaNotFound as e:
        raise UserError(f"--schema: {e}") from None
    # No default file name: a vocabulary dropped into the current directory is easily lost or overwritten.
    config_vocab = getattr(args.run_config.component("tokenizer")[1], "vocab", None) if args.run_config else None
    if not (args.out or config_vocab):
        raise UserError("--out: required for --kind schema: the vocabulary file to write, e.g. "
                        "data/github-workflow.tokenizer.json (or give a run CONFIG whose tokenizer.vocab names it)")
    root = Compiler(schema).root_node
    docs = []
    unreadable = 0
    for _, text in iter_texts(args.data):
        try:
            docs.append(load_document(text))
        except (yaml.YAMLError, ValueError):
            unreadable += 1
    out = Path(args.out or config_vocab)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    try:
        vocab = train_vocab(root, docs, args.vocab_size, args.max_dict, log=log,
                            meta={"schema": name, "corpus": Path(args.data).name})
    except ValueError as e:
        raise UserError(f"{args.data}: {e} (schema {name}; {unreadable} unreadable)") from None
    with writing(out, "the vocabulary"):
        vocab.save(out)
    print(f"wrote {out}: {vocab.size} ids, {len(vocab.dictionary)} dictionary strings, {len(vocab.merges)} merges "
          f"from {vocab.meta['documents']} documents")
    return 0
