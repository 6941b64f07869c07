"""Fixtures for the workflow tokenizer tests: the shared corpus and one tokenizer per session."""

import json

import jsonschema
import pytest
import torch
from trainframe_workflows.schema_tokenizer import SchemaTokenizer
from trainframe_workflows.schema_tokenizer.yaml_loader import load_document
from wfdata import CORPUS, need_data


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tok():
    return SchemaTokenizer("github-workflow")


@pytest.fixture(scope="session")
def validator(tok):
    return jsonschema.Draft7Validator(tok.schema)


@pytest.fixture(scope="session")
def corpus():
    """[(name, yaml text, parsed document)] for the 873 shared workflows."""
    need_data()
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(f"{r['repo']}/{r['path']}", r["yaml"], load_document(r["yaml"])) for r in rows]


@pytest.fixture(scope="session")
def encoded(tok, corpus, validator):
    """[(name, document, tokens or the encode error, schema-valid)] for the whole corpus."""
    out = []
    for name, _, doc in corpus:
        try:
            ids = tok.encode_value(doc)
        except ValueError as e:
            ids = e
        out.append((name, doc, ids, validator.is_valid(doc)))
    return out
