"""Bad input to the workflows plugin's commands and components, and to core commands on a workflow
run: the table of tests/test_bad_input.py (same ``Case`` fields, same checks) for this plugin.
``$WRUN``, ``$WCFG`` and ``$CORPUS`` stand for a one-step workflow run, its config and a 30-workflow
corpus, next to the core table's ``$RUN``, ``$EXPORT`` and ``$TEXT``."""

from __future__ import annotations

import pytest
from support import SHARED
from test_bad_input import DIR, JSON, Case, run_case, shared_paths

from trainframe.cli import main

WORKFLOWS = SHARED / "workflows" / "workflows.jsonl"

CASES = [
    Case("plugins lists", "plugins", {}, 0, "", stdout="trainframe_workflows"),
    Case("eval json on a workflow run", "eval $WRUN --batches 1 --json", {}, 0, "data: ", line=None, stdout=JSON),
    Case("generate workflow out hints", "generate $WRUN --out o --max-tokens 4", {}, 0,
         "samples do not decode (samples.jsonl says why): sample with --constrained", outputs=("o", "o/*"),
         stdout="1 samples, 0 decoded"),
    Case("tokenizer train schema no data", "tokenizer train --kind schema", {}, 2, "--data: required for --kind schema"),
    Case("tokenizer train schema vocab size", "tokenizer train --kind schema --data $CORPUS --vocab-size 10", {}, 2,
         "--vocab-size: expected at least"),
    Case("tokenizer train schema unknown schema", "tokenizer train --kind schema --data $CORPUS --schema nope --out v.json",
         {}, 2, "--schema: schema 'nope'"),
    Case("tokenizer train schema no out", "tokenizer train --kind schema --data $CORPUS", {}, 2,
         "--out: required for --kind schema"),
    Case("tokenizer train schema missing data", "tokenizer train --kind schema --data nothere.jsonl --out v.json", {}, 2,
         r"nothere.jsonl: no such file or directory \(relative to the current directory /"),
    Case("tokenizer train schema read-only", "tokenizer train --kind schema --data $CORPUS --out ro/v.json --vocab-size 400",
         {}, 2, "ro/v.json: cannot write the vocabulary: Permission denied", read_only=("ro",), line=-1),
    Case("throughput json on a workflow config", "bench throughput $WCFG --json --steps 1 --warmup 1 --data real", {}, 0,
         "data: ", line=None, stdout=JSON),
    Case("target json on a workflow config",
         "bench target $WCFG --seeds 1 --json --out bt --eval-every 1 trainer.max_steps=2 trainer.eval_batches=1", {}, 0,
         "data: ", line=None, stdout=JSON, outputs=("bt", "bt/*")),
    Case("eval-workflows no folder", "eval-workflows nowhere", {}, 2, "nowhere: not a directory"),
    Case("eval-workflows empty folder", "eval-workflows d", {"d": DIR}, 2, "d: no samples.jsonl and no .yml"),
    Case("eval-workflows bad manifest", "eval-workflows d", {"d/samples.jsonl": "nope\n"}, 2, "d/samples.jsonl: not JSON lines"),
    Case("eval-workflows unknown schema", "eval-workflows d --schema nope", {"d/a.yml": "on: push\n"}, 2,
         "--schema: schema 'nope'"),
    Case("eval-completion not a run", "eval-completion nowhere", {}, 2, "nowhere: not a run directory"),
    Case("eval-completion text run", "eval-completion $RUN --checkpoint latest", {}, 2, "not a workflow model"),
    Case("eval-completion missing data", "eval-completion $WRUN --data nothere.jsonl", {}, 2,
         r"--data: nothere.jsonl: no such file or directory \(relative to the current directory /"),
    Case("eval-completion cuts -1", "eval-completion $WRUN --cuts -1", {}, 2, "--cuts: expected 0 or more"),
    Case("tokenizer check missing data", "tokenizer check --data nothere.jsonl", {}, 2,
         "nothere.jsonl: no such file or directory (relative to the current directory"),
    Case("tokenizer check empty folder", "tokenizer check --data d", {"d": DIR}, 2, "d: no .yml, .yaml or .json files"),
    Case("workflow vocab missing", "config show x.yaml",
         {"x.yaml": "model: {name: gpt, preset: tiny}\ntokenizer: {name: schema, vocab: v.json}\n"
                    "data: {name: workflows, path: $CORPUS}\n"}, 0, "", stdout="vocab: v.json"),
    Case("workflow vocab missing at train", "train x.yaml --run-dir r",
         {"x.yaml": "model: {name: gpt, preset: tiny}\ntokenizer: {name: schema, vocab: v.json}\n"
                    "data: {name: workflows, path: $CORPUS}\n"}, 2,
         r"tokenizer.vocab: v.json: no such file \(relative to the current directory /"),
    Case("workflow corpus missing, relative", "train x.yaml --run-dir r",
         {"x.yaml": "model: {name: gpt, preset: tiny}\ntokenizer: {name: schema}\ndata: {name: workflows, path: w.jsonl}\n"},
         2, r"data.path: w.jsonl: no such file or directory \(relative to the current directory /"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_workflows")
    paths = shared_paths(root)
    if WORKFLOWS.is_file():
        corpus = root / "w30.jsonl"
        corpus.write_text("".join(WORKFLOWS.read_text(encoding="utf-8").splitlines(keepends=True)[:30]))
        wcfg = root / "wtiny.yaml"
        wcfg.write_text(f"""name: wtiny
model: {{name: gpt, preset: tiny, d_model: 16, n_layer: 1, n_head: 2, context: 64}}
tokenizer: {{name: schema}}
data: {{name: workflows, path: {corpus}, val_ratio: 0.2, workers: 1}}
loggers: [{{name: jsonl}}]
trainer: {{max_steps: 1, batch_size: 2, eval_every: 0, eval_batches: 1, save_every: 0, sample_tokens: 0, device: cpu}}
""")
        assert main(["train", str(wcfg), "--run-dir", str(root / "wrun")]) == 0
        paths.update({"$WRUN": str(root / "wrun"), "$WCFG": str(wcfg), "$CORPUS": str(corpus)})
    return paths


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_workflows_bad_input(case: Case, shared, tmp_path, monkeypatch, capsys):
    run_case(case, shared, tmp_path, monkeypatch, capsys)
