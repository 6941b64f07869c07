"""SchemaStore's own test documents and actionlint's test workflows as bad-input cases."""

import pytest
from trainframe_workflows.cli import same_json
from trainframe_workflows.schema_tokenizer import (
    DocumentParseError,
    SchemaEncodeError,
    SchemaTokenizer,
)
from wfdata import DATA, need_data


def _files(sub):
    need_data()
    folder = DATA / sub
    return sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml", ".json"))


def test_schemastore_positive_documents_round_trip(tok):
    files = _files("schema_tests/positive")
    assert len(files) == 37
    for f in files:
        text = f.read_text(encoding="utf-8")
        ids = tok.encode(text)
        assert same_json(tok.decode_value(ids)[0], tok.parse(text)), f.name


def test_schemastore_negative_documents_raise_with_a_path(tok, validator):
    rejected = 0
    for f in _files("schema_tests/negative"):
        text = f.read_text(encoding="utf-8")
        doc = tok.parse(text)
        if validator.is_valid(doc):
            # The pinned schema (check-jsonschema 0.39.0) is newer than these tests: a few
            # negatives became valid. They must then round-trip like any valid document.
            assert same_json(tok.decode_value(tok.encode(text))[0], doc), f.name
            continue
        with pytest.raises(SchemaEncodeError) as info:
            tok.encode(text)
        assert ": " in str(info.value), f.name
        rejected += 1
    assert rejected == 16


def test_a_schema_file_works_and_agrees_with_jsonschema():
    """Any schema path works: with the SchemaStore snapshot, encode fails exactly when jsonschema does."""
    import jsonschema

    snap = SchemaTokenizer(DATA / "github-workflow.schema.json")
    v = jsonschema.Draft7Validator(snap.schema)
    for f in _files("schema_tests/negative") + _files("schema_tests/positive"):
        text = f.read_text(encoding="utf-8")
        try:
            snap.encode(text)
            encoded = True
        except SchemaEncodeError:
            encoded = False
        assert encoded == v.is_valid(snap.parse(text)), f.name


@pytest.mark.parametrize("sub", ["actionlint_testdata/err", "actionlint_testdata/ok", "actionlint_testdata/examples"])
def test_actionlint_workflows_encode_or_raise_the_documented_errors(tok, validator, sub):
    outcomes = {"encoded": 0, "rejected": 0, "unparsable": 0}
    for f in _files(sub):
        text = f.read_text(encoding="utf-8")
        try:
            ids = tok.encode(text)
        except SchemaEncodeError:
            assert not validator.is_valid(tok.parse(text)), f.name
            outcomes["rejected"] += 1
            continue
        except DocumentParseError:
            outcomes["unparsable"] += 1
            continue
        assert validator.is_valid(tok.parse(text)), f.name
        assert same_json(tok.decode_value(ids)[0], tok.parse(text)), f.name
        outcomes["encoded"] += 1
    assert outcomes["encoded"] > 0 and outcomes["rejected"] > 0
