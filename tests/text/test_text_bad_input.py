"""Bad input to the text plugin's commands and components (the ``text`` dataset, the ``bpe``
tokenizer trainer, ``data prepare``, ``data bench``): the table of tests/test_bad_input.py (same
``Case`` fields, same checks) for this plugin."""

from __future__ import annotations

import pytest
from support import SHAKESPEARE
from test_bad_input import TINY, Case, run_case

TEXT_CFG = """model: {name: gpt, preset: tiny, d_model: 32, n_layer: 1, n_head: 2, context: 32}
tokenizer: {name: bytes}
data: {name: text, dir: tdata, workers: 1, sources: [{files: [src.txt]}]}
"""

CASES = [
    Case("source weight inf", "config show x.yaml data.sources.0.weight=.inf", {"x.yaml": TEXT_CFG}, 2,
         "command line: data.sources.0.weight: expected a finite number > 0, got inf"),
    Case("tokenizer train bpe without config", "tokenizer train --kind bpe", {}, 2, "--kind bpe: give a run CONFIG"),
    Case("tokenizer train bpe textfile", "tokenizer train tiny.yaml --kind bpe", TINY, 2,
         "the bpe trainer reads `text` datasets, got 'textfile'"),
    Case("tokenizer train bpe vocab size", "tokenizer train x.yaml --kind bpe --out t.json --vocab-size 10",
         {"x.yaml": TEXT_CFG}, 2, "--vocab-size: expected 260"),
    Case("tokenizer train bpe exists", "tokenizer train x.yaml --kind bpe --out t.json", {"x.yaml": TEXT_CFG, "t.json": "{}"},
         2, "t.json: already exists; pass --force"),
    Case("tokenizer train bpe read-only", "tokenizer train x.yaml --kind bpe --out ro/t.json --vocab-size 300 --sample-mb 0.01",
         {"x.yaml": TEXT_CFG, "src.txt": "the cat sat on the mat\n" * 40}, 2,
         "ro/t.json: cannot write the tokenizer", read_only=("ro",), line=-1),
    Case("prepare a textfile config", "data prepare tiny.yaml", TINY, 2, "`data prepare` reads `text` datasets"),
    Case("prepare workers 0", "data prepare x.yaml --workers 0", {"x.yaml": TEXT_CFG}, 2, "--workers: expected a positive"),
    Case("prepare no source files", "data prepare x.yaml", {"x.yaml": TEXT_CFG}, 2,
         r"data.sources\[0\].files: no file matches 'src.txt' \(relative to the current directory /", outputs=("tdata", "tdata/*")),
    Case("prepare source not utf-8", "data prepare x.yaml", {"x.yaml": TEXT_CFG, "src.txt": b"ok\ncaf\xe9\n"}, 2,
         "data.sources[0].files: src.txt: not UTF-8 text (byte 6)", outputs=("tdata", "tdata/*")),
    Case("prepare jsonl not utf-8", "data prepare x.yaml data.sources.0.files=[s.jsonl]",
         {"x.yaml": TEXT_CFG, "s.jsonl": b'{"text": "ok"}\n{"text": "caf\xe9"}\n'}, 2,
         "data.sources[0].files: s.jsonl: not UTF-8 text", outputs=("tdata", "tdata/*")),
    Case("prepare mixed file types", "data prepare x.yaml data.sources.0.files=[a.txt,b.jsonl]",
         {"x.yaml": TEXT_CFG, "a.txt": "a", "b.jsonl": "{}"}, 2, "expected files of one type",
         outputs=("tdata", "tdata/*")),
    Case("prepare hf and files", ["data", "prepare", "x.yaml", "data.sources.0={files: [a.txt], hf: a/b}"],
         {"x.yaml": TEXT_CFG}, 2, "give exactly one of hf (a hub dataset id) or files"),
    Case("prepare no sources", "data prepare x.yaml data.sources=[]", {"x.yaml": TEXT_CFG}, 2, "expected at least one source"),
    Case("prepare missing column", "data prepare x.yaml data.sources.0.files=[s.jsonl] data.sources.0.text_field=body",
         {"x.yaml": TEXT_CFG, "s.jsonl": '{"text": "ok"}\n'}, 2, "no column 'body'; columns: text",
         outputs=("tdata", "tdata/*")),
    Case("prepare read-only dir", "data prepare x.yaml data.dir=ro/d", {"x.yaml": TEXT_CFG, "src.txt": "hello\n"}, 2,
         "cannot write prepared shards: Permission denied", read_only=("ro",)),
    Case("data bench textfile", "data bench tiny.yaml", TINY, 2, "`data bench` reads `text` datasets"),
    Case("data bench context 0", "data bench x.yaml --context 0", {"x.yaml": TEXT_CFG}, 2, "expected positive numbers"),
    Case("data bench not prepared", "data bench x.yaml", {"x.yaml": TEXT_CFG}, 2, "not prepared for this tokenizer in tdata"),
]


@pytest.fixture(scope="module")
def shared():
    return {"$TEXT": str(SHAKESPEARE)}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_text_bad_input(case: Case, shared, tmp_path, monkeypatch, capsys):
    run_case(case, shared, tmp_path, monkeypatch, capsys)
