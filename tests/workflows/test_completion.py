"""Constrained decoding within a token budget, completion of typed text, infill at a path, and
``eval-completion``: from untrained tiny models, on CPU."""

import json

import numpy as np
import pytest
import torch
from trainframe_workflows.completion import Completion, Infill, encode_typed, encode_with_spans, parse_path, value_at
from trainframe_workflows.dataset import WorkflowsConfig
from trainframe_workflows.schema_tokenizer.yaml_loader import load_document
from wfdata import CORPUS, need_data

from trainframe.cli import main
from trainframe.sampling import sample_documents
from trainframe.errors import UserError
from trainframe.model import ModelConfig, build_model

WORKFLOW = """name: CI
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: make
      - run: make test
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: make lint
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny", d_model=32, n_layer=1, n_head=2, context=64), tok.vocab_size())


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens", [16, 40])
def test_constrained_samples_always_finish_within_the_budget(tok, validator, model, max_tokens):
    """An untrained model wanders into long random strings; the budget still closes every sample."""
    start = WorkflowsConfig(path="unused").start_tokens(tok)
    samples = list(sample_documents(model, tok, start, [], 8, max_tokens=max_tokens, batch_size=8,
                                    constrained=True, temperature=1.0, top_k=None, seed=0))
    for ids, finished in samples:
        assert finished and len(ids) < max_tokens
        doc = tok.decode_value(ids)[0]
        assert validator.is_valid(doc), list(validator.iter_errors(doc))[:1]


def test_closing_cost_is_reached_by_the_cheapest_moves(tok):
    """Taking, at every step, only what the budget allows with no token to spare ends the document
    in exactly closing_cost tokens."""
    need = tok.closing_cost([])
    rng = np.random.default_rng(0)
    for _ in range(5):
        ids = []
        while not tok._decoder(ids).done:
            ids.append(int(rng.choice(np.flatnonzero(tok.allowed_next(ids, budget=need - len(ids))))))
        assert len(ids) == need
    assert tok.closing_cost(tok.encode(WORKFLOW)) == 0


def test_too_small_a_budget_is_one_clear_error(tok, model):
    with pytest.raises(UserError, match="--max-tokens: 5 is too few"):
        list(sample_documents(model, tok, [tok.pad_id], [], 1, max_tokens=5, constrained=True))


def test_parse_path():
    assert parse_path("jobs.build.steps[2]") == ("jobs", "build", "steps", 2)
    assert parse_path('jobs["a.b"].env') == ("jobs", "a.b", "env")
    assert parse_path("on") == ("on",)
    for bad in ("", "jobs..x", "jobs[x", ".jobs"):
        with pytest.raises(ValueError):
            parse_path(bad)


def test_spans_cover_each_value(tok):
    doc = load_document(WORKFLOW)
    ids, spans, entries = encode_with_spans(tok, doc)
    assert ids == tok.encode(WORKFLOW)
    for path in (("jobs", "build"), ("jobs", "build", "steps", 1), ("name",)):
        a, b = spans[path]
        sub = tok.decode_value(ids[: a] + ids[a:b] + ids[b:])[0]
        assert value_at(sub, path) == value_at(doc, path)
        assert entries[path] < a  # the key or continue token comes first


def test_typed_text_that_does_not_parse_is_completed_from_what_does(tok, validator, model):
    typed = WORKFLOW.split("  lint:")[0] + '      - name: "Set up'  # an unclosed quote: no YAML
    ids, used, open_text = encode_typed(tok, typed)
    assert used == len(typed.splitlines()) - 1 and ids and open_text == b""
    start = WorkflowsConfig(path="unused").start_tokens(tok)
    (new, finished), = sample_documents(model, tok, start, ids, 1, max_tokens=30, constrained=True, seed=0)
    doc = tok.decode_value(ids + new)[0]
    assert finished and validator.is_valid(doc)
    typed_steps = load_document(WORKFLOW)["jobs"]["build"]["steps"]
    assert doc["jobs"]["build"]["steps"][:2] == typed_steps[:2]
    assert doc["jobs"]["build"]["steps"][2]["run"] == "make test"  # the last step stays open for more keys


def test_a_string_cut_mid_word_is_spelled_again_then_continued(tok, validator, model):
    """Token healing: the open string's typed bytes are not encoded; the first tokens must spell them."""
    comp = Completion(tok, "on: push\njobs:\n  build:\n    runs-on: ubuntu-la")
    assert comp.lines == 4 and comp.typed == b"ubuntu-la"
    assert tok._decoder(comp.prompt).stack[-1].buf == b""  # the string is open and empty
    start = WorkflowsConfig(path="unused").start_tokens(tok)
    for new, finished in sample_documents(model, tok, start, comp.prompt, 4, max_tokens=40, constrained=True,
                                          temperature=1.0, top_k=None, seed=0,
                                          allowed_new=lambda new: comp.allowed(new, 39 - len(new))):
        doc = tok.decode_value(comp.prompt + new)[0]
        assert finished and validator.is_valid(doc)
        assert doc["jobs"]["build"]["runs-on"].startswith("ubuntu-la"), doc["jobs"]["build"]["runs-on"]


