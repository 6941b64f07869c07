"""The training loop: accumulation, checkpoints, exact resume, failures, and the CLI around them."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from support import REPO, run_main

from trainframe.cli import main
from trainframe.config import load_config
from trainframe.engine import checkpoint as ckpt
from trainframe.engine.build import build_trainer
from trainframe.engine.loop import TrainingStopped
from trainframe.errors import UserError
from trainframe.plugins import load_plugins


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def make_trainer(plugins, config, run_dir, *overrides):
    cfg = load_config(config, list(overrides), plugins.registry)
    return build_trainer(cfg, plugins, run_dir)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def test_grad_accum_equals_big_batch(plugins, tiny_config, tmp_path):
    big = make_trainer(plugins, tiny_config, tmp_path / "a", "trainer.batch_size=32", "trainer.grad_accum=1")
    small = make_trainer(plugins, tiny_config, tmp_path / "b", "trainer.batch_size=8", "trainer.grad_accum=4")
    for _ in range(2):
        big.train_step()
        small.train_step()
    assert big.step == small.step == 2
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert big.tokens_seen == small.tokens_seen == 2 * 32 * 32


def test_grad_accum_weights_by_counted_targets(plugins, tiny_config, tmp_path):
    """With uneven padding, accumulated micro-batches still equal one big batch."""
    trainers = [make_trainer(plugins, tiny_config, tmp_path / n, f"trainer.batch_size={b}", f"trainer.grad_accum={a}")
                for n, b, a in (("a", 4, 1), ("b", 2, 2))]
    for t in trainers:
        original = t.dataset.next_batch

        def padded(batch_size, original=original):
            x, y = original(batch_size)
            y = y.clone()
            y[(x % 3) == 0] = -1  # chosen by content: the same either way, uneven per micro-batch
            return x, y

        t.dataset.next_batch = padded
        t.train_step()
    for p, q in zip(trainers[0].model.parameters(), trainers[1].model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_checkpoint_write_is_atomic(plugins, tiny_config, tmp_path, monkeypatch):
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run")
    trainer.train_step()
    good = trainer.save()
    trainer.train_step()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert files == [good.name]  # no partial file, no temp file left behind
    path, state = ckpt.load_latest_good(tmp_path / "run" / "checkpoints")
    assert path == good and state["loop"]["step"] == 1


def test_corrupt_checkpoint_falls_back(plugins, tiny_config, tmp_path, capsys):
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run")
    trainer.train_step()
    first = trainer.save()
    trainer.train_step()
    second = trainer.save()
    second.write_bytes(second.read_bytes()[:1000])  # truncated
    path, state = ckpt.load_latest_good(tmp_path / "run" / "checkpoints")
    assert path == first and state["loop"]["step"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt or unreadable checkpoint" in err[0] and second.name in err[0]
    with pytest.raises(UserError, match="corrupt or unreadable"):
        ckpt.load(second)


def test_loop_counters_are_one_object_with_the_checkpoint_keys_they_had(plugins, tiny_config, tmp_path):
    """``trainer.loop`` holds the counters; ``trainer.step`` and the others read and write it, and a
    checkpoint's ``loop`` entry has the keys it always had, so older checkpoints load the same."""
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run", "trainer.grad_accum=2")
    trainer.train_step()
    assert trainer.state_dict()["loop"] == {
        "step": 1, "tokens_seen": trainer.tokens_seen, "best_val": float("inf"), "bad_steps": 0,
        "bad_steps_total": 0, "backward_passes": 2, "max_steps": trainer.max_steps, "phase": "full", "world_size": 1}
    older = {"step": 7, "tokens_seen": 896, "best_val": 2.5, "bad_steps": 1, "bad_steps_total": 3,
             "backward_passes": 14, "max_steps": 20, "phase": "full", "world_size": 1}
    trainer.loop.load_state_dict(older)
    assert (trainer.step, trainer.tokens_seen, trainer.best_val, trainer.bad_steps, trainer.bad_steps_total,
            trainer.backward_passes, trainer.phase.value) == (7, 896, 2.5, 1, 3, 14, "full")
    trainer.step += 1
    assert trainer.state_dict()["loop"] == {**older, "step": 8, "max_steps": trainer.max_steps}


