"""``ModelConfig``, the config of the ``gpt`` model, and the core's named presets.

A preset is a partial ModelConfig; fields the user sets win. The merge happens before field
validation, so a validated ModelConfig is always complete: preset expanded, derived fields
(``n_kv_head``, ``mlp_hidden``) filled; only ``vocab_size`` may stay None (the tokenizer's).

Plugins add presets with ``registry.add_model_preset`` (the workflow-model family comes from the
workflows plugin); they are known wherever a config is validated against the registry (run
configs, or ``ModelConfig.model_validate(data, context={"registry": registry})``). Parameter counts
for every preset are in docs/models.md (computed by building each preset on the meta device).
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from trainframe.config import ComponentConfig

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

# Fields where an explicit ``null`` means something (derive it / take the tokenizer's); for every
# other field an explicit null just means "not given", so the preset or default applies.
_NULL_MEANINGFUL = ("n_kv_head", "mlp_hidden", "vocab_size", "bitlinear_group_size")
_REQUIRED = ("d_model", "n_layer", "n_head", "context")


def presets(registry=None) -> dict[str, dict[str, Any]]:
    """Every known preset: the core's and, given a registry, those its plugins registered
    (``registry.add_model_preset``; the core registers its own the same way)."""
    return {**PRESETS, **(registry.model_presets if registry is not None else {})}


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


class ModelConfig(ComponentConfig):
    """Config of the ``gpt`` model. Pick a ``preset`` and override any field, or give them all."""

    preset: str | None = Field(None, description="named preset (docs/models.md); explicit fields override it")
    d_model: int = Field(gt=0, description="residual stream width")
    n_layer: int = Field(gt=0, description="number of transformer blocks")
    n_head: int = Field(gt=0, description="query heads; d_model / n_head must be even")
    n_kv_head: int | None = Field(None, gt=0, description="key/value heads (GQA); null = n_head")
    mlp: Literal["relu2", "gated_relu2", "swiglu"] = Field(
        "relu2", description="MLP kind: relu2, gated_relu2 or swiglu (gated SiLU, as in Llama)"
    )
    mlp_hidden: int | None = Field(
        None, gt=0, description="MLP hidden width; null = 4*d_model (relu2), 8/3*d_model up to x256 (gated)"
    )
    context: int = Field(gt=0, description="maximum sequence length")
    vocab_size: int | None = Field(None, gt=0, description="null = the tokenizer's vocab size")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="attention and residual dropout")
    qk_norm: bool = Field(False, description="RMSNorm on queries and keys per head")
    rope_theta: float = Field(10000.0, gt=0.0, description="RoPE base")
    tie_embeddings: bool = Field(False, description="lm_head shares the token embedding matrix")
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="sdpa: fused kernels (flash attention on CUDA); eager: plain matmul-softmax, for debugging"
    )
    bitlinear: bool = Field(
        False, description="BitNet b1.58 block linears: ternary weights, 8-bit activations (docs/models.md)"
    )
    bitlinear_group_size: int | None = Field(
        64, gt=0, description="input features per BitLinear weight scale; null = one scale per output row"
    )
    norm_weight: bool = Field(
        False, description="RMSNorms (QK-norm included) get a learned per-channel gain, as in Llama/Qwen3"
    )
    norm_eps: float = Field(1e-6, gt=0.0, lt=1.0, description="epsilon of every RMSNorm")
    init_from: str | None = Field(
        None, description="a Hugging Face Llama/Qwen3/Arcee checkpoint directory: its config sets the shape, "
                          "its weights the initial weights (docs/models.md)"
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data: Any, info: ValidationInfo) -> Any:
        """The preset's fields (or init_from's checkpoint's), then the fields given."""
        if not isinstance(data, dict):
            return data
        given = {k: v for k, v in data.items() if v is not None or k in _NULL_MEANINGFUL}
        preset = data.get("preset")
        values: dict[str, Any] = {}
        known = presets((info.context or {}).get("registry"))
        if isinstance(preset, str):
            if preset not in known:
                close = difflib.get_close_matches(preset, list(known), n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown model preset '{preset}'{hint}; known presets: {', '.join(known)}")
            values.update(known[preset])
        if isinstance(data.get("init_from"), str):
            values.update(_from_checkpoint(data["init_from"], preset, given))
        values.update(given)
        missing = [name for name in _REQUIRED if values.get(name) is None]
        if missing:
            raise ValueError(
                f"model needs {', '.join(missing)}: set {'it' if len(missing) == 1 else 'them'} "
                f"or choose a preset ({', '.join(known)})"
            )
        return values

    @model_validator(mode="after")
    def _derive(self) -> ModelConfig:
        # Checked here so a bad combination fails at config load, not at build.
        d, h = self.d_model, self.n_head
        if d % h:
            raise ValueError(f"d_model ({d}) must be divisible by n_head ({h})")
        if (d // h) % 2:
            raise ValueError(f"head dim d_model/n_head = {d // h} must be even for RoPE")
        if self.n_kv_head is None:
            self.n_kv_head = h
        if h % self.n_kv_head:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({h})")
        if self.mlp_hidden is None:
            # Gated MLPs have three matrices, so 8/3*d keeps the parameter count of a 4*d relu2 MLP
            # (rounded up to 256 for matmul-friendly shapes, LLaMA style; gives 2048/2816/5632
            # for the Tritter widths).
            self.mlp_hidden = 4 * d if self.mlp == "relu2" else _round_up(8 * d / 3, 256)
        group = self.bitlinear_group_size
        if self.bitlinear and group is not None:
            for what, width in (("d_model", d), ("mlp_hidden", self.mlp_hidden)):
                if width % group:
                    raise ValueError(f"bitlinear_group_size ({group}) must divide {what} ({width}); "
                                     "pick a divisor or null for one scale per output row")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def _from_checkpoint(path: str, preset: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The fields ``init_from``'s config.json sets; fields given alongside must agree with them,
    except those a continued run may change (context, dropout, attention, bitlinear)."""
    from trainframe.model.hf import INIT_FROM_FREE, fields_from_hf_dir

    if preset is not None:
        raise ValueError("init_from takes the model's shape from the checkpoint; leave preset out")
    fields = fields_from_hf_dir(path)
    for name in sorted(given):
        value = given[name]
        if name in fields and name not in INIT_FROM_FREE and value is not None and value != fields[name]:
            raise ValueError(f"{name} is {value!r} but init_from {path} has {fields[name]!r}; leave {name} out")
    return fields
