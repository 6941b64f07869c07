"""The GPT decoder: config with presets, model, KV-cache generation.

Architecture (one block, pre-norm):  x += drop(attn(norm(x)));  x += drop(mlp(norm(x)))
  - RoPE positions, no learned position table.
  - RMSNorm without a learnable weight (see RMSNorm below).
  - attention: bias-free fused q/k/v projection and output projection, optional QK-norm, GQA via
    n_kv_head, causal SDPA; packed rows (``positions``) attend within each document only
    (FlexAttention on CUDA, a dense SDPA mask on the CPU).
  - MLP: relu^2 ``down(relu(up(x))^2)``, gated ``down(relu(gate(x))^2 * up(x))`` or SwiGLU
    ``down(silu(gate(x)) * up(x))``.
  - final norm, then lm_head (optionally tied to the token embedding).

Every block linear is built by one factory (``GPT(cfg, linear=...)``) so that swapping them for
BitLinear layers is a one-place change; the embedding and lm_head stay full precision.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from trainframe.config import ComponentConfig
from trainframe.model.bitlinear import bitlinear_factory
from trainframe.model.loss import chunked_cross_entropy
from trainframe.model.presets import DEFAULTS, PRESETS

LinearFactory = Callable[[int, int], nn.Module]

# Fields where an explicit ``null`` means something (derive it / take the tokenizer's); for every
# other field an explicit null just means "not given", so the preset or default applies.
_NULL_MEANINGFUL = ("n_kv_head", "mlp_hidden", "vocab_size", "bitlinear_group_size")
_REQUIRED = ("d_model", "n_layer", "n_head", "context")


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


class ModelConfig(ComponentConfig):
    """Config of the ``gpt`` model. Pick a ``preset`` and override any field, or give them all."""

    preset: str | None = Field(None, description="named preset (docs/models.md); explicit fields override it")
    d_model: int | None = Field(None, gt=0, description="residual stream width")
    n_layer: int | None = Field(None, gt=0, description="number of transformer blocks")
    n_head: int | None = Field(None, gt=0, description="query heads; d_model / n_head must be even")
    n_kv_head: int | None = Field(None, gt=0, description="key/value heads (GQA); null = n_head")
    mlp: Literal["relu2", "gated_relu2", "swiglu"] | None = Field(
        None, description="MLP kind: relu2, gated_relu2 or swiglu (gated SiLU, as in Llama)"
    )
    mlp_hidden: int | None = Field(
        None, gt=0, description="MLP hidden width; null = 4*d_model (relu2), 8/3*d_model up to x256 (gated)"
    )
    context: int | None = Field(None, gt=0, description="maximum sequence length")
    vocab_size: int | None = Field(None, gt=0, description="null = the tokenizer's vocab size")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="attention and residual dropout")
    qk_norm: bool | None = Field(None, description="RMSNorm on queries and keys per head")
    rope_theta: float | None = Field(None, gt=0.0, description="RoPE base")
    tie_embeddings: bool | None = Field(None, description="lm_head shares the token embedding matrix")
    attention: Literal["sdpa", "eager"] | None = Field(
        None, description="sdpa: fused kernels (flash attention on CUDA); eager: plain matmul-softmax, for debugging"
    )
    bitlinear: bool | None = Field(
        None, description="BitNet b1.58 block linears: ternary weights, 8-bit activations (docs/models.md)"
    )
    bitlinear_group_size: int | None = Field(
        None, gt=0, description="input features per BitLinear weight scale; null = one scale per output row"
    )
    norm_weight: bool | None = Field(
        None, description="RMSNorms (QK-norm included) get a learned per-channel gain, as in Llama/Qwen3"
    )
    norm_eps: float | None = Field(None, gt=0.0, lt=1.0, description="epsilon of every RMSNorm")
    init_from: str | None = Field(
        None, description="a Hugging Face Llama/Qwen3/Arcee checkpoint directory: its config sets the shape, "
                          "its weights the initial weights (docs/models.md)"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        # Validate the merged result now so a bad combination fails at config load, not at build.
        self._merged()
        return self

    def _merged(self) -> dict[str, Any]:
        values = dict(DEFAULTS)
        if self.preset is not None:
            if self.preset not in PRESETS:
                close = difflib.get_close_matches(self.preset, list(PRESETS), n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(
                    f"unknown model preset '{self.preset}'{hint}; known presets: {', '.join(PRESETS)}"
                )
            values.update(PRESETS[self.preset])
        if self.init_from is not None:
            values.update(self._from_checkpoint())
        for name in self.model_fields_set:
            value = getattr(self, name)
            if value is not None or name in _NULL_MEANINGFUL:
                values[name] = value
        values["preset"] = self.preset

        missing = [name for name in _REQUIRED if values.get(name) is None]
        if missing:
            raise ValueError(
                f"model needs {', '.join(missing)}: set {'it' if len(missing) == 1 else 'them'} "
                f"or choose a preset ({', '.join(PRESETS)})"
            )
        d, h = values["d_model"], values["n_head"]
        if d % h:
            raise ValueError(f"d_model ({d}) must be divisible by n_head ({h})")
        if (d // h) % 2:
            raise ValueError(f"head dim d_model/n_head = {d // h} must be even for RoPE")
        if values["n_kv_head"] is None:
            values["n_kv_head"] = h
        if h % values["n_kv_head"]:
            raise ValueError(f"n_kv_head ({values['n_kv_head']}) must divide n_head ({h})")
        if values["mlp_hidden"] is None:
            # Gated MLPs have three matrices, so 8/3*d keeps the parameter count of a 4*d relu2 MLP
            # (rounded up to 256 for matmul-friendly shapes, LLaMA style; gives 2048/2816/5632
            # for the Tritter widths).
            values["mlp_hidden"] = 4 * d if values["mlp"] == "relu2" else _round_up(8 * d / 3, 256)
        group = values["bitlinear_group_size"]
        if values["bitlinear"] and group is not None:
            for what, width in (("d_model", d), ("mlp_hidden", values["mlp_hidden"])):
                if width % group:
                    raise ValueError(f"bitlinear_group_size ({group}) must divide {what} ({width}); "
                                     "pick a divisor or null for one scale per output row")
        return values

    def _from_checkpoint(self) -> dict[str, Any]:
        """The fields ``init_from``'s config.json sets; fields given alongside must agree with them,
        except those a continued run may change (context, dropout, attention, bitlinear)."""
        from trainframe.model.hf import INIT_FROM_FREE, fields_from_hf_dir

        if self.preset is not None:
            raise ValueError("init_from takes the model's shape from the checkpoint; leave preset out")
        fields = fields_from_hf_dir(self.init_from)
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if name in fields and name not in INIT_FROM_FREE and value is not None and value != fields[name]:
                raise ValueError(f"{name} is {value!r} but init_from {self.init_from} has {fields[name]!r}; "
                                 f"leave {name} out")
        return fields

    def resolved(self) -> ModelConfig:
        """A copy with the preset merged in and every derived field filled (vocab_size may stay
        None, meaning the tokenizer's). Resolving a resolved config changes nothing."""
        return ModelConfig(**self._merged())

    @property
    def head_dim(self) -> int:
        r = self._merged()
        return r["d_model"] // r["n_head"]


# --------------------------------------------------------------------------------------------- #
# building blocks


def default_linear(in_features: int, out_features: int) -> nn.Module:
    """Every linear in a block comes from here (or a replacement passed to GPT): no biases."""
    return nn.Linear(in_features, out_features, bias=False)


class RMSNorm(nn.Module):
    """RMSNorm, by default without a learnable gain.

    Why no weight: the following linear can absorb any per-channel scale, nanochat trains fine
    without it, and it leaves norms with no parameters at all, so the optimizer's "decay only
    2D params" rule has nothing to get wrong and the hybrid dynamics model has fewer tensors.
    ``dim`` adds a learned gain of that width (``model.norm_weight``: checkpoints imported from
    Llama/Qwen3, whose norms have one); the optimizer does not decay it (it is 1D).
    """

    def __init__(self, eps: float = 1e-6, dim: int | None = None):
        super().__init__()
        self.eps = eps
        if dim is None:
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, eps=self.eps)


