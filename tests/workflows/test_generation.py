"""Generation and evaluation of workflows: constrained sampling, YAML files, eval-workflows, the CLI."""

import json
from pathlib import Path

import pytest
import torch
from trainframe_workflows.dataset import WorkflowsConfig
from trainframe_workflows.evaluate import evaluate_dir
from trainframe_workflows.generation import workflow_yaml
from trainframe_workflows.schema_tokenizer.yaml_loader import load_document

from trainframe.cli import main
from trainframe.sampling import sample_documents
from trainframe.model import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "workflows" / "workflows.jsonl"


pytestmark = pytest.mark.usefixtures("one_thread")


class Result:
    def __init__(self, returncode, out, err):
        self.returncode, self.stdout, self.stderr = returncode, out, err


@pytest.fixture
def cli(capsys, monkeypatch):
    """``trainframe ARGS`` in this process, from the repository root."""
    monkeypatch.chdir(REPO)

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.mark.slow
def test_constrained_sampling_from_an_untrained_model_is_always_schema_valid(tok, validator):
    """Every sample the mask lets finish is a schema-valid workflow, from a model that knows nothing.

    An untrained model spreads its probability over all 8k ids, so a string would almost never
    reach its END token; a fixed bias towards low ids (the choice tokens and END) keeps samples
    short enough to finish. The bias changes which allowed token is likely, never what is allowed.
    """
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", d_model=32, n_layer=1, n_head=2, context=64), tok.vocab_size())
    bias = -1.0 * torch.arange(tok.vocab_size(), dtype=torch.float32)
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    start = WorkflowsConfig(path="unused").start_tokens(tok)
    samples = list(sample_documents(model, tok, start, [], 8, max_tokens=300, batch_size=8, constrained=True,
                                    temperature=1.0, top_k=None, seed=0))
    finished = [ids for ids, done in samples if done]
    assert len(finished) >= 4
    for ids in finished:
        text, suffix = tok.decode_file(ids)
        assert suffix == ".yml"
        doc = load_document(text)
        assert validator.is_valid(doc), list(validator.iter_errors(doc))[:1]
        assert doc == tok.decode_value(ids)[0]


def first_disallowed(tok, ids):
    """The index of the first token the constrained sampler's mask would have refused, or None."""
    return next((i for i, t in enumerate(ids) if not tok.allowed_next(ids[:i])[t]), None)


def test_unconstrained_samples_may_be_invalid(tok):
    """Without the mask nothing keeps a sample in the grammar: from an untrained model, some sample
    takes a token the mask would have refused (constrained, none does: the test above)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", d_model=32, n_layer=1, n_head=2, context=64), tok.vocab_size())
    samples = list(sample_documents(model, tok, [tok.pad_id], [], 4, max_tokens=30, temperature=1.0, top_k=None))
    assert len(samples) == 4 and all(len(ids) <= 30 for ids, _ in samples)
    assert any(first_disallowed(tok, ids) is not None for ids, _ in samples)


def test_workflow_yaml_round_trips_the_corpus(corpus):
    for name, _, doc in corpus[::8]:
        assert load_document(workflow_yaml(doc)) == doc, name


def test_eval_workflows_counts(tmp_path, validator):
    d = tmp_path / "samples"
    d.mkdir()
    good = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"
    (d / "sample_0001.yml").write_text(good)
    (d / "sample_0002.yml").write_text(good)  # a duplicate
    (d / "sample_0003.yml").write_text("on: push\njobs:\n  a:\n    runs-on: 3\n")  # YAML, not schema-valid
    (d / "sample_0004.yml").write_text("on: [push\n")  # not YAML
    rows = [{"sample": i, "file": f"sample_{i:04d}.yml", "tokens": 10 * i, "finished": True} for i in range(1, 5)]
    rows.append({"sample": 5, "file": None, "tokens": 50, "finished": False, "error": "ends early"})
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = evaluate_dir(d, validator)
    assert (r["count"], r["decoded"], r["yaml_valid"], r["schema_valid"]) == (5, 4, 3, 2)
    assert (r["has_on_and_jobs"], r["distinct"], r["mean_tokens"], r["finished"]) == (3, 3, 30.0, 4)
    if r["actionlint_findings"] is not None:  # actionlint installed
        assert r["actionlint_clean"] == 2 and r["actionlint_findings"] >= 2


@pytest.mark.slow
def test_generate_and_eval_cli(tmp_path, cli):
    """train a tiny run, sample constrained and unconstrained workflows, evaluate and plot them."""
    if not CORPUS.is_file():
        pytest.skip("shared workflow data not present")
    run = tmp_path / "run"
    r = cli("train", "configs/workflows-tiny.yaml", "--run-dir", run, "trainer.max_steps=6", "trainer.batch_size=4",
            "trainer.eval_every=3", "trainer.eval_batches=2", "trainer.log_every=1", "model.d_model=32",
            "model.context=32", "trainer.device=cpu", "loggers=[{name: jsonl}]")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_bpc" in row for row in rows)  # bits per JSON character next to val loss
    con, unc = tmp_path / "con", tmp_path / "unc"
    r = cli("generate", run, "--n", 3, "--out", con, "--constrained", "--max-tokens", 40, "--seed", 1)
    assert r.returncode == 0, r.stderr
    r = cli("generate", run, "--n", 3, "--out", unc, "--max-tokens", 40)
    assert r.returncode == 0, r.stderr
    manifest = [json.loads(line) for line in (con / "samples.jsonl").read_text().splitlines()]
    assert [m["sample"] for m in manifest] == [1, 2, 3]
    r = cli("eval-workflows", con, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    for key in ("count", "decoded", "yaml_valid", "schema_valid", "has_on_and_jobs", "distinct", "mean_tokens"):
        assert key in result
    assert result["count"] == 3 and result["schema_valid"] == result["decoded"]  # constrained: valid once decoded
    r = cli("eval-workflows", con, unc)
    assert r.returncode == 0 and "schema-valid" in r.stdout and str(unc) in r.stdout
    # completion of a given workflow from its first tokens
    wf = tmp_path / "wf.yml"
    wf.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make\n")
    r = cli("generate", run, "--prefix-from", wf, "--prefix-tokens", 5, "--constrained", "--max-tokens", 20)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = cli("plot", run, "--out", tmp_path / "curve.png")
    assert r.returncode == 0 and (tmp_path / "curve.png").stat().st_size > 1000
    # bad input: one line, exit 2, nothing overwritten
    before = (con / "samples.jsonl").read_bytes()
    for args in (["--out", con], ["--n", 0], ["--prefix-tokens", 3], ["--prefix-from", tmp_path / "nope.yml"]):
        r = cli("generate", run, *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, args
    assert (con / "samples.jsonl").read_bytes() == before
    r = cli("eval-workflows", tmp_path / "missing")
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_eval_workflows_reads_subdirectories(tmp_path, validator):
    # Without samples.jsonl every workflow file under the directory counts, as for the training corpus.
    d = tmp_path / "repo"
    (d / ".github" / "workflows").mkdir(parents=True)
    good = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"
    (d / "top.yml").write_text(good)
    (d / ".github" / "workflows" / "ci.yaml").write_text(good.replace("echo hi", "echo ci"))
    (d / "notes.txt").write_text("not a workflow")
    r = evaluate_dir(d, validator)
    assert (r["count"], r["schema_valid"], r["distinct"]) == (2, 2, 2)
