"""The ``gpt`` model in the layouts of Hugging Face ``transformers``, both ways: config.json and
weight names for ``trainframe export --format hf``, and ``model.init_from`` for continued training.

trainframe architecture                  transformers class (no remote code)
  relu2 MLP (not gated)                    ArceeForCausalLM  (up_proj, down_proj; hidden_act relu2)
  gated_relu2 / swiglu MLP                 LlamaForCausalLM  (gate_proj, up_proj, down_proj; relu2 / silu)
  gated_relu2 / swiglu MLP with QK-norm    Qwen3ForCausalLM  (q_norm, k_norm before RoPE, as here)

Why no permutation of q and k: ``apply_rope`` rotates the pairs (x[i], x[i + head_dim/2]), the
"rotate half" layout of transformers' Llama family, with the same frequencies theta^(-2i/head_dim);
the fused ``qkv`` matrix is q, k and v by rows, each head-major, so it splits into q_proj, k_proj and
v_proj as they are. A weightless RMSNorm is an RMSNorm with gains of one (same eps).

Nothing here imports transformers: configs are JSON and weights safetensors, so exports and imports
work without it installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trainframe.errors import UserError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "arcee": "ArceeForCausalLM",
                 "mistral": "MistralForCausalLM"}
_GATED_ACTS = {"silu": "swiglu", "relu2": "gated_relu2"}  # hidden_act of a gated MLP -> model.mlp
# ModelConfig fields a run from an imported checkpoint may set differently from the checkpoint.
INIT_FROM_FREE = frozenset({"context", "dropout", "attention", "bitlinear", "bitlinear_group_size"})


def _relative(path) -> str:
    from trainframe.fileio import relative_note

    return relative_note(path)


# ------------------------------------------------------------------------------ trainframe -> HF
def hf_model_type(cfg) -> str:
    """The transformers family a resolved ModelConfig maps to; ValueError naming what does not map."""
    if cfg.bitlinear:
        raise ValueError("BitLinear layers (ternary weights with a float scale per "
                         f"{f'{cfg.bitlinear_group_size} inputs' if cfg.bitlinear_group_size else 'output row'}"
                         ", 8-bit activations) have no transformers equivalent; export with --format trainframe")
    if cfg.mlp == "relu2":
        if cfg.qk_norm:
            raise ValueError("QK-norm with a non-gated relu2 MLP: the transformers family with QK-norm (Qwen3) has "
                             "only gated MLPs, and the one with a non-gated relu2 MLP (Arcee) has no QK-norm")
        return "arcee"
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config(cfg, *, bos_id: int | None, eos_id: int | None, pad_id: int | None, dtype: str) -> dict[str, Any]:
    """config.json for ``AutoModelForCausalLM.from_pretrained``. rope_theta is written both the old
    way (transformers 4) and as rope_parameters (transformers 5)."""
    model_type = hf_model_type(cfg)
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.d_model // cfg.n_head,
        "hidden_act": "silu" if cfg.mlp == "swiglu" else "relu2",
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    if model_type == "qwen3":
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer,
                      layer_types=["full_attention"] * cfg.n_layer)
    return config


def to_hf_state(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """A gpt state dict (fused qkv) under transformers' names; tied embeddings stored once (as
    model.embed_tokens.weight), norms without a weight as gains of one."""
    hd = cfg.d_model // cfg.n_head
    nq, nkv = cfg.n_head * hd, cfg.n_kv_head * hd

    def norm(name: str, width: int) -> torch.Tensor:
        return state.get(f"{name}.weight", torch.ones(width))

    out = {"model.embed_tokens.weight": state["wte.weight"]}
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[f"{b}attn.qkv.weight"].split((nq, nkv, nkv))
        out |= {f"{h}self_attn.q_proj.weight": q, f"{h}self_attn.k_proj.weight": k,
                f"{h}self_attn.v_proj.weight": v, f"{h}self_attn.o_proj.weight": state[f"{b}attn.o.weight"]}
        if cfg.qk_norm:
            out[f"{h}self_attn.q_norm.weight"] = norm(f"{b}attn.q_norm", hd)
            out[f"{h}self_attn.k_norm.weight"] = norm(f"{b}attn.k_norm", hd)
        if cfg.mlp != "relu2":
            out[f"{h}mlp.gate_proj.weight"] = state[f"{b}mlp.gate.weight"]
        out[f"{h}mlp.up_proj.weight"] = state[f"{b}mlp.up.weight"]
        out[f"{h}mlp.down_proj.weight"] = state[f"{b}mlp.down.weight"]
        out[f"{h}input_layernorm.weight"] = norm(f"{b}attn_norm", cfg.d_model)
        out[f"{h}post_attention_layernorm.weight"] = norm(f"{b}mlp_norm", cfg.d_model)
    out["model.norm.weight"] = norm("norm_f", cfg.d_model)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


# ------------------------------------------------------------------------------ HF -> trainframe
def fields_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """ModelConfig fields of a transformers config.json; ValueError naming what does not map."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{where}: model_type {model_type!r} is not a family trainframe reads "
                         f"({', '.join(ARCHITECTURES)})")

    def bad(what: str) -> ValueError:  # "thing (why)" -> "thing has no trainframe equivalent (why)"
        thing, _, why = what.partition(" (")
        return ValueError(f"{where}: {thing} has no trainframe equivalent{f' ({why}' if why else ''}")

    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise bad("attention_bias/mlp_bias (trainframe's linears have no biases)")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    for spec in (rope, scaling or {}):
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind != "default":
            raise bad(f"rope scaling '{kind}' (trainframe's RoPE is unscaled)")
    if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise bad("partial_rotary_factor below 1 (trainframe rotates whole heads)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    if hf.get("use_sliding_window") or (model_type == "mistral" and hf.get("sliding_window") is not None) \
            or any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise bad("sliding-window attention (trainframe attends over the whole context)")
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // heads
    if head_dim * heads != d:
        raise bad(f"head_dim {head_dim} with hidden_size {d} and {heads} heads (trainframe's head dim is "
                  "hidden_size / heads)")
    act = hf.get("hidden_act", "silu")
    if model_type == "arcee":
        if act != "relu2":
            raise bad(f"an ungated MLP with hidden_act '{act}' (trainframe's is relu2)")
        mlp = "relu2"
    elif act in _GATED_ACTS:
        mlp = _GATED_ACTS[act]
    else:
        raise bad(f"a gated MLP with hidden_act '{act}' (trainframe has silu and relu2)")
    return {
        "vocab_size": hf["vocab_size"], "d_model": d, "n_layer": hf["num_hidden_layers"], "n_head": heads,
        "n_kv_head": hf.get("num_key_value_heads") or heads, "mlp": mlp, "mlp_hidden": hf["intermediate_size"],
        "context": hf["max_position_embeddings"], "rope_theta": float(theta),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "qk_norm": model_type == "qwen3", "norm_weight": True,
    }


def read_hf_config(path) -> dict[str, Any]:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ValueError(f"init_from: {path}: no such directory{_relative(path)}")
    file = directory / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"init_from: {path}: no config.json (not a Hugging Face checkpoint directory)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"init_from: {file}: unreadable ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or data.get("format") == "trainframe-export":
        raise ValueError(f"init_from: {file}: not a transformers config (a trainframe export in the trainframe "
                         "layout? export with --format hf)")
    return data


def fields_from_hf_dir(path) -> dict[str, Any]:
    try:
        return fields_from_hf(read_hf_config(path), f"init_from {path}")
    except KeyError as e:
        raise ValueError(f"init_from {path}: config.json lacks {e.args[0]}") from None


def from_hf_state(tensors: dict[str, torch.Tensor], cfg, where: str) -> dict[str, torch.Tensor]:
    """transformers' tensors -> a gpt state dict (q, k, v fused); UserError for missing or extra ones."""
    tensors = dict(tensors)

    def take(name: str) -> torch.Tensor:
        try:
            return tensors.pop(name)
        except KeyError:
            raise UserError(f"{where}: no tensor {name} (the weights do not fit config.json)") from None

    state = {"wte.weight": take("model.embed_tokens.weight")}
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        state[f"{b}attn.qkv.weight"] = torch.cat([take(f"{h}self_attn.{p}_proj.weight") for p in "qkv"])
        state[f"{b}attn.o.weight"] = take(f"{h}self_attn.o_proj.weight")
        if cfg.qk_norm:
            for p in "qk":
                _norm_into(state, f"{b}attn.{p}_norm", take(f"{h}self_attn.{p}_norm.weight"), cfg, where)
        if cfg.mlp != "relu2":
            state[f"{b}mlp.gate.weight"] = take(f"{h}mlp.gate_proj.weight")
        state[f"{b}mlp.up.weight"] = take(f"{h}mlp.up_proj.weight")
        state[f"{b}mlp.down.weight"] = take(f"{h}mlp.down_proj.weight")
        _norm_into(state, f"{b}attn_norm", take(f"{h}input_layernorm.weight"), cfg, where)
        _norm_into(state, f"{b}mlp_norm", take(f"{h}post_attention_layernorm.weight"), cfg, where)
    _norm_into(state, "norm_f", take("model.norm.weight"), cfg, where)
    head = tensors.pop("lm_head.weight", None)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    elif head is None:
        raise UserError(f"{where}: no tensor lm_head.weight and tie_word_embeddings is false")
    else:
        state["lm_head.weight"] = head
    extra = sorted(k for k in tensors if "rotary_emb" not in k)  # old checkpoints store inv_freq
    if extra:
        raise UserError(f"{where}: tensors trainframe has no place for: {', '.join(extra[:3])}"
                        f"{f' and {len(extra) - 3} more' if len(extra) > 3 else ''}")
    return state


def _norm_into(state: dict, name: str, weight: torch.Tensor, cfg, where: str) -> None:
    if cfg.norm_weight:
        state[f"{name}.weight"] = weight
    elif not torch.all(weight == 1):
        raise UserError(f"{where}: {name} has learned gains but model.norm_weight is false")


def read_hf_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory's model.safetensors (or its shards, by the index)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path).expanduser()
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            tensors = {}
            for shard in shards:
                tensors.update(load_file(str(directory / shard)))
            return tensors
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise UserError(f"model.init_from: {path}: unreadable weights ({str(e).splitlines()[0][:120]})") from None
    other = " (only safetensors weights are read; save it with safe_serialization)" if any(
        directory.glob("*.bin")) else ""
    raise UserError(f"model.init_from: {path}: no model.safetensors or model.safetensors.index.json{other}")


@torch.no_grad()
def load_hf_weights(model, path, tensors: dict[str, torch.Tensor] | None = None, where: str | None = None) -> None:
    """Copy a transformers checkpoint's weights (``path``, or ``tensors`` read from it) into ``model``."""
    where = where or f"model.init_from: {path}"
    if tensors is None:
        tensors = read_hf_tensors(path)
    dtype = model.wte.weight.dtype
    state = from_hf_state({k: v.to(dtype) for k, v in tensors.items()}, model.config, where)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UserError(f"{where}: the weights do not fit config.json ({lines[-1][:200]})") from None