def test_checkpoint_of_another_layout_is_one_line(plugins, tiny_config, tmp_path):
    # Weights from before the fused qkv load (the model converts them) but the optimizer state holds
    # three tensors where the model now has one: a clear error, not a traceback.
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run")
    trainer.train_step()
    state = trainer.state_dict()
    for name in [n for n in state["model"] if n.endswith("attn.qkv.weight")]:
        q, k, v = state["model"].pop(name).chunk(3)
        base = name[: -len("qkv.weight")]
        state["model"].update({f"{base}q.weight": q, f"{base}k.weight": k, f"{base}v.weight": v})
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"] = groups[0]["params"] + [max(p for g in groups for p in g["params"]) + 1]
    with pytest.raises(UserError, match="does not fit this run's model and optimizer"):
        make_trainer(plugins, tiny_config, tmp_path / "other").load_state_dict(state)


def test_keep_last_and_best(plugins, tiny_config, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(plugins, tiny_config, run, "trainer.max_steps=12", "trainer.save_every=2",
                           "trainer.keep_last=2", "trainer.eval_every=4")
    trainer.fit()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "step_00000010.pt", "step_00000012.pt"]
    best = ckpt.load(run / "checkpoints" / "best.pt")
    vals = {r["step"]: r["val_loss"] for r in metrics(run) if "val_loss" in r}
    assert best["loop"]["best_val"] == min(vals.values())
    assert best["loop"]["step"] == min(vals, key=vals.get)


