"""Built-in components. They register through the same hook a third-party plugin uses."""

from __future__ import annotations

import trainframe
from trainframe.data.datasets import TextFileConfig, TokensConfig, build_textfile, build_tokens
from trainframe.data.tokenizer import ByteTokenizerConfig, build_byte_tokenizer
from trainframe.logging import (ConsoleConfig, JsonlConfig, TensorboardConfig, build_console, build_jsonl,
                                build_tensorboard)
from trainframe.logging.trackers import MlflowConfig, WandbConfig, build_mlflow, build_wandb
from trainframe.model import PRESETS, ModelConfig, build_model
from trainframe.optim.adamw import AdamWConfig, build_adamw
from trainframe.optim.muon import MuonConfig, build_muon
from trainframe.optim.schedules import (ConstantConfig, CosineConfig, WSDConfig, build_constant, build_cosine,
                                        build_wsd)
from trainframe.phases import FullConfig, build_full


@trainframe.hookimpl
def trainframe_register(registry):
    registry.add("model", "gpt", build_model, ModelConfig, help="GPT decoder with named presets")
    for name, fields in PRESETS.items():
        registry.add_model_preset(name, fields)
    registry.add("tokenizer", "bytes", build_byte_tokenizer, ByteTokenizerConfig, help="UTF-8 bytes + EOS, PAD")
    registry.add("dataset", "tokens", build_tokens, TokensConfig, help="prepared token shards (memmap)")
    registry.add("dataset", "textfile", build_textfile, TextFileConfig,
                 help="plain text files, tokenized once into cached shards")
    registry.add("optimizer", "adamw", build_adamw, AdamWConfig, help="AdamW, weight decay on matrices only")
    registry.add("optimizer", "muon", build_muon, MuonConfig,
                 help="Muon for hidden matrices, AdamW for embeddings, head and vectors")
    registry.add("schedule", "constant", build_constant, ConstantConfig, help="linear warmup, then constant")
    registry.add("schedule", "cosine", build_cosine, CosineConfig, help="linear warmup, cosine to min_lr_ratio")
    registry.add("schedule", "wsd", build_wsd, WSDConfig, help="warmup-stable-decay")
    registry.add("phases", "full", build_full, FullConfig, help="every step is a full step")
    registry.add("logger", "jsonl", build_jsonl, JsonlConfig, help="metrics.jsonl in the run dir")
    registry.add("logger", "tensorboard", build_tensorboard, TensorboardConfig, help="tensorboard under tb/")
    registry.add("logger", "console", build_console, ConsoleConfig, help="progress bar or plain lines")
    registry.add("logger", "wandb", build_wandb, WandbConfig, help="Weights & Biases run (extra: trainframe[wandb])")
    registry.add("logger", "mlflow", build_mlflow, MlflowConfig, help="MLflow run (extra: trainframe[mlflow])")
