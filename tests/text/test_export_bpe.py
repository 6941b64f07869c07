"""The text plugin's BPE tokenizer in exports: its tokenizer.json travels with a trainframe export and
becomes the tokenizer of a transformers one."""

import json

import pytest
import torch
from support import SHAKESPEARE, train_tiny_run

from trainframe.cli import main
from trainframe.export import export_run, load_export


def test_tokenizer_files_travel_with_the_export(tmp_path):
    """A tokenizer configured with a file (a BPE tokenizer.json) is copied into the export, and the
    export loads after the original file is gone and the export has moved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = (tmp_path / "corpus.txt")
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    tok.train([str(text)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok_file = tmp_path / "tokenizer.json"
    tok.save(str(tok_file))
    run = train_tiny_run(tmp_path, "bpe", f"tokenizer={{name: bpe, path: {tok_file}}}", f"data.path={text}",
                    "trainer.max_steps=4", "trainer.save_every=0", steps=12, save_every=6)
    out = tmp_path / "export"
    export_run(run, "latest", out)
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == tok_file.read_bytes()
    assert json.loads((out / "config.json").read_text())["tokenizer_files"] == ["path"]
    tok_file.unlink()
    moved = out.rename(tmp_path / "moved")
    _, tokenizer, _ = load_export(moved)
    assert tokenizer.decode(tokenizer.encode("the lazy fox")) == "the lazy fox"



@pytest.mark.slow
def test_hf_export_bpe_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from trainframe_text.bpe import save_atomic, train_bpe

    corpus = SHAKESPEARE.read_text()[:200_000]
    tok_file = tmp_path / "tokenizer.json"
    save_atomic(train_bpe(iter(corpus.split("\n\n")), 400), tok_file)
    run = train_tiny_run(tmp_path, "bpe", f"tokenizer={{name: bpe, path: {tok_file}}}", "model.mlp=gated_relu2", steps=6)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out), "--format", "hf"]) == 0
    assert (out / "tokenizer.json").read_bytes() == tok_file.read_bytes()
    assert not (out / "tokenizer").exists()  # trainframe's run_config points at the same tokenizer.json
    tok_file.unlink()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    cfg, ours_tok, model = load_export(out)
    text = corpus[5000:5600]
    assert tok(text).input_ids == ours_tok.encode(text)
    assert tok.decode(tok(text).input_ids) == ours_tok.decode(ours_tok.encode(text)) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    x = torch.randint(0, 400, (2, 32))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() < 1e-4
