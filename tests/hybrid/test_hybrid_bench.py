"""`trainframe bench predictive` on a tiny CPU config."""

import json

import pytest
from support import run_main


@pytest.mark.slow
def test_bench_predictive_tiny(tiny_config, tmp_path):
    out = tmp_path / "bench"
    result = run_main("bench", "predictive", tiny_config, "--seeds", "2", "--controllers",
                     "hybrid,full,skip", "--eval-every", "3", "--json", "--out", out, "trainer.max_steps=12", "phases.warmup_steps=4", "phases.full_steps=3",
                     "phases.min_predict_steps=2", "phases.max_predict_steps=4", "phases.correct_steps=3",
                     "phases.confidence_threshold=0.0", "phases.hidden=16")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert summary == json.loads((out / "results.json").read_text())
    # the budget-fit controls (--budgets default 0.5,0.75) follow the baseline
    assert list(summary["recipes"]) == ["full", "full@0.5x", "full@0.75x", "hybrid", "skip"]
    assert [summary["recipes"][n]["steps"] for n in ("full@0.5x", "full@0.75x")] == [6, 9]
    for row in summary["recipes"].values():
        assert row["compute_factor"] is None or row["compute_factor"] > 0
    full, hybrid, skip = (summary["recipes"][c] for c in ("full", "hybrid", "skip"))
    for row in summary["recipes"].values():
        assert {"steps", "backward_passes", "flops", "wall_s", "final_val_loss", "time_to_target"} <= set(row)
        assert len(row["runs"]) == 2
    assert full["steps"] == hybrid["steps"] == skip["steps"] == 12
    assert full["backward_passes"] == 12 and full["optimizer_steps"] == 12
    assert hybrid["backward_passes"] < 12 and hybrid["predict_steps"] > 0 and hybrid["correct_steps"] > 0
    # fewer model FLOPs; the controller's time, converted to FLOPs, is counted on top
    assert hybrid["controller_s"] > 0 and hybrid["controller_flops"] > 0
    assert hybrid["flops"] - hybrid["controller_flops"] < full["flops"]
    assert skip["backward_passes"] < 12
    # full reaches its own targets, by its last eval at the latest
    assert 0 < full["time_to_target"]["100%"] <= full["wall_s"]
    assert full["time_vs_baseline"] == 1.0
    assert (out / "curves.png").stat().st_size > 10_000
    table = (out / "results.md").read_text()
    assert "| hybrid |" in table and "speedup" not in table.lower()


def test_bench_predictive_bad_input(tiny_config):
    result = run_main("bench", "predictive", tiny_config, "--controllers", "hybrid,magic")
    assert result.returncode == 2
    assert result.stderr.strip() == ("--controllers: unknown phase controller 'magic'; registered: "
                                     "extrapolate, full, hybrid, nowcast, outer, outer-gated, selective, skip")
    result = run_main("bench", "predictive", tiny_config, "--controllers", "hybrid,skip")
    assert result.returncode == 2 and "'full' is required" in result.stderr
