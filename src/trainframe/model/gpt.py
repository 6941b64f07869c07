"""The GPT decoder: building blocks and the model (config in ``model.config``, sampling in ``model.generation``).

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

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from trainframe.model.bitlinear import bitlinear_factory
from trainframe.model.config import ModelConfig
from trainframe.model.generation import KVCache, generate
from trainframe.model.loss import chunked_cross_entropy, outside_compile

LinearFactory = Callable[[int, int], nn.Module]


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
        cfg = config
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
        if loss_chunk:
            outside_compile()  # made before the model is compiled

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
        """Sample up to ``max_new_tokens`` after ``idx`` (B, T); ``trainframe.model.generation.generate``."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, eos_id, allowed_fn, generator)

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
