"""`tokenizer check` and `tokenizer train`, called through their argparse functions."""

import argparse
import importlib.metadata
import json

import pytest
from support import run_main
from trainframe_workflows.cli import check_args, check_main
from trainframe_workflows.schema_tokenizer import SchemaTokenizer
from wfdata import CORPUS, DATA, need_data

from trainframe.cli.tokenizer import tokenizer_train_args as train_args
from trainframe.cli.tokenizer import tokenizer_train_main as train_main
from trainframe.errors import UserError

KEYS = {"documents", "schema_valid", "encode_failures", "roundtrip_ok", "tokens_per_doc", "chars_per_token", "docs_per_s"}


def _run(add, main, argv):
    p = argparse.ArgumentParser()
    add(p)
    return main(p.parse_args(argv))


def test_check_json_on_a_directory(capsys):
    need_data()
    rc = _run(check_args, check_main, ["--data", str(DATA / "actionlint_testdata" / "err"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert KEYS <= set(report)
    assert report["documents"] == 95
    assert report["roundtrip_ok"] == report["encoded"] == report["schema_valid"]
    assert report["encode_failures"] == report["documents"] - report["encoded"] and report["failures"]
    assert rc == 0


def test_check_text_output_on_jsonl(capsys):
    need_data()
    rc = _run(check_args, check_main, ["--data", str(CORPUS), "--limit", "60"])
    out = capsys.readouterr().out
    assert rc == 0
    for label in ("documents          60", "schema-valid", "encode failures", "round trip ok", "JSON chars/token", "docs per second"):
        assert label in out


def test_check_rejects_bad_input(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        _run(check_args, check_main, ["--data", str(tmp_path / "missing.jsonl")])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(UserError, match="expected a .jsonl"):
        _run(check_args, check_main, ["--data", str(notes)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 3}\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 1: no 'yaml' \(or 'json', 'text'\) string field"):
        _run(check_args, check_main, ["--data", str(bad)])
    other = tmp_path / "compose"
    other.mkdir()
    (other / "a.yml").write_text("services:\n  web:\n    image: nginx\n")
    with pytest.raises(UserError, match="no document is a github-workflow document"):
        _run(check_args, check_main, ["--data", str(other)])


def test_train_writes_one_file_the_tokenizer_loads(tmp_path, capsys):
    need_data()
    rows = CORPUS.read_text(encoding="utf-8").splitlines()[:60]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(rows) + "\n")
    out = tmp_path / "vocab.json"
    assert _run(train_args, train_main, ["--kind", "schema", "--data", str(small), "--out", str(out),
                                         "--vocab-size", "2048"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("vocab")] == ["vocab.json"]
    tok = SchemaTokenizer("github-workflow", vocab=out)
    assert tok.vocab_size() == 2048 and (tok.mask_id, tok.pad_id) == (2046, 2047)
    text = json.loads(rows[0])["yaml"]
    assert tok.decode_value(tok.encode(text))[0] == tok.parse(text)
    # the learned strings make it shorter than the bytes-only vocabulary of an untrained schema
    assert len(tok.encode(text)) < len(SchemaTokenizer(dict(tok.schema)).encode(text))


def test_train_kind_choices_and_errors(tmp_path):
    p = argparse.ArgumentParser()
    train_args(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--kind", "nope", "--data", "x"])
    with pytest.raises(UserError, match="--schema: schema 'nope'"):
        _run(train_args, train_main, ["--kind", "schema", "--data", str(tmp_path), "--schema", "nope"])


def _has_entry_point():
    return any(e.name == "trainframe_workflows" for e in importlib.metadata.entry_points(group="trainframe"))


@pytest.mark.skipif(not _has_entry_point(), reason="trainframe is not installed (no entry points)")
def test_trainframe_command_line(tmp_path):
    need_data()
    r = run_main("tokenizer", "check", "--data", DATA / "schema_tests" / "positive", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["documents"] == report["roundtrip_ok"] == 37
    r = run_main("tokenizer", "check", "--data", tmp_path / "nope")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
