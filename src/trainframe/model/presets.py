"""Named model presets: a preset is a partial ModelConfig; fields the user sets win.

Parameter counts for every preset are in docs/models.md (computed by building each preset on the
meta device, see tests/test_model.py).
"""

from __future__ import annotations

from typing import Any

# Used for any field that neither the preset nor the user sets.
DEFAULTS: dict[str, Any] = {
    "n_kv_head": None,  # None = n_head (plain multi-head attention)
    "mlp": "relu2",
    "mlp_hidden": None,  # None = 4*d_model (relu2) or 8/3*d_model rounded up to 256 (gated_relu2)
    "vocab_size": None,  # None = the tokenizer's vocab size
    "dropout": 0.0,
    "qk_norm": False,
    "rope_theta": 10000.0,
    "tie_embeddings": False,
    "attention": "sdpa",
    "bitlinear": False,
    "bitlinear_group_size": 64,  # BitLinear weight scale per 64 input features; null = per output row
    "norm_weight": False,  # RMSNorm without a gain (a learned one for Llama/Qwen3 imports)
    "norm_eps": 1e-6,
    "init_from": None,  # a Hugging Face checkpoint directory to start from
}

# The workflow model trains on a small corpus, so the whole family keeps the dropout the issue
# gives for `small`. Untied embeddings: with an 8192 vocab the head is cheap and `small` lands
# on the intended ~20M only untied.
_WORKFLOW: dict[str, Any] = {"vocab_size": 8192, "mlp": "relu2", "dropout": 0.2, "tie_embeddings": False}

# Tritter: a BitNet b1.58 model (ternary block linears), gated relu^2, QK-norm for stability with
# ternary weights.
# Tied embeddings: a 65536 x 768 table is 50M parameters, so an untied head would be a third of
# the "100m" model; tying is the usual choice at this scale (SmolLM, Gemma).
_TRITTER: dict[str, Any] = {
    "vocab_size": 65536,
    "mlp": "gated_relu2",
    "dropout": 0.1,
    "qk_norm": True,
    "rope_theta": 10000.0,
    "tie_embeddings": True,
    "bitlinear": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and smoke runs; vocab comes from whatever tokenizer the run uses.
    "tiny": {"d_model": 64, "n_layer": 2, "n_head": 4, "context": 128, "vocab_size": None},
    "small": {**_WORKFLOW, "d_model": 384, "n_layer": 8, "n_head": 6, "context": 512},
    "medium-small": {**_WORKFLOW, "d_model": 512, "n_layer": 8, "n_head": 8, "context": 512},
    "medium-512": {**_WORKFLOW, "d_model": 768, "n_layer": 10, "n_head": 12, "context": 512},
    "medium": {**_WORKFLOW, "d_model": 768, "n_layer": 10, "n_head": 12, "context": 1024},
    "large-512": {**_WORKFLOW, "d_model": 1024, "n_layer": 12, "n_head": 16, "context": 512},
    "large": {**_WORKFLOW, "d_model": 1024, "n_layer": 12, "n_head": 16, "context": 1024},
    "tritter-100m": {
        **_TRITTER, "d_model": 768, "n_layer": 12, "n_head": 12, "mlp_hidden": 2048, "context": 2048,
    },
    "tritter-500m": {
        **_TRITTER, "d_model": 1024, "n_layer": 24, "n_head": 16, "mlp_hidden": 2816, "context": 4096,
    },
    "tritter-1b": {
        **_TRITTER, "d_model": 2048, "n_layer": 24, "n_head": 16, "n_kv_head": 8, "mlp_hidden": 5632,
        "context": 8192,
    },
}
