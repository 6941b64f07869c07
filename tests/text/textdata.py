"""Shared helpers of the text-plugin tests: configs written under tmp_path, in-process CLI calls."""

import os
from pathlib import Path

import pytest
import yaml

from trainframe.cli import main

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"

# Column layouts of the real datasets (FineWeb-Edu's parquet, TinyStories' jsonl).
FINEWEB_COLUMNS = ["text", "id", "dump", "url", "file_path", "language", "language_score", "token_count",
                   "score", "int_score"]


def write_config(tmp_path: Path, sources: list[dict], tokenizer: Path, *, name="t", **data) -> Path:
    cfg = {
        "name": name,
        "seed": 3,
        "model": {"name": "gpt", "preset": "tiny", "d_model": 32, "n_layer": 1, "n_head": 2, "context": 32},
        "tokenizer": {"name": "bpe", "path": str(tokenizer)},
        "data": {"name": "text", "dir": str(tmp_path / "data"), "sources": sources, **data},
        "optim": {"name": "adamw", "lr": 3.0e-3},
        "loggers": [{"name": "jsonl"}],
        "trainer": {"max_steps": 12, "batch_size": 4, "eval_every": 6, "eval_batches": 2, "save_every": 6,
                    "sample_tokens": 0, "device": "cpu"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args) -> int:
    return main([str(a) for a in args])


def hub_free_env() -> dict:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def hub_offline(monkeypatch):
    """``hub_free_env`` in this process: the variables, and the copies of them that ``datasets``
    and ``huggingface_hub`` took when they were imported."""
    import datasets
    import huggingface_hub

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
        monkeypatch.setattr(datasets.config, var, True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session", name="bpe_path")
def trained_bpe(tmp_path_factory) -> Path:
    """A 512-id BPE learned from Tiny Shakespeare by `trainframe tokenizer train`, once per session."""
    tmp = tmp_path_factory.mktemp("bpe")
    config = write_config(tmp, [{"files": [str(SHAKESPEARE)]}], tmp / "tokenizer.json")
    assert cli("tokenizer", "train", config, "--vocab-size", 512, "--sample-mb", 1) == 0
    return tmp / "tokenizer.json"