def _fim_layout(tok, context=64):
    return WorkflowsConfig(path="unused", fim_rate=0.5, geometric_p=0.5).layout(tok, context)


@pytest.mark.parametrize("at", ["jobs.build.steps[1]", "jobs.lint", "name"])
def test_infill_keeps_the_document_valid_and_the_rest_identical(tok, validator, model, at):
    doc = load_document(WORKFLOW)
    path = parse_path(at)
    task = Infill(tok, _fim_layout(tok), doc, path, max_tokens=24)
    assert len(task.prompt) + 24 <= 64  # prompt and middle fit in the context
    for middle, finished in sample_documents(model, tok, task.prompt, [], 4, max_tokens=24, constrained=True,
                                             temperature=1.0, top_k=None, seed=1, allowed_new=task.allowed):
        assert finished
        ids = task.document(middle)
        assert ids[: task.start] == task.ids[: task.start] and ids[len(ids) - (len(task.ids) - task.end):] == \
            task.ids[task.end:]
        new = tok.decode_value(ids)[0]
        assert validator.is_valid(new)
        # Everything outside PATH is as it was.
        parent = value_at(new, path[:-1])
        parent[path[-1]] = value_at(doc, path)
        assert new == doc


def test_infill_bad_input(tok):
    doc = load_document(WORKFLOW)
    with pytest.raises(UserError, match="has no key 'test'"):
        Infill(tok, _fim_layout(tok), doc, ("jobs", "test"), 24)
    with pytest.raises(UserError, match="has 3 items"):
        Infill(tok, _fim_layout(tok), doc, ("jobs", "build", "steps", 7), 24)
    with pytest.raises(UserError, match="not trained to fill in the middle"):
        Infill(tok, WorkflowsConfig(path="unused").layout(tok, 64), doc, ("jobs", "lint"), 24)


@pytest.fixture(scope="module")
def fim_run(tmp_path_factory):
    need_data()
    run = tmp_path_factory.mktemp("fim") / "run"
    code = main(["train", "configs/workflows-tiny.yaml", "--run-dir", str(run), "trainer.max_steps=4",
                 "trainer.batch_size=4", "trainer.eval_every=4", "trainer.eval_batches=1", "model.d_model=32",
                 "trainer.device=cpu", "loggers=[{name: jsonl}]", "data.fim_rate=0.5", "data.geometric_p=0.5"])
    assert code == 0
    return run


@pytest.mark.slow
def test_generate_infill_and_completion_cli(fim_run, tmp_path, capsys, monkeypatch, validator):
    from support import REPO

    monkeypatch.chdir(REPO)
    wf = tmp_path / "ci.yml"
    wf.write_text(WORKFLOW)
    out = tmp_path / "infill"
    assert main(["generate", str(fim_run), "--infill", str(wf), "--at", "jobs.build.steps[2]", "--n", "2",
                 "--max-tokens", "20", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["file"] and r["finished"] for r in rows)
    for r in rows:
        assert validator.is_valid(load_document((out / r["file"]).read_text()))
    typed = tmp_path / "typed.yml"
    typed.write_text("name: CI\non: push\njobs:\n  build:\n    runs-on: [")
    capsys.readouterr()
    assert main(["generate", str(fim_run), "--prefix-from", str(typed), "--max-tokens", "30"]) == 0
    captured = capsys.readouterr()
    assert "from its first 4 of 5 lines" in captured.err
    assert validator.is_valid(load_document(captured.out))
    # Bad input: one line, exit 2.
    for args in (["--infill", str(wf), "--at", "jobs..x"], ["--infill", str(wf), "--at", "jobs.test"],
                 ["--infill", str(wf)], ["--infill", str(tmp_path / "missing.yml"), "--at", "jobs"]):
        assert main(["generate", str(fim_run), *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], args


@pytest.mark.slow
def test_eval_completion_cli(fim_run, tmp_path, capsys):
    need_data()
    data = tmp_path / "held.jsonl"
    data.write_text("".join(CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)[:6]))
    capsys.readouterr()
    assert main(["eval-completion", str(fim_run), "--data", str(data), "--cuts", "3", "--infills", "3",
                 "--max-tokens", "24", "--checkpoint", "latest", "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["held_out"]["documents"] >= 5 and r["held_out"]["bpc"] > 0
    assert r["completion"]["all"]["count"] == 3 and r["completion"]["all"]["valid"] == 1.0
    assert r["infill"]["all"]["count"] == 3 and r["infill"]["all"]["valid"] == 1.0