def _norm(cfg: ModelConfig, dim: int) -> RMSNorm:
    return RMSNorm(cfg.norm_eps, dim if cfg.norm_weight else None)


def _rope_tables(context: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(context, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()  # (context, head_dim/2) each


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of x (B, T, H, hd) by position-dependent angles: tables of
    (T, hd/2), the same positions for every row, or (B, T, hd/2), each row its own (packed documents)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = (cos[None, :, None, :], sin[None, :, None, :]) if cos.dim() == 2 else (cos[:, :, None], sin[:, :, None])
    # The rotation is computed in the tables' float32 and the result cast back: with bf16 tables
    # inductor made a slower backward kernel (2.0 against 1.05 ms per step, 768d x 12L, H200).
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


def _probe_enable_gqa() -> bool:
    try:
        q = torch.zeros(1, 2, 1, 2)
        kv = torch.zeros(1, 1, 1, 2)
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except TypeError:  # torch < 2.5
        return False


_HAS_ENABLE_GQA = _probe_enable_gqa()


class KVCache:
    """Keys and values of every layer for one generation call; buffers allocated on first use so
    they take the dtype the model computes in (bf16 under autocast)."""

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.pos = 0  # tokens already stored; advanced by GPT.forward after all layers ran

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_zeros(B, H, self.max_len, D)
            self.v[layer] = v.new_zeros(B, H, self.max_len, D)
        end = self.pos + T
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def _eager_attention(q, k, v, mask, causal: bool, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out; matches SDPA, for debugging and comparison."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        T, S = q.shape[-2], k.shape[-2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return weights @ v


def document_ids(positions: torch.Tensor) -> torch.Tensor:
    """(B, T) positions -> (B, T) document numbers: a document starts wherever its position is 0."""
    return (positions == 0).cumsum(dim=1)


def document_mask(positions: torch.Tensor, flex: bool):
    """Causal attention within each document of packed rows (positions restart at 0 per document).

    ``flex``: a FlexAttention BlockMask, whose blocks that cross no document are skipped by the
    kernel; otherwise a dense (B, T, T) bool mask for SDPA (FlexAttention has no CPU backward).
    """
    docs = document_ids(positions)
    B, T = docs.shape
    if not flex:
        causal = torch.ones(T, T, dtype=torch.bool, device=docs.device).tril()
        return (docs[:, :, None] == docs[:, None, :]) & causal

    def same_document_causal(b, h, q, kv):
        return (docs[b, q] == docs[b, kv]) & (q >= kv)

    if T % FLEX_BLOCK:
        return create_block_mask(same_document_causal, B, None, T, T, device=docs.device, _compile=True)
    return _document_block_mask(docs, same_document_causal)


FLEX_BLOCK = 128  # FlexAttention's default block size


def _document_block_mask(docs: torch.Tensor, mask_mod) -> BlockMask:
    """The BlockMask of ``same document and causal``, from each block's first and last document
    number (documents are contiguous, so those bound the block): a few small tensor ops with no
    host sync, where ``create_block_mask`` evaluates the mask at every position and took more
    host time per step than the whole step of a small model (docs/performance.md)."""
    B, T = docs.shape
    n = T // FLEX_BLOCK
    blocks = docs.view(B, n, FLEX_BLOCK)
    first, last = blocks[..., 0], blocks[..., -1]
    q_first, q_last = first[:, :, None], last[:, :, None]  # (B, q block, 1)
    kv_first, kv_last = first[:, None, :], last[:, None, :]  # (B, 1, kv block)
    below = torch.ones(n, n, dtype=torch.bool, device=docs.device).tril(-1)
    diagonal = torch.eye(n, dtype=torch.bool, device=docs.device)
    # An earlier kv block shares a document with the q block iff its last document is the q block's first.
    touches = ((kv_last == q_first) & below) | diagonal
    full = (kv_first == q_last) & below  # both blocks inside one document: no mask needed
    partial = touches & ~full

    def as_blocks(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = m.sum(-1, dtype=torch.int32)[:, None]
        indices = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
        return counts, indices

    return BlockMask.from_kv_blocks(*as_blocks(partial), *as_blocks(full), BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(T, T))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, linear: LinearFactory):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm, self.k_norm = _norm(cfg, self.head_dim), _norm(cfg, self.head_dim)
        self.dropout = cfg.dropout
        self.sdpa = cfg.attention == "sdpa"
        # One matrix for q, k and v: one matmul forward and two backward instead of three and six,
        # and no sum of three input gradients (measured in docs/performance.md).
        self.qkv = linear(cfg.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim)
        self.o = linear(self.n_head * self.head_dim, cfg.d_model)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the fused projection hold q, k and v as three matrices.
        old = [f"{prefix}{name}.weight" for name in ("q", "k", "v")]
        if all(key in state_dict for key in old) and f"{prefix}qkv.weight" not in state_dict:
            state_dict[f"{prefix}qkv.weight"] = torch.cat([state_dict.pop(key) for key in old])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, doc_mask=None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        if self.n_kv_head == self.n_head:
            # unbind, whose backward is one stack: the split's backward (a cat) was fused by inductor
            # with RoPE's backward into one slow kernel (7.2 against 1.3 ms per step, 768d x 12L).
            q, k, v = qkv.view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        else:
            q, k, v = qkv.split((self.n_head, self.n_kv_head, self.n_kv_head), dim=2)
        if self.qk_norm:
            # Bounds attention logits; stabilises training at high LR and with ternary weights.
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)

        if isinstance(doc_mask, BlockMask):
            # No attention-weight dropout here: FlexAttention has none (the residual dropout stays).
            y = flex_attention(q, k, v, block_mask=doc_mask, enable_gqa=self.n_kv_head != self.n_head)
            return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        mask, causal = (doc_mask[:, None], False) if doc_mask is not None else (None, True)
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)
            if start > 0:
                causal = False
                if T > 1:  # a chunk after cached tokens: SDPA's is_causal aligns top-left, so mask
                    q_pos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = torch.arange(start + T, device=x.device)[None, :] <= q_pos
        gqa = self.n_kv_head != self.n_head
        extra = {}
        if gqa and _HAS_ENABLE_GQA:
            extra["enable_gqa"] = True
        elif gqa:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        dropout_p = self.dropout if self.training else 0.0
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                               dropout_p=dropout_p, **extra)
        else:
            y = _eager_attention(q, k, v, mask, causal and mask is None, dropout_p)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, linear: LinearFactory):
        super().__init__()
        self.gated = cfg.mlp in ("gated_relu2", "swiglu")
        self.swiglu = cfg.mlp == "swiglu"
        if self.gated:
            self.gate = linear(cfg.d_model, cfg.mlp_hidden)
        self.up = linear(cfg.d_model, cfg.mlp_hidden)
        self.down = linear(cfg.mlp_hidden, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if self.gated:
            return self.down(F.relu(self.gate(x)).square() * self.up(x))
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, linear: LinearFactory):
        super().__init__()
        self.attn_norm = _norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, linear)
        self.mlp_norm = _norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg, linear)
        # Identity at p=0: no dropout op for torch.compile to trace and run on every residual add.
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, doc_mask=None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer, doc_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


