"""The GPT model package: config/presets, forward, loss, KV-cache generation, accounting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from trainframe.model import GPT, PRESETS, KVCache, ModelConfig, build_model, sample_next

VOCAB = 97


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny", **overrides), VOCAB).eval()


def meta_model(preset: str, vocab: int = 1000) -> GPT:
    with torch.device("meta"):  # no memory, no init cost: fine for counting
        return build_model(ModelConfig(preset=preset), vocab)


# ---- config ------------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_fully(name):
    cfg = ModelConfig(preset=name)
    for field in ("d_model", "n_layer", "n_head", "n_kv_head", "mlp", "mlp_hidden", "context",
                  "dropout", "qk_norm", "rope_theta", "tie_embeddings"):
        assert getattr(cfg, field) is not None, field
    assert ModelConfig(**cfg.model_dump()) == cfg  # idempotent
    assert meta_model(name).num_params() > 0


def test_explicit_null_on_n_kv_head_derives_it():
    # explicit null means "derive it" for n_kv_head, overriding the preset's 8
    assert ModelConfig(preset="tritter-1b", n_kv_head=None).n_kv_head == 16


def test_defaults_and_derived_fields():
    cfg = ModelConfig(d_model=96, n_layer=1, n_head=3, context=16)
    assert (cfg.mlp, cfg.mlp_hidden, cfg.n_kv_head, cfg.dropout, cfg.qk_norm) == ("relu2", 384, 3, 0.0, False)
    assert (cfg.rope_theta, cfg.tie_embeddings, cfg.vocab_size) == (10000.0, False, None)
    gated = ModelConfig(d_model=768, n_layer=1, n_head=12, context=16, mlp="gated_relu2")
    assert gated.mlp_hidden == 2048


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "tinny"}, "unknown model preset 'tinny' (did you mean 'tiny'?); known presets: tiny, tritter-100m"),
        ({"d_model": 100, "n_layer": 1, "n_head": 3, "context": 8}, "d_model (100) must be divisible by n_head (3)"),
        ({"d_model": 12, "n_layer": 1, "n_head": 4, "context": 8}, "head dim d_model/n_head = 3 must be even for RoPE"),
        ({"preset": "tiny", "n_kv_head": 3}, "n_kv_head (3) must divide n_head (4)"),
        ({"n_layer": 2}, "model needs d_model, n_head, context: set them or choose a preset"),
        ({"preset": "tiny", "d_model": 0}, "greater than 0"),
        ({"preset": "tiny", "dropout": 1.0}, "less than 1"),
        ({"preset": "tiny", "mlp": "geglu"}, "'relu2', 'gated_relu2' or 'swiglu'"),
        ({"preset": "tiny", "rope_theta": -1.0}, "greater than 0"),
        ({"preset": "tiny", "n_layers": 4}, "Extra inputs are not permitted"),
    ],
)
def test_bad_configs_raise_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError) as info:  # pydantic's ValidationError is a ValueError
        ModelConfig(**kwargs)
    assert isinstance(info.value, ValidationError)
    assert message in str(info.value)


def test_build_model_vocab_rules():
    assert build_model(ModelConfig(preset="tiny"), 300).config.vocab_size == 300
    assert build_model(ModelConfig(preset="tiny", vocab_size=320), 300).config.vocab_size == 320
    with pytest.raises(ValueError, match=r"model vocab_size \(256\) is smaller than the tokenizer's \(300\)"):
        build_model(ModelConfig(preset="tiny", vocab_size=256), 300)
    with pytest.raises(ValueError, match="vocab_size is not set"):
        GPT(ModelConfig(preset="tiny"))


# ---- sizes -------------------------------------------------------------------------------- #


def test_param_counts():
    t100 = meta_model("tritter-100m")
    assert 130e6 < t100.num_params() < 140e6  # tied 65536 x 768 table + 85M in blocks
    assert 84e6 < t100.num_block_params() < 86e6
    assert 1.2e9 < meta_model("tritter-1b").num_params() < 1.3e9


def test_flops_per_token_convention():
    m = tiny()
    c = m.config
    linear = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    assert m.flops_per_token() == 6 * linear + 12 * c.n_layer * c.d_model * c.context
    assert m.num_params(exclude_embedding=True) == m.num_params() - VOCAB * c.d_model


def test_optimizer_grouping_assumptions():
    # The optimizer decays p.ndim >= 2 except nn.Embedding: norms must hold no 2D params.
    m = tiny(qk_norm=True, tie_embeddings=True)
    embedding_ids = {id(p) for mod in m.modules() if isinstance(mod, torch.nn.Embedding) for p in mod.parameters()}
    for name, p in m.named_parameters():
        assert p.ndim == 2, name
        if name.startswith("wte"):
            assert id(p) in embedding_ids


def test_layer_names_are_stable():
    names = {n for n, _ in tiny(mlp="gated_relu2").named_parameters()}
    for suffix in ("attn.qkv", "attn.o", "mlp.up", "mlp.gate", "mlp.down"):
        assert f"blocks.1.{suffix}.weight" in names
    assert {"wte.weight", "lm_head.weight"} <= names
    assert "norm_f" in dict(tiny().named_modules())


def test_tied_embeddings_share_storage():
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight is m.wte.weight
    assert m.lm_head.weight.data_ptr() == m.wte.weight.data_ptr()
    assert m.num_params() == tiny(tie_embeddings=False).num_params() - VOCAB * 64


# ---- forward and loss --------------------------------------------------------------------- #


def test_forward_shapes_and_dtype():
    m = tiny()
    idx = torch.randint(0, VOCAB, (3, 17))
    logits = m(idx)
    assert logits.shape == (3, 17, VOCAB) and logits.dtype == torch.float32
    with pytest.raises(ValueError, match="exceeds the model context"):
        m(torch.zeros(1, 129, dtype=torch.long))


def test_loss_ignores_minus_one_targets():
    m = tiny()
    idx = torch.randint(0, VOCAB, (2, 12))
    targets = torch.randint(0, VOCAB, (2, 12))
    targets[0, :5] = -1
    targets[1, -3:] = -1
    logits = m(idx)
    keep = targets != -1
    manual = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(m(idx, targets), manual)
    per_token = m(idx, targets, reduction="none")
    assert per_token.shape == (2, 12)
    assert torch.all(per_token[~keep] == 0)
    torch.testing.assert_close(per_token[keep], F.cross_entropy(logits[keep], targets[keep], reduction="none"))
    torch.testing.assert_close(m(idx, targets, reduction="sum"), per_token.sum())
    # a fully ignored batch gives 0, not NaN
    assert m(idx, torch.full_like(targets, -1)).item() == 0.0


def test_loss_under_bf16_autocast_is_finite_float():
    m = tiny()
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(idx, idx)
        logits = m(idx)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert logits.dtype == torch.float32
    assert abs(loss.item() - m(idx, idx).item()) < 0.05


def test_backward_reaches_every_parameter():
    m = tiny(mlp="gated_relu2", qk_norm=True, n_kv_head=2).train()
    idx = torch.randint(0, VOCAB, (2, 10))
    m(idx, idx).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_head": 2}, {"n_kv_head": 1}, {"mlp": "gated_relu2"}, {"qk_norm": True},
     {"tie_embeddings": True}, {"mlp": "gated_relu2", "qk_norm": True, "n_kv_head": 2, "dropout": 0.1}],
)
def test_causal(overrides):
    # Changing a future token must not change earlier logits (eval: dropout off).
    m = tiny(**overrides)
    idx = torch.randint(0, VOCAB, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % VOCAB
    a, b = m(idx), m(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_dropout_active_only_in_training():
    m = tiny(dropout=0.5)
    idx = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(m(idx), m(idx))
    m.train()
    assert not torch.allclose(m(idx), m(idx))


def test_meta_init_then_materialise():
    with torch.device("meta"):
        m = build_model(ModelConfig(preset="tiny"), VOCAB)
    m.to_empty(device="cpu")
    m.init_weights()
    ref = tiny()
    torch.testing.assert_close(m.rope_cos, ref.rope_cos)
    assert torch.isfinite(m(torch.randint(0, VOCAB, (1, 8)))).all()


# ---- generation --------------------------------------------------------------------------- #


def greedy_without_cache(m: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    out = idx
    for _ in range(n):
        nxt = m(out[:, -m.config.context:])[:, -1].argmax(-1)
        out = torch.cat((out, nxt[:, None]), dim=1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 2, "mlp": "gated_relu2", "qk_norm": True}])
def test_kv_cache_greedy_matches_full_recompute(overrides):
    m = tiny(context=32, **overrides)
    idx = torch.randint(0, VOCAB, (3, 7))
    # 40 new tokens: crosses the 32-token context, so the sliding window path is covered too
    cached = m.generate(idx, 40, temperature=0)
    assert cached.shape == (3, 47)
    assert torch.equal(cached, greedy_without_cache(m, idx, 40))


def test_kv_cache_logits_match_full_forward():
    m = tiny()
    idx = torch.randint(0, VOCAB, (2, 10))
    cache = KVCache(m.config.n_layer, m.config.context)
    parts = [m(idx[:, :6], kv_cache=cache), m(idx[:, 6:7], kv_cache=cache), m(idx[:, 7:], kv_cache=cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), m(idx), rtol=1e-5, atol=1e-5)


def test_long_prompt_is_cropped_to_context():
    m = tiny(context=16)
    idx = torch.randint(0, VOCAB, (1, 40))
    out = m.generate(idx, 3, temperature=0)
    assert torch.equal(out[:, :40], idx)
    assert torch.equal(out, greedy_without_cache(m, idx, 3))


def test_sampling_is_reproducible_with_generator_and_restores_mode():
    m = tiny().train()
    idx = torch.randint(0, VOCAB, (2, 4))
    a = m.generate(idx, 10, temperature=0.8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = m.generate(idx, 10, temperature=0.8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and m.training


def test_eos_stops_and_pads_finished_rows():
    m = tiny()
    idx = torch.randint(0, VOCAB, (2, 4))
    first = m.generate(idx, 1, temperature=0)[:, -1]
    eos = int(first[0])
    out = m.generate(idx, 6, temperature=0, eos_id=eos)
    assert torch.all(out[0, 4:] == eos)
    if int(first[1]) != eos:
        assert out[1, 4] != eos
    # all rows finished at once: stops after one token
    assert m.generate(idx[:1], 6, temperature=0, eos_id=eos).shape == (1, 5)


def test_allowed_fn_constrains_tokens():
    m = tiny()
    idx = torch.randint(0, VOCAB, (2, 3))
    seen_lengths = []

    def allowed(tokens):
        seen_lengths.append(len(tokens))
        mask = torch.zeros(VOCAB, dtype=torch.bool)
        mask[10 + len(tokens) % 2] = True  # alternate between 10 and 11
        return mask

    out = m.generate(idx, 5, temperature=1.0, allowed_fn=allowed, generator=torch.Generator().manual_seed(0))
    assert out[:, 3:].tolist() == [[11, 10, 11, 10, 11]] * 2
    assert seen_lengths[:2] == [3, 3]
    # a short mask leaves the rest of the vocab disallowed; an empty one is an error
    out = m.generate(idx, 2, temperature=0, allowed_fn=lambda t: [False, False, True])
    assert torch.all(out[:, 3:] == 2)
    with pytest.raises(ValueError, match="allows no token for row 0"):
        m.generate(idx, 1, allowed_fn=lambda t: [False] * VOCAB)


def test_sample_next_top_k_top_p():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) <= {2, 3}
    # top_p just below p(3) keeps only the most likely token
    p3 = logits[0].softmax(-1)[3].item()
    assert set(sample_next(logits, 1.0, top_p=p3 - 1e-3, generator=g).tolist()) == {3}
    assert sample_next(logits, 0).tolist() == [3] * 200
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        tiny().generate(torch.zeros(1, 1, dtype=torch.long), 1, temperature=-1)


def test_gqa_fallback_matches_enable_gqa(monkeypatch):
    import trainframe.model.gpt as gpt

    m = tiny(n_kv_head=2)
    idx = torch.randint(0, VOCAB, (2, 9))
    native = m(idx)
    monkeypatch.setattr(gpt, "_HAS_ENABLE_GQA", False)  # torch < 2.5 path: repeat k/v heads
    torch.testing.assert_close(m(idx), native, rtol=1e-5, atol=1e-5)


def test_eager_attention_matches_sdpa():
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny", vocab_size=50, n_kv_head=2, qk_norm=True)
    sdpa = GPT(cfg).eval()
    eager = GPT(cfg.model_copy(update={"attention": "eager"})).eval()
    eager.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(eager(idx), sdpa(idx), rtol=1e-4, atol=1e-5)
    prompt = idx[:, :4]
    assert torch.equal(eager.generate(prompt, 8, temperature=0), sdpa.generate(prompt, 8, temperature=0))


def test_state_dict_with_separate_qkv_loads_into_fused_projection():
    # Checkpoints written before q, k and v were one matrix keep loading (GQA: k and v are narrower).
    src = tiny(n_head=4, n_kv_head=2)
    hd = src.config.head_dim
    old = {}
    for name, tensor in src.state_dict().items():
        if name.endswith("attn.qkv.weight"):
            q, k, v = tensor.split((4 * hd, 2 * hd, 2 * hd))
            base = name[: -len("qkv.weight")]
            old.update({f"{base}q.weight": q, f"{base}k.weight": k, f"{base}v.weight": v})
        else:
            old[name] = tensor
    dst = tiny(n_head=4, n_kv_head=2)
    dst.load_state_dict(old)
    idx = torch.randint(0, VOCAB, (2, 9))
    assert torch.equal(src(idx), dst(idx))

