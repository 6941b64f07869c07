"""`trainframe bench throughput` on CPU, and the loop's hot path without a host sync per step
(fused AdamW skips a NaN step on the device; the counts are read back at log steps)."""

import json
import runpy
import signal
import sys

import pytest
import torch
from support import REPO, SHAKESPEARE

import trainframe
from trainframe.cli import main
from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.engine.loop import TrainingStopped
from trainframe.plugins import load_plugins


@pytest.mark.slow
def test_bench_throughput_json_and_table(tiny_config, capsys):
    assert main(["bench", "throughput", str(tiny_config), "trainer.batch_size=2", "--steps", "3", "--warmup", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"tokens_per_s", "ms_per_step", "mfu", "peak_mem_gb"} <= result.keys()
    assert result["tokens_per_s"] == pytest.approx(2 * 32 / (result["ms_per_step"] / 1e3))
    assert result["target_tokens_per_s"] == pytest.approx(result["tokens_per_s"])  # random tokens: no padding
    assert result["mfu"] is None and result["peak_mem_gb"] is None  # CPU: no known peak, no CUDA memory
    assert result["steps"] == 3 and result["data"] == "random"

    assert main(["bench", "throughput", str(tiny_config), "--steps", "2", "--warmup", "1", "--data", "real"]) == 0
    out = capsys.readouterr().out
    assert "real data" in out and "tokens/s" in out and "MFU" in out


def test_bench_rejects_bad_step_counts(tiny_config, capsys):
    assert main(["bench", "throughput", str(tiny_config), "--steps", "0"]) == 2
    assert "--steps and --warmup: expected positive integers" in capsys.readouterr().err


def _nan_on(trainer, calls: set):
    """Make the forward pass return NaN on the given (1-based) micro-batch calls."""
    forward, seen = trainer.forward_model, [0]

    def patched(x, y):
        seen[0] += 1
        loss = forward(x, y)
        return loss * float("nan") if seen[0] in calls else loss

    trainer.forward_model = patched


def test_nan_steps_skip_on_the_device_without_a_sync_per_step(tiny_config, tmp_path):
    plugins = load_plugins()
    overrides = ["optim.fused=true", "trainer.max_steps=8", "trainer.log_every=4", "trainer.save_every=0"]
    trainer = build_trainer(load_config(tiny_config, overrides, plugins.registry), plugins, tmp_path / "a")
    assert trainer.defer_sync
    _nan_on(trainer, {3, 4})
    seen = []

    class Watch:
        @trainframe.hookimpl
        def trainframe_step_end(self, step, metrics):
            seen.append((step, type(metrics["loss"])))

    trainer.listeners.append(Watch())
    trainer.run_dir.mkdir()
    trainer._attach_listeners()  # as fit() does; the first steps run one by one below
    for _ in range(2):
        trainer.train_step()
    before = [p.detach().clone() for p in trainer.params]
    for _ in range(2):  # the NaN steps: weights and optimizer state stay as they were
        trainer.train_step()
    for p, q in zip(trainer.params, before):
        assert torch.equal(p, q)
    assert trainer.bad_steps_total == 2  # read back at step 4, a log step
    assert int(trainer.optimizer.state[trainer.params[0]]["step"]) == 2
    trainer.fit()
    assert trainer.step == 8 and trainer.bad_steps == 0
    assert int(trainer.optimizer.state[trainer.params[0]]["step"]) == 6
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows if "loss" in r] == [2, 2]
    assert [type(r["loss"]) for r in rows if "loss" in r] == [type(None), float]  # NaN is written as null
    assert (5, torch.Tensor) in seen  # between log steps the loss stays on the device


def test_nan_stop_is_noticed_at_the_next_log_step(tiny_config, tmp_path):
    plugins = load_plugins()
    overrides = ["optim.fused=true", "trainer.max_steps=20", "trainer.log_every=3", "trainer.max_bad_steps=2"]
    trainer = build_trainer(load_config(tiny_config, overrides, plugins.registry), plugins, tmp_path / "b")
    _nan_on(trainer, set(range(1, 100)))
    with pytest.raises(TrainingStopped, match="2 consecutive steps"):
        trainer.fit()
    assert trainer.step == 3  # the first log step after two bad ones


