"""The tokenizer object API shared by every backend, plus schema-tokenizer specifics."""

import importlib.util
import json

import pytest

from trainframe.errors import UserError
from trainframe.registry import Registry
from trainframe_workflows import plugin
from trainframe_workflows.schema_tokenizer import DocumentParseError, SchemaDecodeError, SchemaEncodeError, SchemaTokenizer
from trainframe_workflows.schema_tokenizer.yaml_loader import load_yaml
from trainframe_workflows.tct import INSTALL_HINT, TctConfig, build_tct_tokenizer

BACKENDS = ["schema"] + (["tct"] if importlib.util.find_spec("tct_github_workflow") else [])
QUICKSTART = {"name": "CI", "on": "push",
              "jobs": {"build": {"runs-on": "ubuntu-latest", "steps": [{"uses": "actions/checkout@v4"}]}}}


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    reg = Registry()
    plugin.trainframe_register(reg)
    comp = reg.get("tokenizer", request.param)
    return comp.factory(comp.config())


def test_contract(backend):
    assert backend.vocab_size() == 8192
    assert (backend.mask_id, backend.pad_id) == (8190, 8191)
    ids = backend.encode(json.dumps(QUICKSTART))
    assert all(isinstance(t, int) for t in ids)
    js, consumed, total = backend.decode(ids)
    assert json.loads(js) == QUICKSTART and consumed == total == len(ids)
    window = backend.extract_window(ids, 2, 8)
    assert window[0] == 2 and window[1:] == ids[2:8]
    assert backend.encode("name: CI\non: push\njobs:\n  b:\n    runs-on: x\n    steps: [{run: make}]\n")
    with pytest.raises(ValueError):
        backend.encode(json.dumps({"on": "push", "jobs": {"b": {"runs-on": "x", "steps": [{"uses": 3}]}}}))


def test_the_on_key_stays_a_string(tok):
    text = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: 'yes'\n"
    doc = load_yaml(text)
    assert "on" in doc and True not in doc
    assert json.loads(tok.decode(tok.encode(text))[0])["on"] == "push"
    # YAML 1.1 words and dates stay strings, as GitHub reads them
    assert load_yaml("a: yes\nb: off\nc: 2024-01-01\nd: 2_17\ne: true\nf: 0x10\n") == {
        "a": "yes", "b": "off", "c": "2024-01-01", "d": "2_17", "e": True, "f": 16}


def test_encode_errors_name_the_path(tok):
    doc = {"on": "push", "jobs": {"build": {"runs-on": "x", "steps": [{"run": "a"}, {"run": "b"}, {"run": "c"}, {"uses": 3}]}}}
    with pytest.raises(SchemaEncodeError) as info:
        tok.encode(json.dumps(doc))
    assert str(info.value) == "jobs.build.steps[3].uses: expected string, got integer"
    with pytest.raises(SchemaEncodeError, match=r"^jobs.build: missing required key 'runs-on'"):
        tok.encode_value({"on": "push", "jobs": {"build": {"steps": [{"run": "a"}]}}})
    with pytest.raises(SchemaEncodeError, match=r"steps\[0\]: this combination of keys"):
        tok.encode_value({"on": "push", "jobs": {"b": {"runs-on": "x", "steps": [{"run": "a", "uses": "b"}]}}})
    with pytest.raises(DocumentParseError):
        tok.encode("on: [unclosed\n")


def test_decode_errors_give_the_token_position(tok):
    ids = tok.encode(json.dumps(QUICKSTART))
    with pytest.raises(SchemaDecodeError) as info:
        tok.decode(ids[:-3])
    assert info.value.position == len(ids) - 3
    with pytest.raises(SchemaDecodeError, match="token 0"):
        tok.decode([tok.pad_id])


def test_decode_prefix_returns_the_partial_document(tok):
    ids = tok.encode(json.dumps(QUICKSTART))
    partial, complete = tok.decode_prefix(ids[:6])
    assert complete is False and partial["name"] == "CI" and partial["on"] == "push"
    doc, complete = tok.decode_prefix(ids + [tok.pad_id])
    assert complete is True and doc == QUICKSTART
    assert tok.decode_prefix([]) == ({}, False)  # the root is an object: it opens at once


def test_stream_and_allowed_next_agree(tok):
    ids = tok.encode(json.dumps(QUICKSTART))
    d = tok.stream()
    for t in ids:
        assert d.allowed()[t] and tok.allowed_next(ids[: d.pos])[t]
        d.feed(t)
    assert d.done and d.result == QUICKSTART


def test_shipped_vocabulary(tok):
    v = tok.vocab
    assert v.size == 8192 and len(v.dictionary) > 500 and len(v.merges) > 3000
    assert tok.fingerprint().startswith("schema-github-workflow-")
    assert len(tok.encode(json.dumps(QUICKSTART))) < 30


def test_other_schemas_work_without_training(tmp_path):
    schema = {"type": "object", "properties": {"version": {"enum": [1, 2]}, "items": {"type": "array",
              "items": {"type": ["string", "integer"], "pattern": "^[a-z]+$"}}}, "required": ["version"],
              "additionalProperties": False}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schema))
    tok = SchemaTokenizer(path)
    doc = {"version": 2, "items": ["abc", 7]}
    assert tok.decode_value(tok.encode(json.dumps(doc)))[0] == doc
    with pytest.raises(SchemaEncodeError, match=r"items\[0\]: 'ABC' does not match"):
        tok.encode_value({"version": 1, "items": ["ABC"]})


def test_config_and_bad_names_are_user_errors():
    reg = Registry()
    plugin.trainframe_register(reg)
    comp = reg.get("tokenizer", "schema")
    cfg = comp.config(**{"schema": "github-workflow"})
    assert cfg.schema_name == "github-workflow"
    with pytest.raises(UserError, match="tokenizer.schema: schema 'nope'"):
        comp.factory(comp.config(**{"schema": "nope"}))
    with pytest.raises(UserError, match="tokenizer.vocab: missing.json: no such file"):
        comp.factory(comp.config(vocab="missing.json"))
    assert "tokenizer check" in reg.commands and "schema" in reg.components["tokenizer_trainer"]


@pytest.mark.skipif("tct" in BACKENDS, reason="the tct wheel is installed")
def test_tct_without_the_wheel_says_how_to_install():
    with pytest.raises(UserError) as info:
        build_tct_tokenizer(TctConfig())
    msg = str(info.value)
    assert msg == INSTALL_HINT and "\n" not in msg
    assert "pip install path/to/tct_github_workflow-*.whl" in msg and "{name: schema}" in msg
