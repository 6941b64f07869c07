"""A run directory: one owner at a time, nothing foreign overwritten, SIGTERM and the clock save,
killed saves leave nothing behind. A second process and SIGTERM run in subprocesses (they are the
point); everything else in-process."""

import json
import signal
import subprocess
import sys

import pytest
from support import TINY_YAML
from test_engine import _start, _wait_for_step

from trainframe.cli import main
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import rundir


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)), "metric rows repeated or out of order"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_run_dir_in_use_refuses_a_second_run_and_sigterm_saves(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    constant = ["schedule={name: constant}", "trainer.save_every=0"]  # max_steps leaves the lr alone
    proc = _start(tiny_config, run, *constant, "trainer.max_steps=100000")
    try:
        _wait_for_step(run, proc, 3)
        config = (run / "config.yaml").read_bytes()
        for argv in (["train", str(tiny_config), "--run-dir", str(run)], ["resume", str(run)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err == f"{run}: in use by another trainframe run (pid {proc.pid}); wait for it to end, " \
                          "or choose another --run-dir\n"
        assert (run / "config.yaml").read_bytes() == config
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM)" in err and "terminated at step" in out
    [(step, path)] = ckpt.step_checkpoints(run / "checkpoints")
    assert step >= 3 and max(losses(run)) == step and ckpt.load(path)["loop"]["step"] == step

    assert main(["resume", str(run), f"trainer.max_steps={step + 4}"]) == 0
    assert f"resuming from {path} at step {step}" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert main(["train", str(tiny_config), "--run-dir", str(straight), *constant, f"trainer.max_steps={step + 4}"]) == 0
    assert losses(run) == losses(straight)  # the losses of a run never stopped, step by step


def test_a_dead_runs_lock_does_not_block_and_resume_starts_over(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "trainer.max_steps=6", "trainer.save_every=0"]
    assert main(["train", str(tiny_config), *args]) == 0
    first = losses(run)
    # A run killed before its first checkpoint: its lock file names a process that is gone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / rundir.LOCK_FILE).write_text(dead.stdout)
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    capsys.readouterr()

    assert main(["train", str(tiny_config), *args]) == 2  # train never writes into a run
    assert "already holds a run; continue it with `trainframe resume" in capsys.readouterr().err
    assert main(["resume", str(run)]) == 0
    assert "from step 0: it stopped before its first checkpoint" in capsys.readouterr().out
    assert losses(run) == first  # every row once
    assert (run / rundir.LOCK_FILE).read_text().strip().isdigit()


def test_train_refuses_a_directory_it_did_not_create(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    (exp / "config.yaml").write_text("# my experiment\nextends: ../tiny.yaml\ntrainer: {max_steps: 3}\n")
    (exp / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (exp / "samples.txt").write_text("someone else's samples\n")
    before = snapshot(exp)
    assert main(["train", str(exp / "config.yaml"), "--run-dir", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err == f"{exp}: not empty and not a trainframe run directory (holds config.yaml, metrics.jsonl, " \
                  "samples.txt); train into a new or empty --run-dir\n"
    assert main(["resume", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run started by `trainframe train`" in err
    assert snapshot(exp) == before and sorted(p.name for p in exp.iterdir()) == sorted(p.name for p in before)


def test_save_every_minutes_saves_before_save_every(tiny_config, tmp_path):
    run, plain = tmp_path / "timed", tmp_path / "plain"
    common = ["trainer.max_steps=4", "trainer.save_every=10", "trainer.keep_last=10"]
    assert main(["train", str(tiny_config), "--run-dir", str(run), *common, "trainer.save_every_minutes=1e-9"]) == 0
    assert [s for s, _ in ckpt.step_checkpoints(run / "checkpoints")] == [1, 2, 3, 4]  # due after every step
    assert main(["train", str(tiny_config), "--run-dir", str(plain), *common]) == 0  # the default, 30 minutes
    assert [s for s, _ in ckpt.step_checkpoints(plain / "checkpoints")] == [4]


def test_stale_temp_files_are_removed_at_start(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run), "trainer.max_steps=10", "trainer.save_every=5"]) == 0
    ckpt_dir = run / "checkpoints"
    real = {p.name: p.read_bytes() for p in ckpt_dir.glob("step_*.pt")}
    for name in (".step_00000015.pt.4000001.tmp.pt", ".best.pt.4000002.tmp.pt"):  # saves killed mid-write
        (ckpt_dir / name).write_bytes(b"\0" * 600_000)
    capsys.readouterr()
    assert main(["resume", str(run), "trainer.max_steps=12"]) == 0
    err = capsys.readouterr().err
    assert f"trainframe: removed 2 temporary file(s) (1.2 MB) left in {ckpt_dir} by saves that were killed" in err
    assert not list(ckpt_dir.glob(".*"))
    assert all((ckpt_dir / name).read_bytes() == data for name, data in real.items())


def test_without_file_locks_a_run_goes_on_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rundir, "fcntl", None)
    held = rundir.lock(tmp_path)
    held.release()
    assert "cannot lock the run directory (file locks are not available on this platform)" in capsys.readouterr().err


@pytest.mark.slow
def test_ranks_of_one_run_share_its_directory_and_save_at_the_same_step(tiny_config, tmp_path):
    # Only rank 0 takes the lock; a checkpoint due by the clock is agreed at log steps (2, 4, 6).
    run = tmp_path / "ddp"
    # The launcher runs in this process; torchrun and its two ranks are the process boundary.
    assert main(["train", str(tiny_config), "--run-dir", str(run), "--nproc", "2", "trainer.max_steps=6",
                 "trainer.save_every=0", "trainer.log_every=2", "trainer.save_every_minutes=1e-9",
                 "trainer.keep_last=10"]) == 0
    assert [s for s, _ in ckpt.step_checkpoints(run / "checkpoints")] == [2, 4, 6]