def test_bench_profile_writes_a_trace_and_lists_operators(tiny_config, tmp_path, capsys):
    trace = tmp_path / "trace.json"
    assert main(["bench", "throughput", str(tiny_config), "trainer.batch_size=2", "--steps", "2", "--warmup", "1",
                 "--profile", str(trace), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(trace.read_text())["traceEvents"]
    top = result["profile"]["top"]
    assert result["profile"]["trace"] == str(trace) and top
    assert any("addmm" in r["name"] or "mm" in r["name"] for r in top)  # the model's matmuls show up
    assert all(r["ms_per_step"] > 0 for r in top)

    assert main(["bench", "throughput", str(tiny_config), "--profile", str(tmp_path / "no" / "t.json")]) == 2
    assert "--profile" in capsys.readouterr().err


def test_bench_clock_leaves_out_the_last_warmup_log_step(tiny_config, tmp_path):
    """The clock starts when the first timed step starts: the warm-up's last log step, where loggers
    are first set up (tensorboard's import), runs before it."""
    from trainframe.bench import StepTimer

    plugins = load_plugins()
    overrides = ["trainer.max_steps=3", "trainer.log_every=1", "trainer.save_every=0", "trainer.eval_every=0"]
    trainer = build_trainer(load_config(tiny_config, overrides, plugins.registry), plugins, tmp_path / "run")
    timer = StepTimer(trainer.device, warmup=1, last=3)
    events = []

    class Order:
        @trainframe.hookimpl
        def trainframe_log(self, step, metrics):
            if "loss" in metrics:
                events.append(("log", step, timer.start is not None))

    trainer.listeners += [timer, Order()]
    trainer.fit(finish=False)
    assert events[0] == ("log", 1, False)  # the warm-up's log step: before the clock
    assert events[1] == ("log", 2, True)
    assert timer.start is not None and timer.end is not None and timer.end > timer.start


def test_bench_profiler_is_stopped_when_the_run_ends_early(tiny_config, tmp_path):
    from trainframe.bench import StepTimer

    plugins = load_plugins()
    overrides = ["trainer.max_steps=2", "trainer.save_every=0", "trainer.eval_every=0"]
    trainer = build_trainer(load_config(tiny_config, overrides, plugins.registry), plugins, tmp_path / "run")
    timer = StepTimer(trainer.device, warmup=1, last=5, profile=True)  # the run ends at step 2 of 5
    trainer.listeners.append(timer)
    trainer.fit(finish=False)
    assert timer.start is not None and timer.end is None
    assert not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.slow
def test_scaling_script_runs_one_and_two_processes(tmp_path, monkeypatch, capsys):
    """benchmarks/scaling.py on the CPU (SMOKE: tiny shape, gloo): a 1-process run, a 2-process run, the table.
    The script itself runs in this process, as ``__main__``; its runs, each a process of its own (the
    1-process bench, torchrun and its two ranks), are the process boundary."""
    out = tmp_path / "scaling"
    monkeypatch.setenv("SMOKE", "1")  # read when the script is loaded; its runs inherit it
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["benchmarks/scaling.py", str(out), "2", "--", f"data.path={SHAKESPEARE}"])

    def too_long(*_):
        raise TimeoutError("benchmarks/scaling.py ran past 300 s")  # subprocess.run kills the run it waits for

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(300)
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_path("benchmarks/scaling.py", run_name="__main__")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert exited.value.code == 0, capsys.readouterr().err[-2000:]
    rows = [json.loads(line) for line in (out / "scaling.jsonl").read_text().splitlines()]
    assert [r["gpus"] for r in rows] == [1, 2] and all(r["tokens_per_s"] > 0 for r in rows)
    table = (out / "scaling.md").read_text()
    assert "| trainframe | 2 |" in table and table.strip().endswith("x |")
