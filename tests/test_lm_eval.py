"""`trainframe eval PATH --tasks`: lm-evaluation-harness on the transformers form of a run or an
export, with local task files the test writes (no hub); scores appended to the run's metrics."""

import json
import math
import sys

import pytest
import torch
from support import SHAKESPEARE, train_tiny_run

from trainframe.cli import main
from trainframe.runs import load_run_model


def train_run(tmp_path, name="run", steps=12):
    return train_tiny_run(tmp_path, name, steps=steps)


def write_tasks(folder):
    """A multiple-choice task (real line against garbled ones) and a rolling-loglikelihood one over
    short lines (each fits one window of the model's 32-token context)."""
    lines = [line for line in SHAKESPEARE.read_text().splitlines() if 12 <= len(line) <= 30][:12]
    (folder / "mc.jsonl").write_text("".join(
        json.dumps({"context": "ROMEO:\n", "choices": [line, line[::-1]], "answer": 0}) + "\n" for line in lines))
    (folder / "bpb.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    (folder / "tiny_mc.yaml").write_text(f"""
task: tiny_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {folder / 'mc.jsonl'}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
target_delimiter: ""
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list: [{{metric: acc}}]
""")
    (folder / "tiny_bpb.yaml").write_text(f"""
task: tiny_bpb
dataset_path: json
dataset_kwargs: {{data_files: {{test: {folder / 'bpb.jsonl'}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: bits_per_byte}}]
""")
    return lines


def bits_per_byte(model, lines) -> float:
    """What lm_eval's rolling loglikelihood computes, with trainframe's model: each text after the
    EOS token (the harness's prefix), summed log-probabilities over summed UTF-8 bytes."""
    nll, n_bytes = 0.0, 0
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([[256, *line.encode()]])
            logp = model(ids[:, :-1]).log_softmax(-1).gather(-1, ids[:, 1:, None])
            nll -= logp.sum().item()
            n_bytes += len(line.encode())
    return nll / n_bytes / math.log(2)


def test_eval_tasks_scores_a_run_and_logs_them(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    pytest.importorskip("lm_eval.models.huggingface")
    run = train_run(tmp_path)
    lines = write_tasks(tmp_path)
    tasks = f"{tmp_path / 'tiny_mc.yaml'},{tmp_path / 'tiny_bpb.yaml'}"
    capsys.readouterr()  # the training run's output
    assert main(["eval", str(run), "--tasks", tasks, "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert out["step"] == 12 and set(out["tasks"]) == {"tiny_mc", "tiny_bpb"}
    assert 0.0 <= out["tasks"]["tiny_mc"]["acc"] <= 1.0
    _, _, model = load_run_model(run, "latest", "cpu")
    ours = bits_per_byte(model, lines)
    print(f"bits per byte: lm_eval {out['tasks']['tiny_bpb']['bits_per_byte']:.6f}, trainframe {ours:.6f}")
    assert out["tasks"]["tiny_bpb"]["bits_per_byte"] == pytest.approx(ours, rel=1e-5)

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["step"] == 12 and last["lm_eval_checkpoint"] == "step_00000012.pt"
    assert last["lm_eval/tiny_mc/acc"] == out["tasks"]["tiny_mc"]["acc"]
    assert last["lm_eval/tiny_bpb/bits_per_byte"] == out["tasks"]["tiny_bpb"]["bits_per_byte"]

    # an export is scored the same, and nothing is logged anywhere
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    capsys.readouterr()
    assert main(["eval", str(export), "--tasks", str(tmp_path / "tiny_bpb.yaml"), "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    assert "tiny_bpb" in printed and "bits_per_byte" in printed and "limit 4" in printed
    assert (run / "metrics.jsonl").read_text().count("lm_eval_checkpoint") == 1


def test_eval_tasks_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    run = train_run(tmp_path, steps=2)
    for args, message in [
        (["--tasks", str(tmp_path / "missing.yaml")], "no such task file"),
        (["--tasks", ","], "expected lm_eval task names"),
        (["--tasks", "x.yaml", "--packed"], "--packed: does not apply with --tasks"),
        (["--limit", "3"], "--limit: applies to downstream tasks; add --tasks"),
        (["--tasks", "t", "--limit", "0"], "--limit: expected"),
    ]:
        assert main(["eval", str(run), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    assert main(["eval", str(run), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'trainframe[eval]'" in err and len(err.splitlines()) == 1
    assert (run / "metrics.jsonl").read_text().count("lm_eval/") == 0


def test_unknown_task_names_the_closest():
    from trainframe.downstream import _check_names
    from trainframe.errors import UserError

    with pytest.raises(UserError, match="unknown lm_eval task 'helaswag' \\(did you mean 'hellaswag'\\?\\)"):
        _check_names(["helaswag"], ["hellaswag", "arc_easy"])
