"""Round trip on the whole shared corpus, and encode failures exactly where the schema says no."""

import json

import pytest
from trainframe_workflows.schema_tokenizer import SchemaEncodeError
from trainframe_workflows.cli import same_json


pytestmark = pytest.mark.slow  # every test reads the whole shared corpus


def test_corpus_counts_match_the_pinned_schema(encoded):
    assert len(encoded) == 873
    assert sum(valid for *_, valid in encoded) == 857  # check-jsonschema 0.39.0, as documented


def test_every_schema_valid_workflow_round_trips(tok, encoded):
    failures = []
    for name, doc, ids, valid in encoded:
        if not valid:
            continue
        if isinstance(ids, Exception):
            failures.append(f"{name}: {ids}")
            continue
        back, consumed = tok.decode_value(ids)
        if consumed != len(ids) or not same_json(back, doc):
            failures.append(f"{name}: decoded document differs")
    assert failures == []


def test_invalid_workflows_fail_with_a_path(encoded):
    invalid = [(name, ids) for name, _, ids, valid in encoded if not valid]
    assert len(invalid) == 16
    for name, err in invalid:
        assert isinstance(err, SchemaEncodeError), name
        # "jobs.x.strategy: missing required key 'matrix'" names a place inside the document
        assert err.path and str(err).startswith(str(err.path[0])), str(err)


def test_decode_returns_json_text_and_counts(tok, corpus):
    _, text, doc = corpus[0]
    ids = tok.encode(text)
    js, consumed, total = tok.decode(ids + [tok.pad_id] * 5)
    assert json.loads(js) == doc
    assert consumed == len(ids) and total == len(ids) + 5


def test_tokens_stay_in_range(tok, encoded):
    for _, _, ids, valid in encoded[:200]:
        if valid:
            assert all(0 <= t < tok.vocab_size() - 2 for t in ids)
