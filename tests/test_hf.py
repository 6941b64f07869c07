"""trainframe <-> Hugging Face transformers: `export --format hf` loads in stock transformers with the
same logits and greedy tokens for every mapped architecture; what does not map is one line."""

import json

import pytest
import torch
from support import SHAKESPEARE, TINY_YAML

from trainframe.cli import main
from trainframe.commands import load_run_model
from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.export import load_export
from trainframe.plugins import current

transformers = pytest.importorskip("transformers")

# name -> (overrides, the transformers class it becomes)
ARCHITECTURES = {
    "relu2": ([], "ArceeForCausalLM"),
    "gated_relu2-gqa": (["model.mlp=gated_relu2", "model.n_kv_head=1"], "LlamaForCausalLM"),
    "swiglu-tied": (["model.mlp=swiglu", "model.tie_embeddings=true", "model.norm_eps=1e-5"], "LlamaForCausalLM"),
    "qk_norm-gated_relu2-tied": (["model.mlp=gated_relu2", "model.qk_norm=true", "model.tie_embeddings=true"],
                                 "Qwen3ForCausalLM"),
    "qk_norm-swiglu-norm_weight": (["model.mlp=swiglu", "model.qk_norm=true", "model.norm_weight=true",
                                    "model.n_kv_head=1"], "Qwen3ForCausalLM"),
}


def train_run(tmp_path, name, *overrides, steps=6):
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY_YAML)
    plugins = current()
    cfg = load_config(path, [f"trainer.max_steps={steps}", f"trainer.save_every={steps}", *overrides],
                      plugins.registry)
    run_dir = tmp_path / name
    trainer = build_trainer(cfg, plugins, run_dir)
    trainer.run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    trainer.fit()
    return run_dir


def compare(model, hf, vocab: int, prompt: list[int]) -> tuple[float, bool]:
    """(max |logit difference| on random tokens, greedy continuations equal). Prompt and continuation
    stay within the context: past it trainframe slides its window and transformers does not."""
    x = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x) - hf(x).logits).abs().max().item()
        ids = torch.tensor([prompt])
        new = model.config.context - len(prompt)
        ours = model.generate(ids, new, temperature=0)
        theirs = hf.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=257)
    return diff, ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_hf_export_matches_transformers(arch, tmp_path, capsys):
    overrides, cls = ARCHITECTURES[arch]
    run = train_run(tmp_path, "run", *overrides)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out), "--format", "hf"]) == 0
    assert cls in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "trainframe.json", "run_config.yaml", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [cls] and "format" not in config  # transformers' config, not the manifest
    assert json.loads((out / "trainframe.json").read_text())["layout"] == "hf"

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == cls
    tok = transformers.AutoTokenizer.from_pretrained(out)
    _, ours_tok, model = load_run_model(run, "latest", "cpu")
    if model.config.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    diff, same_greedy = compare(model, hf, 258, ours_tok.encode("To be, or not"))
    print(f"{arch} ({cls}): max |logit diff| {diff:.2e}, greedy match {same_greedy}")
    assert diff < 1e-4 and same_greedy
    text = "To be, or not to be: <|eos|> that is the questión\n"
    assert tok(text).input_ids == ours_tok.encode(text)  # special names in text stay text, as in trainframe
    ids = ours_tok.encode(text) + [256, 257]
    assert tok.decode(ids, skip_special_tokens=True) == ours_tok.decode(ids) == text
    assert tok.eos_token_id == 256 and tok.pad_token_id == 257

    # trainframe reads the export too (generate, eval, load_export), with the run's outputs
    _, _, again = load_export(out)
    x = torch.randint(0, 258, (1, 32))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_hf_export_bpe_tokenizer(tmp_path):
    if "bpe" not in current().registry.components["tokenizer"]:
        pytest.skip("the text plugin's bpe tokenizer is not installed")
    from trainframe_text.bpe import save_atomic, train_bpe

    corpus = SHAKESPEARE.read_text()[:200_000]
    tok_file = tmp_path / "tokenizer.json"
    save_atomic(train_bpe(iter(corpus.split("\n\n")), 400), tok_file)
    run = train_run(tmp_path, "bpe", f"tokenizer={{name: bpe, path: {tok_file}}}", "model.mlp=gated_relu2")
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


@pytest.mark.parametrize("overrides, reason", [
    (["model.bitlinear=true", "model.bitlinear_group_size=16"], "BitLinear layers (ternary weights with a float "
                                                                 "scale per 16 inputs"),
    (["model.qk_norm=true"], "QK-norm with a non-gated relu2 MLP"),
])
def test_unmappable_model_is_one_line(overrides, reason, tmp_path, capsys):
    run = train_run(tmp_path, "run", *overrides, steps=2)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out), "--format", "hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1 and err.startswith("--format hf:")
    assert not out.exists()


def test_unmappable_tokenizer_and_flags(tmp_path, capsys):
    from trainframe.errors import UserError
    from trainframe.hf_export import _hf_tokenizer

    comp = current().registry.get("tokenizer", "schema") if "schema" in current().registry.components[
        "tokenizer"] else None
    if comp is not None:
        with pytest.raises(UserError, match="tokenizer 'schema' has no transformers form: it encodes a workflow"):
            _hf_tokenizer(comp.factory(comp.config.model_validate({})), "schema")
    with pytest.raises(UserError, match="no transformers form: object has no hf_tokenizer"):
        _hf_tokenizer(object(), "mine")

    run = train_run(tmp_path, "run", steps=2)
    assert main(["export", str(run), "--push-to-hub", "me/model"]) == 2
    assert "add --format hf" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "hf"]) == 2
    assert "--out: required" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "hf", "--push-to-hub", "not a repo"]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err


def test_push_to_hub_without_network_is_one_line(tmp_path, capsys, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    run = train_run(tmp_path, "run", steps=2)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out), "--format", "hf", "--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--push-to-hub me/tiny: upload failed" in err
    assert (out / "config.json").exists()  # the local export stays
    assert main(["export", str(run), "--format", "hf", "--push-to-hub", "me/tiny"]) == 2  # temp dir only
    assert "upload failed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run", "run.yaml"]
