"""The workflows dataset: token cache reuse and invalidation, bad input, split by repository."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from trainframe_workflows.corpus import repo_of
from trainframe_workflows.dataset import WorkflowsConfig, build_workflows, split_docs

from trainframe.errors import UserError

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "workflows" / "workflows.jsonl"

GOOD = """name: CI
on: [push]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: make {n}
"""


def write_corpus(root, n=6):
    """n repositories of one valid workflow each, plus three broken files."""
    for i in range(n):
        d = root / f"owner/repo{i}/.github/workflows"
        d.mkdir(parents=True)
        (d / "ci.yml").write_text(GOOD.format(n=i))
    bad = root / "owner/broken/.github/workflows"
    bad.mkdir(parents=True)
    (bad / "latin1.yml").write_bytes(b"name: caf\xe9\non: push\n")  # not UTF-8
    (bad / "yaml.yml").write_text("on: [push\njobs: {")  # not YAML
    (bad / "schema.yml").write_text("on: push\njobs:\n  a:\n    runs-on: 3\n    steps: 7\n")  # not schema-valid
    return root


def build(tok, path, tmp_path, context=32, **data):
    cfg = WorkflowsConfig(path=str(path), cache_dir=str(tmp_path / "cache"), **data)
    return build_workflows(cfg, tokenizer=tok, context=context, seed=0)


def test_cache_reused_and_invalidated(tok, tmp_path, capsys):
    root = write_corpus(tmp_path / "corpus")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    a = build(tok, root, tmp_path, val_ratio=0.3)
    out = capsys.readouterr().out
    assert "6 workflows" in out and "3 skipped" in out and "tokenized in" in out
    b = build(tok, root, tmp_path, val_ratio=0.3)
    assert "cached in" in capsys.readouterr().out
    assert np.array_equal(a.tokens, b.tokens)
    assert before == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    (root / "owner/repo0/.github/workflows/ci.yml").write_text(GOOD.format(n="changed"))
    build(tok, root, tmp_path, val_ratio=0.3)
    assert "tokenized in" in capsys.readouterr().out  # an edit makes a new cache entry
    entries = [p for p in (tmp_path / "cache" / "workflows").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2


def test_tokenizer_change_invalidates_cache(tok, tmp_path, capsys):
    from trainframe_workflows.schema_tokenizer import SchemaTokenizer, Vocab

    root = write_corpus(tmp_path / "corpus")
    build(tok, root, tmp_path, val_ratio=0.3)
    bytes_only = SchemaTokenizer("github-workflow", vocab=Vocab.empty(tok.vocab_size()))
    capsys.readouterr()
    ds = build(bytes_only, root, tmp_path, val_ratio=0.3)
    assert "tokenized in" in capsys.readouterr().out
    assert ds.lengths.sum() > 6 * 10


def test_corrupt_files_are_skipped_counted_and_listed(tok, tmp_path, capsys):
    root = write_corpus(tmp_path / "corpus")
    jsonl = tmp_path / "w.jsonl"
    rows = [json.dumps({"repo": f"o/r{i}", "path": ".github/workflows/a.yml", "yaml": GOOD.format(n=i)}) for i in range(4)]
    jsonl.write_text("\n".join([*rows, "{not json", json.dumps({"repo": "o/x", "path": "p"})]) + "\n")
    build(tok, root, tmp_path, val_ratio=0.3)
    out = capsys.readouterr().out
    assert "latin1.yml: not UTF-8" in out
    assert "yaml.yml:" in out and "schema.yml: jobs.a" in out
    build(tok, jsonl, tmp_path, val_ratio=0.3)
    out = capsys.readouterr().out
    assert "4 workflows" in out and "2 skipped" in out
    assert "line 5: not JSON" in out and "line 6: no 'yaml'" in out


def test_bad_input_is_one_line(tok, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        build(tok, tmp_path / "missing.jsonl", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .yml"):
        build(tok, tmp_path / "empty", tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="expected a .jsonl"):
        build(tok, tmp_path / "notes.txt", tmp_path)
    with pytest.raises(UserError, match="workflow tokenizer"):
        from trainframe.data.tokenizer import ByteTokenizer

        build(ByteTokenizer(), write_corpus(tmp_path / "c"), tmp_path)


@pytest.mark.slow
def test_split_by_repository_on_the_shared_corpus(tok, tmp_path):
    if not CORPUS.is_file():
        pytest.skip("shared workflow data not present")
    ds = build(tok, CORPUS, tmp_path, val_ratio=0.1)
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    repos = {r["repo"] for r in rows}
    meta = json.loads((next((tmp_path / "cache" / "workflows").iterdir()) / "docs.json").read_text())
    doc_repos = [d[1] for d in meta["docs"]]
    assert set(doc_repos) <= repos
    train = {doc_repos[i] for i in ds.train_docs}
    val = {doc_repos[i] for i in ds.val_docs}
    assert train and val and not train & val  # no repository on both sides
    assert 0.03 < len(ds.val_docs) / len(doc_repos) < 0.3
    # stable: the same split from a different order, and from the repository names alone
    _, v2 = split_docs(doc_repos[::-1], 0.1)
    assert {doc_repos[::-1][i] for i in v2} == val
    assert 3.5 < ds.chars_per_token < 6  # compact JSON characters per target token


def test_repo_of():
    assert repo_of("actions/starter-workflows/.github/workflows/ci.yml") == "actions/starter-workflows"
    assert repo_of("some/dir/ci.yml") == "some/dir"
    assert repo_of("ci.yml") == "ci.yml"


def test_config_errors_name_the_key(tmp_path, capsys):
    from trainframe.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: gpt, preset: tiny}\ntokenizer: {name: schema}\n"
                   "data: {name: workflows, path: x.jsonl, prefix: everything}\n")
    assert main(["config", "validate", str(cfg)]) == 2
    assert "data.prefix" in capsys.readouterr().err


def test_hold_out_sets_whole_workflows_aside_and_resumes(tok, tmp_path):
    root = write_corpus(tmp_path / "corpus", n=8)
    data = build(tok, root, tmp_path, context=16, val_ratio=0.2)
    before = set(data.train_docs.tolist())
    held = data.hold_out(3)
    assert held[0].shape == (3, 16)
    gone = before - set(data.train_docs.tolist())
    assert gone and set(data.train_docs.tolist()) < before  # whole workflows left training
    assert {int(d) for d in data.held_windows[:, 0]} <= gone
    for epoch in range(3):  # no training window, in any epoch, comes from a workflow held out
        windows, order = data._epoch(epoch)
        assert not {int(d) for d in windows[order, 0]} & gone
    for _ in range(4):
        data.next_batch(4)
    fresh = build(tok, root, tmp_path, context=16, val_ratio=0.2)
    fresh.load_state_dict(data.state_dict())  # a resumed run holds the same workflows out
    assert all(torch.equal(a, b) for a, b in zip(fresh.hold_out(3), held))
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(fresh.next_batch(4), data.next_batch(4)))
