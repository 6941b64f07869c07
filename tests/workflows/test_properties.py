"""Property tests: any token stream decodes to a schema-valid document or fails with a position;
walks guided by allowed_next always stay decodable."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainframe_workflows.schema_tokenizer import SchemaDecodeError
from trainframe_workflows.schema_tokenizer.vocab import END, N_CHOICE

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Mostly small choice tokens and END (the structure), some content and dictionary ids, any id at all.
token = st.one_of(
    st.integers(0, 6), st.integers(0, N_CHOICE - 1), st.just(END),
    st.integers(65, 400), st.integers(0, 8191),
)


def _check_decode(tok, validator, ids):
    try:
        doc, consumed = tok.decode_value(ids)
    except SchemaDecodeError as e:
        assert 0 <= e.position <= len(ids)
        assert f"token {e.position}" in str(e)
        return None
    assert 0 < consumed <= len(ids)
    errors = list(validator.iter_errors(doc))
    assert errors == [], errors[0].message
    return doc


@SETTINGS
@given(ids=st.lists(token, max_size=300))
def test_random_streams_decode_valid_or_raise_with_position(tok, validator, ids):
    _check_decode(tok, validator, ids)


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_mutated_real_encodings_decode_valid_or_raise(tok, validator, encoded, data):
    valid = [ids for _, _, ids, ok in encoded if ok and len(ids) < 1500]
    ids = list(data.draw(st.sampled_from(valid)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(ids) - 1))
        ids[i] = data.draw(token)
    cut = data.draw(st.integers(0, len(ids)))
    _check_decode(tok, validator, ids[:cut] if data.draw(st.booleans()) else ids)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_allowed_next_walks_always_decode_to_valid_documents(tok, validator, data):
    d = tok.stream()
    ids = []
    close_bias = data.draw(st.floats(0.3, 0.7))
    while not d.done and len(ids) < 600:
        mask = d.allowed()
        choices = np.flatnonzero(mask)
        assert len(choices) > 0, f"dead end after {ids}"
        closers = [t for t in (0, END) if mask[t]]
        if closers and data.draw(st.floats(0, 1)) < close_bias:
            t = closers[0]
        else:
            t = int(choices[data.draw(st.integers(0, len(choices) - 1))])
        d.feed(t)
        ids.append(t)
    if d.done:
        doc = _check_decode(tok, validator, ids)
        assert doc == d.result
        assert tok.allowed_next(ids)[tok.pad_id]  # after a complete document only PAD
    else:  # an unfinished walk is still a valid prefix
        partial, complete = tok.decode_prefix(ids)
        assert complete is False


@pytest.mark.slow
def test_allowed_next_agrees_with_decoding(tok, encoded):
    """Every token of real encodings is allowed by the mask computed from its prefix."""
    ids = next(ids for _, _, ids, ok in encoded if ok and 200 < len(ids) < 600)
    for i in range(len(ids)):
        mask = tok.allowed_next(ids[:i])
        assert mask.dtype == bool and mask.shape == (tok.vocab_size(),)
        assert mask[ids[i]], f"token {i} ({ids[i]}) not allowed"
    assert not tok.allowed_next(ids)[0]


@pytest.mark.slow
def test_disallowed_tokens_are_rejected_by_decode(tok, encoded):
    ids = next(ids for _, _, ids, ok in encoded if ok and len(ids) > 50)
    prefix = ids[:40]
    mask = tok.allowed_next(prefix)
    bad = int(np.flatnonzero(~mask)[0])
    with pytest.raises(SchemaDecodeError) as info:
        tok.decode_value(prefix + [bad])
    assert info.value.position == 40
