"""The bpe tokenizer and `trainframe tokenizer train CONFIG` (the kind follows tokenizer.name)."""

import pytest
from textdata import SHAKESPEARE, cli, trained_bpe, write_config  # noqa: F401 (a fixture)
from trainframe_text.bpe import SPECIALS, load_bpe

from trainframe.errors import UserError


def test_trained_tokenizer_round_trips_and_has_specials(bpe_path):
    tok = load_bpe(bpe_path)
    assert tok.vocab_size() == 512
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    text = "ROMEO:\nBut soft, what light through yonder window breaks? ünïcödé ✓ 123456"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    english = "But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
    assert len(tok.encode(english)) < len(english) / 2  # merges learned: far fewer tokens than bytes
    assert not set(ids) & {0, 1, 2}  # specials never come from text
    assert tok.encode("".join(SPECIALS)) != [0, 1, 2]
    assert tok.fingerprint().startswith("bpe-")


def test_train_reports_held_out_rate_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "tok.json"
    config = write_config(tmp_path, [{"files": [str(SHAKESPEARE)]}], out)
    assert cli("tokenizer", "train", config, "--vocab-size", 300, "--sample-mb", 0.3) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {out}: vocab 300;") and "bytes per token on" in line
    before = out.read_bytes()
    assert cli("tokenizer", "train", config, "--vocab-size", 300) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_train_errors_are_one_line(tmp_path, capsys):
    config = write_config(tmp_path, [{"files": [str(tmp_path / "missing-*.txt")]}], tmp_path / "t.json")
    assert cli("tokenizer", "train", config, "--vocab-size", 300) == 2
    assert capsys.readouterr().err.strip() == f"data.sources[0].files: no file matches '{tmp_path / 'missing-*.txt'}'"
    assert cli("tokenizer", "train", config, "--vocab-size", 100) == 2
    assert "--vocab-size: expected 260" in capsys.readouterr().err
    assert cli("tokenizer", "train", "--kind", "bpe") == 2
    assert "--kind bpe: give a run CONFIG" in capsys.readouterr().err


def test_missing_tokenizer_file_names_the_command(tmp_path):
    with pytest.raises(UserError, match=r"tokenizer.path: .*nope.json: no such file; train one with"):
        load_bpe(tmp_path / "nope.json")


def test_batch_encoding_by_pieces_equals_whole_text_encoding(bpe_path):
    """The prepare path encodes each distinct pre-split piece once; it must give exactly the ids
    that encoding each whole text gives, on real text and on awkward Unicode."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    tok = load_bpe(bpe_path)
    assert tok._split is not None

    def whole(texts):
        return [tok._tok.encode(t, add_special_tokens=False).ids for t in texts]

    rows = [p for p in SHAKESPEARE.read_text().split("\n\n")[:400] if p]
    rows += ["<|eos|> inside text", "tabs\tand\r\nCRLF  \n\n  ", "naïve café 東京 ١٢٣٤ 12345 \u2028\x85\xa0end", ""]
    assert tok.encode_batch(rows) == whole(rows)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.text(max_size=40), max_size=5))
    def check(texts):
        assert tok.encode_batch(texts) == whole(texts)

    check()
