"""The schema tokenizer has no transformers form: `export --format hf` says so in one line."""

import pytest

from trainframe.errors import UserError
from trainframe.hf_export import _hf_tokenizer
from trainframe.plugins import current


def test_schema_tokenizer_has_no_transformers_form():
    comp = current().registry.get("tokenizer", "schema")
    with pytest.raises(UserError, match="tokenizer 'schema' has no transformers form: it encodes a workflow"):
        _hf_tokenizer(comp.factory(comp.config.model_validate({})), "schema")
