"""The GPT model family: ``ModelConfig`` (with named presets), ``GPT``, and the ``build_model`` factory."""

from __future__ import annotations

from trainframe.model.config import PRESETS, ModelConfig
from trainframe.model.generation import KVCache, sample_next
from trainframe.model.gpt import GPT, RMSNorm, default_linear

__all__ = ["GPT", "PRESETS", "KVCache", "ModelConfig", "RMSNorm", "build_model", "default_linear", "sample_next"]


def build_model(cfg: ModelConfig, vocab_size: int) -> GPT:
    """Factory for the registry: ``vocab_size`` is the tokenizer's. The config's own vocab_size, when
    set, wins (it may be larger, e.g. padded for speed) but must cover every tokenizer id."""
    if cfg.vocab_size is None:
        cfg = cfg.model_copy(update={"vocab_size": vocab_size})
    elif cfg.vocab_size < vocab_size:
        raise ValueError(
            f"model vocab_size ({cfg.vocab_size}) is smaller than the tokenizer's ({vocab_size}); "
            f"raise model.vocab_size or set it to null to use the tokenizer's"
        )
    return GPT(cfg)