# --------------------------------------------------------------------------------------------- #
# the model


class GPT(nn.Module):
    """Decoder-only transformer. ``GPT(cfg)`` needs ``cfg`` to resolve to a vocab size; use
    ``build_model(cfg, tokenizer_vocab_size)`` when the vocab comes from the tokenizer."""

    def __init__(self, config: ModelConfig, linear: LinearFactory | None = None):
        super().__init__()
        cfg = config.resolved()
        if linear is None:
            linear = bitlinear_factory(cfg.bitlinear_group_size) if cfg.bitlinear else default_linear
        if cfg.vocab_size is None:
            raise ValueError("model vocab_size is not set: give one or build with build_model(cfg, vocab_size)")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, linear) for _ in range(cfg.n_layer))
        self.norm_f = _norm(cfg, cfg.d_model)
        # The head stays a plain Linear (full precision) even when block linears are swapped.
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        cos, sin = _rope_tables(cfg.context, cfg.d_model // cfg.n_head, cfg.rope_theta)
        # Non-persistent: derived from the config, so checkpoints don't carry them.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    # ---- init ----------------------------------------------------------------------------- #

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise parameters and RoPE tables; call after ``to_empty()`` from meta.

        Normal(0, 0.02) everywhere; the two projections that write into the residual stream (attn.o,
        mlp.down) get 0.02/sqrt(2*n_layer) (GPT-2) so the residual's variance does not grow with
        depth. Not nanochat's zero init: a BitLinear swap scales ternary weights by mean(|W|), which
        is degenerate at exactly zero, and AdamW (unlike Muon) is slow to move zeroed matrices.
        """
        std = 0.02
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        nn.init.normal_(self.wte.weight, mean=0.0, std=std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=std)
        for block in self.blocks:
            lins = [block.attn.qkv, block.mlp.up]
            if block.mlp.gated:
                lins.append(block.mlp.gate)
            for lin in lins:
                nn.init.normal_(lin.weight, mean=0.0, std=std)
            nn.init.normal_(block.attn.o.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=resid_std)
        for norm in self.modules():
            if isinstance(norm, RMSNorm) and norm.weight is not None:
                nn.init.ones_(norm.weight)
        cos, sin = _rope_tables(
            self.config.context, self.config.d_model // self.config.n_head, self.config.rope_theta,
            device=self.rope_cos.device,
        )
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        if self.config.init_from is not None:  # continued training: the checkpoint's weights
            from trainframe.model.hf import load_hf_weights

            load_hf_weights(self, self.config.init_from)

    # ---- forward -------------------------------------------------------------------------- #

    # Training-memory options (trainer.activation_checkpointing, trainer.loss_chunk), set by the
    # engine through set_training_memory before torch.compile; neither changes the result.
    activation_checkpointing: Literal["none", "blocks"] = "none"
    loss_chunk: int | None = None

    def set_training_memory(self, activation_checkpointing: str = "none", loss_chunk: int | None = None) -> None:
        """``blocks``: each block's activations are recomputed in the backward pass instead of kept
        (torch.utils.checkpoint, non-reentrant; only where gradients are recorded, so forward-only
        passes and generation run as usual). ``loss_chunk``: the loss takes this many tokens at a
        time through the head (``trainframe.model.loss``), never the whole float32 logits."""
        if activation_checkpointing not in ("none", "blocks"):
            raise ValueError(f"activation_checkpointing must be 'none' or 'blocks', got {activation_checkpointing!r}")
        if loss_chunk is not None and loss_chunk < 1:
            raise ValueError(f"loss_chunk must be a positive number of tokens or None, got {loss_chunk}")
        self.activation_checkpointing, self.loss_chunk = activation_checkpointing, loss_chunk

    def document_mask(self, positions: torch.Tensor):
        """The attention mask of packed rows with these (B, T) positions; built once per batch,
        outside torch.compile, and passed to ``forward`` as ``doc_mask``."""
        flex = positions.device.type == "cuda" and self.config.attention == "sdpa"
        return document_mask(positions, flex)

    def _hidden(self, idx: torch.Tensor, kv_cache: KVCache | None, positions: torch.Tensor | None = None,
                doc_mask=None) -> torch.Tensor:
        T = idx.shape[1]
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.context:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model context ({self.config.context})")
        if positions is None:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        else:  # packed documents: each row's own positions, attention within each document
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
            if doc_mask is None:
                doc_mask = self.document_mask(positions)
        x = self.wte(idx)
        recompute = self.activation_checkpointing == "blocks" and kv_cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:  # the RNG state is saved with each block, so dropout masks recompute alike
                x = checkpoint(block, x, cos, sin, None, i, doc_mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv_cache, i, doc_mask)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.norm_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
        *,
        kv_cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        doc_mask=None,
    ) -> torch.Tensor:
        """idx (B, T) -> float32 logits (B, T, V); with targets (B, T) -> cross-entropy loss.

        ``positions`` (B, T): packed rows, several documents each, a document starting where its
        position is 0; each token attends only within its document and is rotated by its own
        position, so a document sees exactly what it would see alone. ``doc_mask`` is
        ``document_mask(positions)`` when the caller built it already (the engine does, per batch).

        Targets of -1 are ignored. ``mean`` averages over non-ignored tokens (0, not NaN, when all
        are ignored, so a fully padded micro-batch doesn't look like a divergence); ``sum`` sums
        them; ``none`` gives (B, T) with 0 at ignored positions.
        """
        x = self._hidden(idx, kv_cache, positions, doc_mask)
        if targets is not None and self.loss_chunk:  # the same losses, one chunk of tokens' logits at a time
            flat = chunked_cross_entropy(x, self.lm_head.weight, targets, self.loss_chunk)
            if reduction != "none":
                flat = flat.sum()
        else:
            logits = self.lm_head(x).float()  # fp32 logits: softmax over 65k classes in bf16 is lossy
            if targets is None:
                return logits
            flat = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                                   reduction="none" if reduction == "none" else "sum")
        if reduction == "none":
            return flat.view(targets.shape)
        if reduction == "sum":
            return flat
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        return flat / (targets != -1).sum().clamp(min=1)

    # ---- generation ----------------------------------------------------------------------- #

    def _next_logits(self, idx: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        # Only the last position is needed: skip the (B, T, V) head on the prefill.
        return self.lm_head(self._hidden(idx, kv_cache)[:, -1]).float()

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        allowed_fn: Callable[[list[int]], torch.Tensor | Sequence[bool] | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample up to ``max_new_tokens`` after ``idx`` (B, T); returns (B, T + n) including idx.

        temperature 0 = greedy. ``allowed_fn(row_tokens)`` gets a row's tokens so far (prompt
        included) and returns a bool mask over the vocab (True = allowed; a shorter mask leaves the
        rest disallowed) or None for no constraint. With ``eos_id`` a row that emits it is
        finished and padded with eos_id; generation stops early once every row is finished.

        Context: the prompt is cropped to its last ``context`` tokens. While the window fits, one
        token per step goes through the KV cache. Once it is full, each step recomputes the last
        ``context`` tokens without a cache (an exact sliding window, equal to what the model saw in
        training; rolling the cache instead would keep keys computed from tokens that have left
        the window).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be (batch, tokens) with at least one token, got {tuple(idx.shape)}")
        was_training = self.training
        self.eval()
        try:
            ctx = self.config.context
            out = idx
            cache = KVCache(self.config.n_layer, ctx)
            logits = self._next_logits(idx[:, -ctx:], cache)
            finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
            for step in range(max_new_tokens):
                mask = self._allowed_mask(allowed_fn, out, finished, logits.size(-1))
                nxt = sample_next(logits, temperature, top_k, top_p, mask, generator)
                if eos_id is not None:
                    nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
                    finished |= nxt == eos_id
                out = torch.cat((out, nxt[:, None]), dim=1)
                if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
                    break
                if cache.pos < ctx:
                    logits = self._next_logits(nxt[:, None], cache)
                else:
                    logits = self._next_logits(out[:, -ctx:], None)
            return out
        finally:
            self.train(was_training)

    @staticmethod
    def _allowed_mask(allowed_fn, out: torch.Tensor, finished: torch.Tensor, vocab: int) -> torch.Tensor | None:
        if allowed_fn is None:
            return None
        mask = torch.ones(out.size(0), vocab, dtype=torch.bool, device=out.device)
        for b in range(out.size(0)):
            if finished[b]:
                continue
            row = allowed_fn(out[b].tolist())
            if row is None:
                continue
            row = torch.as_tensor(row, dtype=torch.bool, device=out.device).flatten()
            if row.numel() > vocab:
                raise ValueError(f"allowed_fn returned a mask of {row.numel()} entries for a vocab of {vocab}")
            if not bool(row.any()):
                raise ValueError(f"allowed_fn allows no token for row {b} after {out.size(1)} tokens")
            mask[b] = False
            mask[b, : row.numel()] = row
        return mask

    # ---- accounting ----------------------------------------------------------------------- #

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Unique parameters. ``exclude_embedding`` drops the token-embedding table unless it is tied
        (then it is also the lm_head matrix, which does a matmul per token)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() already deduplicates tied ones
        if exclude_embedding and not self.config.tie_embeddings:
            n -= self.wte.weight.numel()
        return n

    def num_block_params(self) -> int:
        """Parameters of the transformer blocks: everything except embedding and head."""
        return sum(p.numel() for p in self.blocks.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 x matmul params + 12 x n_layer x d_model x context (attention
        scores and values, nanochat / PaLM convention)."""
        c = self.config
        return 6 * self.num_params(exclude_embedding=True) + 12 * c.n_layer * c.d_model * c.context

    def summary(self) -> str:
        """One line for the start-of-run log."""
        c = self.config
        kv = f" ({c.n_kv_head} kv)" if c.n_kv_head != c.n_head else ""
        return (
            f"gpt{f' {c.preset}' if c.preset else ''}: {self.num_params() / 1e6:.2f}M params "
            f"({self.num_block_params() / 1e6:.2f}M in blocks), "
            f"{c.d_model}d x {c.n_layer}L x {c.n_head}H{kv}, {c.mlp} {c.mlp_hidden}, ctx {c.context}, "
            f"vocab {c.vocab_size}{', tied' if c.tie_embeddings else ''}{self._bitlinear_summary()}"
        )

    def _bitlinear_summary(self) -> str:
        c = self.config
        if not c.bitlinear:
            return ""
        return f", bitlinear ({f'groups of {c.bitlinear_group_size}' if c.bitlinear_group_size else 'per output row'})"


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next tokens (B,). Mask first, so top-k/top-p choose among allowed tokens."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (so the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
