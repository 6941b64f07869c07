"""trainer.activation_checkpointing and trainer.loss_chunk in the loop, with the hybrid controller's
forward-only steps: the same losses as without."""

import json

import pytest
from support import SHAKESPEARE

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.plugins import load_plugins


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


HYBRID = f"""
name: memory-test
seed: 3
model: {{name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32, dropout: 0.1}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}, val_fraction: 0.1}}
optim: {{name: adamw, lr: 3.0e-3}}
phases: {{name: hybrid, warmup_steps: 3, full_steps: 2, min_predict_steps: 2, max_predict_steps: 3,
          correct_steps: 2, confidence_threshold: 0.0, bptt: 4, train_every: 1, hidden: 16}}
loggers: [{{name: jsonl}}]
trainer: {{max_steps: 14, batch_size: 4, eval_every: 7, eval_batches: 1, log_every: 1, save_every: 0,
          sample_tokens: 0, device: cpu}}
"""


def test_in_the_loop_with_hybrid_forward_only_steps(plugins, tmp_path):
    (tmp_path / "c.yaml").write_text(HYBRID)
    runs = {}
    for name, overrides in (("plain", []), ("lean", ["trainer.activation_checkpointing=blocks",
                                                      "trainer.loss_chunk=48"])):
        trainer = build_trainer(load_config(tmp_path / "c.yaml", overrides, plugins.registry), plugins,
                                tmp_path / name)
        assert (trainer.model.activation_checkpointing, trainer.model.loss_chunk) == \
            (("blocks", 48) if overrides else ("none", None))
        trainer.fit(finish=False)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = [(r["step"], r) for r in rows]
    phases = [m["phase"] for _, m in runs["lean"] if "phase" in m]
    assert any("val_loss" in m for _, m in runs["lean"])
    assert {"full", "predict", "correct"} <= set(phases)
    assert [s for s, _ in runs["plain"]] == [s for s, _ in runs["lean"]]
    for (_, a), (_, b) in zip(runs["plain"], runs["lean"]):
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), key
