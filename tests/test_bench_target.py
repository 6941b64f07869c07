"""`trainframe bench target` on a tiny CPU config: recipes against a baseline, time to its val loss."""

import json

import pytest
from support import REPO, SHAKESPEARE

from trainframe.bench_target import plain_needs
from trainframe.cli import main

CONFIG = str(REPO / "configs" / "tiny-cpu.yaml")
TINY = [f"data.path={SHAKESPEARE}", "model.d_model=32", "model.n_layer=1", "trainer.max_steps=20",
        "trainer.batch_size=4", "trainer.eval_batches=2"]


def _bench(capsys, out, *args):
    assert main(["bench", "target", CONFIG, *TINY, "--out", str(out), "--json", *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "results.json").read_text())
    return summary


def _first_reach(curve, target, key):
    return next(p[key] for p in curve if p["val_loss"] <= target)


@pytest.mark.slow
def test_bench_target_recipes_against_the_baseline(tmp_path, capsys):
    out = tmp_path / "bench"
    summary = _bench(capsys, out, "--recipe", "base", "--recipe", "fast optim.lr=6e-3", "--seeds", "2",
                     "--eval-every", "5")
    assert list(summary["recipes"]) == ["base", "fast"] and summary["baseline"] == "base"
    assert summary["device"] == "cpu" and summary["torch"] and summary["seeds"] == 2
    base, fast = summary["recipes"]["base"], summary["recipes"]["fast"]
    assert fast["overrides"] == [*TINY, "optim.lr=6e-3"] and fast["max_steps"] == 20
    for row in (base, fast):
        assert row["steps"] == 20 and row["tokens"] == 20 * 4 * 128 and row["backward_passes"] == 20
        assert row["useful_tokens"] == row["tokens"]  # text windows: no padding targets
        assert row["wall_s"] > 0 and row["eval_s"] > 0 and row["compile_s"] > 0 and row["stopped_at_target"] == 0
        for run in row["runs"]:
            assert [p["step"] for p in run["curve"]] == [0, 5, 10, 15, 20]
            assert run["curve"][-1]["wall_s"] == run["wall_s"] and run["curve"][-1]["tokens"] == run["tokens"]
            per_token = {p["flops"] / p["tokens"] for p in run["curve"][1:]}  # full steps: one rate
            assert max(per_token) == pytest.approx(min(per_token))
    # The targets are the baseline's own losses (median_high of 2 seeds: the higher one); it reaches
    # the 100% one by its last step, and its time ratio is 1.
    finals = [run["final_val_loss"] for run in base["runs"]]
    assert summary["targets"]["100%"] == max(finals)
    assert max(_first_reach(run["curve"], max(finals), "step") for run in base["runs"]) == 20
    assert 0 < base["time_to_target"]["100%"] <= base["wall_s"] and base["time_vs_baseline"] == 1.0
    # A higher lr gets there sooner, in every unit.
    assert fast["final_val_loss"] < base["final_val_loss"]
    assert fast["tokens_to_target"]["100%"] < base["tokens_to_target"]["100%"]
    assert fast["steps_to_target"]["100%"] < 20 and fast["flops_to_target"]["100%"] < base["flops"]
    assert fast["time_vs_baseline"] == pytest.approx(fast["time_to_target"]["100%"] / base["time_to_target"]["100%"])
    table = (out / "results.md").read_text()
    assert "on cpu, torch" in table and "| base | 20 | 10,240 |" in table and "| fast |" in table
    assert f"| {fast['time_vs_baseline']:.2f}x |" in table
    assert (out / "curves.png").stat().st_size > 10_000
    # Paired by seed: a recipe's n-th run is held to the baseline's n-th final loss, within the tolerance.
    assert summary["seed_targets"]["100%"] == finals and summary["tolerance"] == 0.001
    for row in (base, fast):
        reached = sorted(_first_reach(run["curve"], final * 1.001, "wall_s") for run, final in zip(row["runs"], finals))
        assert row["time_to_target"]["100%"] == pytest.approx(sum(reached) / 2)
    # --summarize: the same runs again, with another tolerance, training nothing.
    assert main(["bench", "target", "--summarize", str(out), "--tolerance", "0.5", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["tolerance"] == 0.5 and again["recipes"]["base"]["runs"] == base["runs"]
    assert again["recipes"]["fast"]["steps_to_target"]["100%"] <= fast["steps_to_target"]["100%"]
    assert json.loads((out / "results.json").read_text()) == again


@pytest.mark.slow
def test_budget_controls_compute_factor_and_merging(tmp_path, capsys):
    a = _bench(capsys, tmp_path / "a", "--recipe", "base", "--budgets", "0.5", "--seeds", "1", "--eval-every", "5")
    assert list(a["recipes"]) == ["base", "base@0.5x"]
    short = a["recipes"]["base@0.5x"]
    assert short["steps"] == 10 and short["budget"] == 0.5 and a["recipes"]["base"]["budget"] == 1.0
    assert short["compute_factor"] == pytest.approx(1.0) and short["compute_factor_extrapolated"] is False
    # a second bench of the same config, run apart with the baseline's next seed, merged into the
    # first's summary: the baseline gets both seeds, in seed order
    seed = a["recipes"]["base"]["runs"][0]["seed"]
    _bench(capsys, tmp_path / "b", "--recipe", f"base seed={seed + 1}", "--recipe", "fast optim.lr=6e-3",
           "--seeds", "1", "--eval-every", "5")
    assert main(["bench", "target", "--summarize", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                 str(tmp_path / "ab"), "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert list(merged["recipes"]) == ["base", "base@0.5x", "fast"]
    assert [r["seed"] for r in merged["recipes"]["base"]["runs"]] == [seed, seed + 1]
    fast = merged["recipes"]["fast"]
    points = [(merged["recipes"][n]["flops"], merged["recipes"][n]["final_val_loss"]) for n in ("base", "base@0.5x")]
    needed, extrapolated = plain_needs(points, fast["final_val_loss"])
    assert fast["compute_factor"] == pytest.approx(needed / fast["flops"])
    assert "compute factor" in (tmp_path / "ab" / "results.md").read_text()


def test_plain_needs_interpolates_in_log_amount():
    points = [(100.0, 3.0), (200.0, 2.0), (400.0, 1.5)]
    assert plain_needs(points, 2.0) == (pytest.approx(200.0), False)
    assert plain_needs(points, 2.5)[0] == pytest.approx(100 * 2 ** 0.5)  # halfway in log amount
    assert plain_needs(points, 1.0) == (pytest.approx(800.0), True)  # beyond the largest budget
    # a longer budget that ends worse (overfitting) is not on the curve
    assert plain_needs([(100.0, 2.0), (200.0, 2.5)], 2.0) == (None, False)


def test_warm_up_changes_no_result(tmp_path, capsys):
    """The config alone is the one recipe; its val loss equals a plain `trainframe train` run's."""
    summary = _bench(capsys, tmp_path / "bench", "--seeds", "1")
    assert list(summary["recipes"]) == ["baseline"]
    assert main(["train", CONFIG, *TINY, "loggers=[{name: jsonl}]", "trainer.eval_every=0", "trainer.sample_tokens=0",
                 "--run-dir", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = next(r["val_loss"] for r in rows if "val_loss" in r and r["step"] == 20)
    assert summary["recipes"]["baseline"]["final_val_loss"] == trained


def test_stop_at_target_from_a_recipes_file(tmp_path, capsys):
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("recipes:\n  - {name: base}\n  - {name: fast, config: %s, overrides: [optim.lr=1.0e-2]}\n"
                       % CONFIG)
    summary = _bench(capsys, tmp_path / "bench", "--recipes", str(recipes), "--seeds", "1", "--eval-every", "2",
                     "--stop-at-target")
    target = summary["targets"]["100%"]
    base, fast = summary["recipes"]["base"], summary["recipes"]["fast"]
    assert base["steps"] == 20 and base["stopped_at_target"] == 0
    assert fast["stopped_at_target"] == 1 and fast["runs"][0]["stopped"] == "target"
    assert fast["steps"] < 20 and fast["final_val_loss"] <= target
    assert fast["steps_to_target"]["100%"] == fast["steps"]  # it stopped at its first eval below the target
    assert "| fast* |" in (tmp_path / "bench" / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--recipe", "base", "--recipe", "fast optim.lrr=1"],
     "recipe 'fast': command line: optim.lrr: unknown key (did you mean 'lr'?)"),
    (["--recipe", "base", "--recipe", "base optim.lr=1e-3"], "recipe 'base' is named twice; recipe names must differ"),
    (["--recipe", "optim.lr=1e-3"], "--recipe 'optim.lr=1e-3': expected a name first, then KEY=VALUE overrides"),
    (["--seeds", "0"], "--seeds: expected a positive integer, got 0"),
    (["--budgets", "0.5,1.5"], "--budgets: expected shares in (0, 1), got 1.5"),
    (["--budgets", "half"], "--budgets: expected shares of the baseline's steps like 0.5,0.75, got 'half'"),
    (["--recipes", "missing.yaml"], "--recipes: missing.yaml: cannot read: No such file or directory"),
])
def test_bench_target_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "bench"
    assert main(["bench", "target", CONFIG, *TINY, "--out", str(out), *args]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not out.exists()  # nothing ran, nothing written


@pytest.mark.parametrize("args, message", [
    (["--summarize", "nowhere"], "--summarize: nowhere/results.json: cannot read: No such file or directory"),
    ([CONFIG, "--tolerance", "2"], "--tolerance: expected a share of the loss in [0, 1), got 2.0"),
    ([], "bench target: expected CONFIG (or --summarize DIR)"),
])
def test_bench_target_summarize_and_tolerance_bad_input(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "target", *args]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not list(tmp_path.iterdir())
