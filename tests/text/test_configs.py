"""The shipped configs: all valid; tinystories-tiny prepares a local file in its layout."""

import json
import subprocess
import sys

import pytest
from textdata import REPO, cli

from trainframe.config import load_config
from trainframe.plugins import current


@pytest.mark.parametrize("name", ["shakespeare-tiny", "tinystories-tiny", "tritter-100m"])
def test_configs_are_valid(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml", [], current().registry)
    assert cfg.component("tokenizer")[0] == "bpe" and cfg.component("data")[0] == "text"


def test_tritter_plan():
    cfg = load_config(REPO / "configs" / "tritter-100m.yaml", [], current().registry)
    (_, data), t = cfg.component("data"), cfg.trainer
    assert [s.weight for s in data.sources] == [0.40, 0.25, 0.15, 0.10, 0.10]
    assert data.sources[0].hf == "HuggingFaceFW/fineweb-edu" and data.sources[0].config == "sample-10BT"
    assert 256 <= t.batch_size * t.grad_accum <= 512
    tokens = t.max_steps * t.batch_size * t.grad_accum * cfg.component("model")[1].context
    assert abs(tokens - 2e9) < 0.01e9


@pytest.mark.slow
def test_tinystories_tiny_on_a_local_file(tmp_path):
    words = ["the", "cat", "dog", "sun", "tree", "girl", "boy", "happy", "sad", "ran", "saw", "big", "little",
             "ball", "park", "friend"]
    rows = [{"text": f"Once upon a time a {words[i % 16]} and a {words[(i * 7) % 16]} went to the "
                     f"{words[(i * 3) % 16]}. They were {words[(i * 5) % 16]}. The end."} for i in range(400)]
    (tmp_path / "stories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.sources.0={{files: [{tmp_path / 'stories.jsonl'}]}}", f"data.dir={tmp_path / 'data'}",
                 f"tokenizer.path={tmp_path / 'data' / 'tokenizer.json'}"]
    config = REPO / "configs" / "tinystories-tiny.yaml"
    assert cli("tokenizer", "train", config, *overrides, "--vocab-size", 300) == 0
    assert cli("data", "prepare", config, *overrides, "--workers", 1) == 0
    (source,) = json.loads((tmp_path / "data" / "manifest.json").read_text())["sources"]
    assert (source["rows"], source["bad_rows"]) == (400, 0) and source["tokens"] > 400
    # Reading prepared shards must not import `datasets` (start-up time): a fresh process shows it.
    r = subprocess.run([sys.executable, "-m", "trainframe", "data", "bench", str(config), *overrides, "--seconds",
                        "0.2", "--context", "32"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "`datasets` imported: no" in r.stdout and r.stdout.splitlines()[-1].startswith("loader: ")
