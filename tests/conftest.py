import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHAKESPEARE = SHARED / "text" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Tokenized-data caches go to a temporary directory, never the user's home."""
    os.environ["TRAINFRAME_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def run_cli(*args, cwd=REPO, env=None, timeout=300):
    """Run ``python -m trainframe ARGS`` and return the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "trainframe", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


TINY_YAML = f"""
name: tiny-test
seed: 7
model: {{name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}, val_fraction: 0.1}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: cosine, warmup_steps: 5}}
loggers: [{{name: jsonl}}]
trainer:
  max_steps: 30
  batch_size: 4
  eval_every: 0
  eval_batches: 2
  log_every: 1
  save_every: 10
  sample_tokens: 0
  device: cpu
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path
