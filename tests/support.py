"""Paths and helpers the tests import by name (conftest.py holds only fixtures: with a conftest in
tests/workflows too, importing from "conftest" would depend on which one pytest loaded first)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHAKESPEARE = SHARED / "text" / "tinyshakespeare.txt"


def run_cli(*args, cwd=REPO, env=None, timeout=300):
    """Run ``python -m trainframe ARGS`` and return the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "trainframe", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_main(*args):
    """``trainframe ARGS`` in this process (``trainframe.cli.main``), its output captured; the result
    has ``returncode``, ``stdout`` and ``stderr`` like ``run_cli``'s. For tests whose point is not a
    process boundary: no interpreter start, no plugin discovery from scratch."""
    import contextlib
    import io

    from trainframe.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["trainframe", *map(str, args)], code or 0, out.getvalue(), err.getvalue())


TINY_YAML = f"""
name: tiny-test
seed: 7
model: {{name: gpt, preset: tiny, d_model: 32, n_layer: 2, n_head: 2, context: 32}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}, val_fraction: 0.1}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: cosine, warmup_steps: 5}}
loggers: [{{name: jsonl}}]
trainer:
  max_steps: 30
  batch_size: 4
  eval_every: 0
  eval_batches: 2
  log_every: 1
  save_every: 10
  sample_tokens: 0
  device: cpu
"""


def child_pids(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux: reads /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def survivors(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone) after waiting up to ``timeout`` s."""

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.time() + timeout
    while any(map(alive, pids)) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@contextlib.contextmanager
def own_process_group(proc):
    """Around a test of a process started with ``start_new_session=True``: whatever the assertions
    find, its whole group is killed at the end, so the test leaves no process behind."""
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group (the parent's pid): anything still in it
        proc.wait()


def kill_parent_alone(proc) -> None:
    """SIGKILL ``proc`` alone and check that its pool workers exit by themselves."""
    children = child_pids(proc.pid)
    assert len(children) >= 2  # the pool's workers (and multiprocessing's resource tracker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not survivors(children)  # the workers went with their parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_two_ranks(rank: int, port: int):
    """In a process of ``mp.spawn(nprocs=2)``: the environment torchrun would set, then the gloo
    process group; returns trainframe's world description."""
    import torch

    from trainframe.engine import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return distributed.init("cpu")


def _two_rank_scenarios(rank: int, port: int, scenarios):
    import gc

    from trainframe.engine import distributed, sharded

    world = join_two_ranks(rank, port)
    for scenario, *args in scenarios:
        scenario(world, *args)
        # The next scenario starts with no sharded save in flight, the last one's trainers freed
        # and both ranks in step.
        sharded.drain()
        gc.collect()
        distributed.barrier(world)
    distributed.shutdown(world)


def spawn_two_ranks(*scenarios) -> None:
    """Run ``scenarios`` -- each ``(function, *args)``, the function at a test module's top level --
    one after the other in the same two gloo ranks of one ``mp.spawn``, each called as
    ``function(world, *args)``. Every spawn pays two interpreter starts, ``import torch`` and plugin
    loading (seconds on a CPU), so the session runs its two-rank scenarios in one (the ``two_ranks``
    fixture, conftest.py); each scenario writes its results to files that its own test asserts on."""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_scenarios, args=(free_port(), scenarios), nprocs=2, join=True)


def train_tiny_run(tmp_path, name, *overrides, steps=12, save_every=None):
    """Train ``TINY_YAML`` (plus ``overrides``) in this process into ``tmp_path/name`` for ``steps``
    steps, a checkpoint every ``save_every`` (default: at the end); returns the run dir."""
    import yaml

    from trainframe.testing import train_from_dict

    overrides = [f"trainer.max_steps={steps}", f"trainer.save_every={save_every or steps}", *overrides]
    return train_from_dict(yaml.safe_load(TINY_YAML), tmp_path / name, overrides).run_dir


def first_party_plugins() -> list[str]:
    """The entry-point plugins trainframe's own distribution installs."""
    from importlib import metadata

    from trainframe.plugins import GROUP

    return sorted(ep.name for ep in metadata.entry_points(group=GROUP)
                  if ep.dist is not None and ep.dist.metadata["Name"] == "trainframe")


def core_plugins():
    """A plugin manager of the core alone: the first-party plugins disabled (TRAINFRAME_DISABLE_PLUGINS)."""
    from trainframe.plugins import load_plugins

    before = os.environ.get("TRAINFRAME_DISABLE_PLUGINS")
    os.environ["TRAINFRAME_DISABLE_PLUGINS"] = ",".join([*first_party_plugins(), *(before or "").split(",")])
    try:
        return load_plugins()
    finally:
        if before is None:
            del os.environ["TRAINFRAME_DISABLE_PLUGINS"]
        else:
            os.environ["TRAINFRAME_DISABLE_PLUGINS"] = before
