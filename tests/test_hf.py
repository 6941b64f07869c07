"""trainframe <-> Hugging Face transformers: `export --format hf` loads in stock transformers with the
same logits and greedy tokens for every mapped architecture; what does not map is one line."""

import json

import pytest
import torch
from support import TINY_YAML, train_tiny_run

from trainframe.cli import main
from trainframe.runs import load_run_model
from trainframe.config import load_config
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
    return train_tiny_run(tmp_path, name, *overrides, steps=steps)


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no temporary export left


# ------------------------------------------------------------------------------ model.init_from
def save_hf_model(path, kind: str, **extra):
    """A tiny random transformers checkpoint of the byte tokenizer's vocab, norms with gains != 1."""
    config_cls = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config}[kind]
    config = config_cls(vocab_size=258, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                        rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=256, pad_token_id=257, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model


INIT_FROM = {
    "llama-swiglu-gqa": ("llama", {}),
    "qwen3-tied-theta": ("qwen3", {"tie_word_embeddings": True, "rope_parameters": {"rope_type": "default",
                                                                                   "rope_theta": 5e5}}),
    "llama-relu2": ("llama", {"hidden_act": "relu2"}),
}


@pytest.mark.parametrize("name", list(INIT_FROM))
def test_init_from_transformers_checkpoint(name, tmp_path):
    from trainframe.model import ModelConfig, build_model

    kind, extra = INIT_FROM[name]
    hf = save_hf_model(tmp_path / "hf", kind, **extra)
    cfg = ModelConfig(init_from=str(tmp_path / "hf"))
    assert (cfg.d_model, cfg.n_kv_head, cfg.norm_weight, cfg.norm_eps, cfg.context) == (64, 2, True, 1e-5, 64)
    assert cfg.qk_norm == (kind == "qwen3") and cfg.mlp == ("gated_relu2" if "relu2" in name else "swiglu")
    model = build_model(cfg, 258).eval()
    x = torch.randint(0, 258, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(x) - hf(x).logits).abs().max().item()
    print(f"init_from {name}: max |logit diff| {diff:.2e}")
    assert diff < 1e-4

    # a short trainframe run continues from it: its first loss is the checkpoint's, and it falls
    run = train_run(tmp_path, "run", f"model={{name: gpt, init_from: {tmp_path / 'hf'}, context: 32}}", steps=25)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    first_x, first_y = next(iter(_first_batch(run)))
    with torch.no_grad():
        start = hf(first_x).logits.flatten(0, 1).log_softmax(-1).gather(1, first_y.reshape(-1, 1)).mean().neg()
    assert losses[0] == pytest.approx(start.item(), abs=1e-3)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5

    # and exports back: the export does not depend on the checkpoint it started from
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--format", "hf"]) == 0
    assert json.loads((out / "trainframe.json").read_text())["model"]["init_from"] is None
    (tmp_path / "hf" / "model.safetensors").unlink()
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    _, _, ours = load_export(out)
    with torch.no_grad():
        assert (ours(x[:, :32]) - back(x[:, :32]).logits).abs().max().item() < 1e-4


def _first_batch(run):
    """The run's first training batch, as its seed draws it."""
    from trainframe.engine.build import build_dataset, build_tokenizer

    plugins = current()
    cfg = load_config(run / "config.yaml", [], plugins.registry)
    dataset = build_dataset(cfg, plugins, build_tokenizer(cfg, plugins), 32)
    yield dataset.next_batch(cfg.trainer.batch_size)[:2]


@pytest.mark.parametrize("change, reason", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope scaling 'yarn'"),
    ({"attention_bias": True}, "attention_bias/mlp_bias"),
    ({"use_sliding_window": True, "sliding_window": 16}, "sliding-window attention"),
    ({"head_dim": 32}, "head_dim 32 with hidden_size 64"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not a family trainframe reads"),
])
def test_unmappable_checkpoint_is_one_line(change, reason, tmp_path, capsys):
    save_hf_model(tmp_path / "hf", "qwen3")
    config_file = tmp_path / "hf" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    capsys.readouterr()  # transformers' progress bar
    path = tmp_path / "run.yaml"
    path.write_text(TINY_YAML.replace("model: {name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32}",
                                      f"model: {{name: gpt, init_from: {tmp_path / 'hf'}, context: 32}}"))
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and ("no trainframe equivalent" in err or "not a family" in err)
    assert len(err.splitlines()) == 1


def test_init_from_bad_input_is_one_line(tmp_path, capsys):
    save_hf_model(tmp_path / "hf", "llama")
    capsys.readouterr()
    path = tmp_path / "run.yaml"
    model_line = "model: {name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32}"
    for model, reason in [
        (f"{{name: gpt, init_from: {tmp_path / 'missing'}}}", "no such directory"),
        (f"{{name: gpt, init_from: {tmp_path}}}", "no config.json (not a Hugging Face checkpoint directory)"),
        (f"{{name: gpt, init_from: {tmp_path / 'hf'}, preset: tiny}}", "leave preset out"),
        (f"{{name: gpt, init_from: {tmp_path / 'hf'}, n_layer: 3}}", "n_layer is 3 but init_from"),
    ]:
        path.write_text(TINY_YAML.replace(model_line, f"model: {model}"))
        assert main(["config", "validate", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert reason in err and len(err.splitlines()) == 1, err
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "weights.bin")
    path.write_text(TINY_YAML.replace(model_line, f"model: {{name: gpt, init_from: {tmp_path / 'hf'}, context: 32}}"))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no model.safetensors" in err and "only safetensors weights are read" in err and len(err.splitlines()) == 1