def test_nonfinite_steps_are_skipped_then_stop(plugins, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    trainer = make_trainer(plugins, tiny_config, run, "trainer.max_bad_steps=3", "trainer.save_every=0")
    forward = trainer.forward_model
    poisoned = {3, 4, 6, 7, 8}  # two bad steps, a good one, then three bad: the run stops

    def maybe_nan(x, y):
        loss = forward(x, y)
        return loss * float("nan") if trainer.step in poisoned else loss

    trainer.forward_model = maybe_nan
    snapshots = {}
    original_step = trainer.train_step

    def step_and_snapshot():
        original_step()
        snapshots[trainer.step] = [p.detach().clone() for p in trainer.model.parameters()]

    trainer.train_step = step_and_snapshot
    with pytest.raises(TrainingStopped, match="3 consecutive steps with a NaN/Inf"):
        trainer.fit()
    assert trainer.step == 9 and trainer.bad_steps_total == 5
    # Skipped steps leave the weights alone; the saved checkpoint holds the last good weights.
    for a, b in zip(snapshots[4], snapshots[3]):
        assert torch.equal(a, b)
    state = ckpt.load(run / "checkpoints" / "step_00000009.pt")
    for p, saved in zip(snapshots[6], [state["model"][k] for k, _ in trainer.model.named_parameters()]):
        assert torch.equal(p, saved)
    rows = metrics(run)
    assert rows[-1]["skipped_steps"] == 5 and rows[3]["loss"] is None  # NaN is logged as null
    assert "non-finite loss or gradient, update skipped" in capsys.readouterr().err


def _wait_for_step(run_dir, proc, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
            if rows and rows[-1]["step"] >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


def _start(config, run_dir, *overrides):
    return subprocess.Popen([sys.executable, "-m", "trainframe", "train", str(config), "--run-dir", str(run_dir),
                             *overrides], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# outer-gated: checkpoints every 5 steps fall inside its 6-step blocks (anchor, momentum, ensemble)
GATED_MID_BLOCK = "phases={name: outer-gated, every: 6, verify_batches: 1, explore: 2, hidden: 8}"


@pytest.mark.slow
@pytest.mark.parametrize("phases", [[], [GATED_MID_BLOCK]], ids=["plain", "outer-gated"])
def test_sigkill_and_resume_logs_the_same_losses(tiny_config, tmp_path, phases):
    # One thread in both processes: the reference runs in this one, whose thread count other tests set.
    overrides = ["trainer.max_steps=40", "trainer.save_every=5", "trainer.eval_every=10", "model.dropout=0.1",
                 "trainer.cpu_threads=1", *phases]
    reference = tmp_path / "reference"
    result = run_main("train", tiny_config, "--run-dir", reference, *overrides)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    proc = _start(tiny_config, killed, *overrides)
    # A seeded step (KILL_SEED=N picks another), printed with the step the run had logged when the
    # signal landed: a failure says which run to replay.
    seed = int(os.environ.get("KILL_SEED", "0"))
    kill_at = random.Random(seed).randint(8, 33)
    _wait_for_step(killed, proc, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines() if x.endswith("}")]
    print(f"KILL_SEED={seed}: SIGKILL at step {kill_at} (last logged step {logged[-1]})")
    result = run_main("resume", killed)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout

    assert train_losses(killed) == train_losses(reference)  # exact, step by step
    val = lambda run: {r["step"]: r["val_loss"] for r in metrics(run) if "val_loss" in r}  # noqa: E731
    assert val(killed) == val(reference)
    assert sorted(r["step"] for r in metrics(killed)) == sorted(r["step"] for r in metrics(reference))
    if phases:  # the outer steps after the resume are the reference's: same gains, same rollbacks
        outer = lambda run: [(r["step"], r["outer_gain"]) for r in metrics(run) if "outer_gain" in r]  # noqa: E731
        assert len(outer(reference)) == 6 and outer(killed) == outer(reference)


@pytest.mark.slow
def test_sigint_saves_and_exits_cleanly(tiny_config, tmp_path):
    run = tmp_path / "run"
    proc = _start(tiny_config, run, "trainer.max_steps=100000", "trainer.save_every=0")
    _wait_for_step(run, proc, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in out
    [(step, path)] = ckpt.step_checkpoints(run / "checkpoints")
    assert step >= 3 and ckpt.load(path)["loop"]["step"] == step


def test_resume_with_longer_wsd_run(tiny_config, tmp_path):
    run = tmp_path / "run"
    result = run_main("train", tiny_config, "--run-dir", run, "schedule={name: wsd, decay_fraction: 0.2}",
                     "trainer.max_steps=20")
    assert result.returncode == 0, result.stderr
    result = run_main("resume", run, "trainer.max_steps=40")
    assert result.returncode == 0, result.stderr
    assert "trainer.max_steps changed from 20 to 40" in result.stdout
    lrs = {r["step"]: r["lr"] for r in metrics(run) if "lr" in r}
    assert max(lrs) == 40 and lrs[25] == pytest.approx(3e-3)  # back in the stable phase
    assert "max_steps: 40" in (run / "config.yaml").read_text()
    again = run_main("resume", run)
    assert again.returncode == 0 and "the run is complete" in again.stdout


def test_train_leaves_a_complete_run_dir_and_generates(tiny_config, tmp_path):
    run = tmp_path / "run"
    result = run_main("train", tiny_config, "--run-dir", run, "trainer.sample_tokens=20",
                     "trainer.sample_prompt=ROMEO", "loggers=[{name: jsonl}, {name: tensorboard}, {name: console}]")
    assert result.returncode == 0, result.stderr
    assert "M params" in result.stdout and "step 30/30" in result.stdout
    assert (run / "config.yaml").exists() and (run / "samples.txt").read_text().count("ROMEO") >= 1
    assert list((run / "tb").glob("events.out.tfevents.*"))
    row = metrics(run)[0]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "phase"} <= row.keys()
    assert any("val_loss" in r and "val_ppl" in r for r in metrics(run))
    gen = run_main("generate", run, "--prompt", "To be", "--max-tokens", "15", "--temperature", "0")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("To be") and len(gen.stdout) > len("To be")
    assert main(["plot", str(run)]) == 0 and (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert main(["plot", str(tmp_path)]) == 2  # not a run directory: one line, exit 2
    again = run_main("train", tiny_config, "--run-dir", run)
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.parametrize("overrides,message", [
    (["data.path=/nonexistent/corpus.txt"], "data.path: no file matches '/nonexistent/corpus.txt'"),
    (["tokenizer.name=nope"], "command line: tokenizer.name: unknown tokenizer 'nope'"),
    (["callbacks=[{name: not_installed}]"], "command line: callbacks.0.name: unknown callback 'not_installed'"),
    (["trainer.cuda_graphs=true"], "trainer.cuda_graphs needs a CUDA device and trainer.compile on (this run: cpu"),
])
def test_cli_bad_input_exits_2(tiny_config, tmp_path, overrides, message):
    result = run_main("train", tiny_config, "--run-dir", tmp_path / "run", *overrides)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_cli_unwritable_run_dir(tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_main("train", tiny_config, "--run-dir", blocker / "run")
    assert result.returncode == 2 and "run directory is not writable" in result.stderr
    assert blocker.read_text() == "not a directory"


def test_resume_errors(tmp_path):
    result = run_main("resume", tmp_path)
    assert result.returncode == 2 and "not a run directory" in result.stderr


def test_plugins_command_lists_builtins():
    result = run_main("plugins")
    assert result.returncode == 0
    assert "trainframe 0.1.0" in result.stdout and "schedule: constant, cosine, wsd" in result.stdout


def test_deterministic_switch_runs_and_changes_nothing_on_cpu(tiny_config, tmp_path):
    plain, det = tmp_path / "plain", tmp_path / "det"
    for run, extra in ((plain, []), (det, ["trainer.deterministic=true"])):
        result = run_main("train", tiny_config, "--run-dir", run, "trainer.max_steps=8", *extra)
        assert result.returncode == 0, result.stderr
    assert train_losses(plain) == train_losses(det)


def test_cuda_graphs_only_where_replay_is_correct():
    # Replays overwrite their outputs: accumulated gradients would be overwritten, DDP hooks run outside.
    from trainframe.config import TrainerConfig
    from trainframe.engine.distributed import World
    from trainframe.engine.loop import use_cuda_graphs

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    for setting in (True, "auto"):
        assert use_cuda_graphs(TrainerConfig(cuda_graphs=setting), True, cuda, World())
    assert not use_cuda_graphs(TrainerConfig(cuda_graphs=False), True, cuda, World())
    for config, compiled, world, message in [
        (dict(grad_accum=4), True, World(), "needs trainer.grad_accum=1 \\(got 4\\)"),
        ({}, True, World(rank=0, local_rank=0, size=2), "one process only"),
        ({}, False, World(), "this run: cuda, compile off"),
    ]:
        with pytest.raises(UserError, match=message):
            use_cuda_graphs(TrainerConfig(cuda_graphs=True, **config), compiled, cuda, world)
        assert not use_cuda_graphs(TrainerConfig(cuda_graphs="auto", **config), compiled, cuda, world)


def test_zero_byte_newest_checkpoint_falls_back(plugins, tiny_config, tmp_path, capsys):
    """A zero-byte file (a disk filled mid-save) is one line, and resume takes the previous one."""
    trainer = make_trainer(plugins, tiny_config, tmp_path / "run")
    trainer.train_step()
    first = trainer.save()
    trainer.train_step()
    trainer.save().write_bytes(b"")
    path, state = ckpt.load_latest_good(tmp_path / "run" / "checkpoints")
    assert path == first and state["loop"]["step"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt or unreadable checkpoint (EOFError)" in err[0]


@pytest.fixture
def four_cores(monkeypatch):
    """This process sees 4 cores and no thread variables; torch's thread count is restored after."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_threads_default_leaves_a_core_and_keeps_a_chosen_count(four_cores, monkeypatch):
    from trainframe.engine.build import set_cpu_threads

    torch.set_num_threads(4)  # torch's default: every core
    assert set_cpu_threads(None).startswith("cpu threads: 3 of 4 cores (one core left to other processes")
    assert torch.get_num_threads() == 3
    torch.set_num_threads(2)  # torch.set_num_threads before the run
    assert set_cpu_threads(None) == "cpu threads: 2 of 4 cores (kept: torch already uses fewer)"
    torch.set_num_threads(4)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert set_cpu_threads(None) == "cpu threads: 4 of 4 cores (kept: OMP_NUM_THREADS=4)"
    assert set_cpu_threads(2) == "cpu threads: 2 of 4 cores (trainer.cpu_threads)"  # the config wins
    assert torch.get_num_threads() == 2


def test_cpu_run_applies_trainer_cpu_threads_and_says_so(plugins, tiny_config, tmp_path, four_cores, capsys):
    make_trainer(plugins, tiny_config, tmp_path / "run", "trainer.cpu_threads=1")
    assert torch.get_num_threads() == 1
    assert "cpu threads: 1 of 4 cores (trainer.cpu_threads)\n" in capsys.readouterr().out
