"""trainframe eval: agrees with the training loop's eval, and with itself on run and export dirs."""

import json
import math

import pytest
import torch
from support import SHAKESPEARE
from test_export import train_run

from trainframe.cli import main
from trainframe.engine import evaluation
from trainframe.export import export_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("eval"), "run", "trainer.eval_batches=3")


def eval_json(capsys, *args):
    assert main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_one_eval_module_weights_batches_by_counted_targets():
    """The loop's eval and ``trainframe eval`` both sum here: each batch's mean loss times its counted
    targets (-1: padding), so the mean is over tokens, not batches."""
    def forward(x, y):  # a batch's mean loss: here the value its inputs carry
        return x.float().mean()

    batches = [(torch.full((1, 4), 2.0), torch.tensor([[1, 2, -1, -1]])),
               (torch.full((1, 4), 5.0), torch.tensor([[1, 2, 3, 4]]))]
    for dtype in (torch.float32, torch.float64):
        sums = evaluation.loss_sums(forward, batches, torch.device("cpu"), dtype)
        assert sums.dtype == dtype and sums.tolist() == [2 * 2 + 5 * 4, 6]
    assert evaluation.scores(math.log(4)) == {"loss": math.log(4), "ppl": pytest.approx(4)}
    assert evaluation.scores(math.log(4), chars_per_token=2.0)["bpc"] == pytest.approx(1.0)
    assert evaluation.scores(1e4)["ppl"] == math.exp(50)  # capped, not an overflow


def test_eval_matches_the_training_loop(run, capsys):
    """The run's final val_loss (3 batches of 4 at step 12) is what eval reports for that checkpoint."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "val_loss" in r][-1]
    got = eval_json(capsys, run, "--batches", 3, "--checkpoint", "12")
    assert got["loss"] == pytest.approx(final["val_loss"], rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))
    assert got["batches"] == 3 and got["tokens"] == 3 * 4 * 32 and got["split"] == "val"


def test_same_numbers_from_run_and_export(run, tmp_path, capsys):
    out = tmp_path / "export"
    export_run(run, "latest", out)
    a = eval_json(capsys, run, "--batches", 5)
    b = eval_json(capsys, out, "--batches", 5)
    assert {k: v for k, v in a.items() if k not in ("path", "source")} == \
           {k: v for k, v in b.items() if k not in ("path", "source")}
    assert "step 12" in b["source"]


def test_train_split_text_output_and_other_config(run, tmp_path, capsys):
    assert main(["eval", str(run), "--split", "train", "--batches", "2"]) == 0
    text = capsys.readouterr().out
    assert "train split, 2 batches, 256 tokens" in text and "perplexity" in text
    # --config: the dataset of another config (the first 8 kB of the corpus, half of it val); without
    # --batches the whole val split is read
    small = tmp_path / "small.txt"
    small.write_text(SHAKESPEARE.read_text()[:8000])
    other = tmp_path / "other.yaml"
    other.write_text(f"model: {{name: gpt, preset: tiny}}\ntokenizer: {{name: bytes}}\n"
                     f"data: {{name: textfile, path: {small}, val_fraction: 0.5}}\n")
    got = eval_json(capsys, run, "--config", other, "--batch-size", 8)
    assert 2000 < got["tokens"] <= 4000 and got["batches"] == math.ceil(got["tokens"] / 32 / 8)


@pytest.mark.parametrize("args, message", [
    (["--batches", "0"], "--batches: expected a positive integer"),
    (["--packed"], "packed ternary weights are in exports"),
    (["--checkpoint", "99"], "no checkpoint for step 99"),
    (["--config", "missing.yaml"], "missing.yaml: config file not found"),
])
def test_bad_input_exits_2(run, capsys, args, message):
    assert main(["eval", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_not_a_run_dir(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
