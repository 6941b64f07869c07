"""Sharded checkpoints under FSDP2 (engine/sharded.py), with two gloo ranks on the CPU: each rank
writes its own shard, in the background mid-run; a resume from a checkpoint written while training
went on logs exactly the losses of the run that was never stopped; a checkpoint that is not whole is
skipped; eval, export and generate read the directory in one process, without a process group."""

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from support import TINY_YAML

from trainframe.config import load_config
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import distributed
from trainframe.engine.build import build_trainer
from trainframe.errors import UserError
from trainframe.plugins import load_plugins

SETTINGS = ["trainer.distributed=fsdp2", "trainer.max_steps=6", "trainer.save_every=2", "trainer.keep_last=2",
            "trainer.eval_every=2", "trainer.eval_batches=1", "trainer.batch_size=2", "trainer.log_every=1",
            "model.dropout=0.1"]  # dropout: each rank's RNG stream must come back too


def _losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _sharded_ranks(world, directory):
    from pathlib import Path

    config, run_dir, out = f"{directory}/config.yaml", Path(directory) / "run", f"{directory}/result.pt"
    plugins = load_plugins()
    async_saves = []
    original = dcp.async_save
    dcp.async_save = lambda *a, **k: async_saves.append(1) or original(*a, **k)
    cfg = load_config(config, SETTINGS, plugins.registry)
    trainer = build_trainer(cfg, plugins, run_dir, world)
    if world.is_main:  # as `trainframe train` leaves it, for eval/export/generate
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    trainer.fit()
    full = {k: v.clone() for k, v in trainer.state_dict()["model"].items()}  # gathered: rank 0 gets it whole
    uninterrupted = _losses(run_dir) if world.is_main else None
    if world.is_main:  # the newest checkpoint loses a shard's tail: resume must take step 4's
        shard = run_dir / "checkpoints" / "step_00000006" / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[:-10])
    distributed.barrier(world)
    resumed = build_trainer(load_config(config, SETTINGS, plugins.registry), plugins, run_dir, world)
    path, _ = resumed.resume()
    step_resumed = resumed.step
    resumed.fit()
    if world.is_main:
        torch.save({"uninterrupted": uninterrupted, "resumed": _losses(run_dir), "path": str(path),
                    "step": step_resumed, "full": full, "async_saves": len(async_saves)}, out)
    dcp.async_save = original  # the session's later two-rank scenarios run in this process too


# Run in the session's one two-rank spawn (the two_ranks fixture, conftest.py), in a directory of its own.
TWO_RANKS = {"sharded": (_sharded_ranks, TINY_YAML)}


@pytest.mark.slow
def test_fsdp2_sharded_checkpoints_resume_exactly_and_read_in_one_process(two_ranks, tmp_path, capsys):
    tiny_config, run_dir = two_ranks["sharded"] / "config.yaml", two_ranks["sharded"] / "run"
    result = torch.load(two_ranks["sharded"] / "result.pt")

    # Mid-run saves went through dcp.async_save (steps 2 and 4, and best at each eval that improved).
    assert result["async_saves"] >= 2
    # The truncated step-6 checkpoint was skipped; step 4's, written while training went on, resumed
    # and logged the uninterrupted run's losses exactly.
    assert result["path"].endswith("step_00000004") and result["step"] == 4
    assert result["resumed"] == result["uninterrupted"] and sorted(result["resumed"]) == [1, 2, 3, 4, 5, 6]

    ckpt_dir = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best", "step_00000004", "step_00000006"]  # keep_last=2
    assert [s for s, _ in ckpt.step_checkpoints(ckpt_dir)] == [4, 6]
    assert sorted(p.name for p in (ckpt_dir / "step_00000006").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "trainframe_rank0.pt", "trainframe_rank1.pt"]

    # One process, no process group: the whole model, equal to the shards gathered under FSDP2.
    path, state = ckpt.load_checkpoint(run_dir, "latest")
    assert path == ckpt_dir / "step_00000006" and state["loop"]["step"] == 6
    assert state["model"].keys() == result["full"].keys()
    for key, value in result["full"].items():
        assert torch.equal(state["model"][key], value), key
    assert ckpt.load_checkpoint(run_dir, "4")[1]["loop"]["step"] == 4
    assert ckpt.load_checkpoint(run_dir, "best")[0] == ckpt_dir / "best"

    from trainframe.cli import main

    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] > 0
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export"), "--checkpoint", "best"]) == 0
    assert main(["eval", str(tmp_path / "export"), "--json"]) == 0
    assert main(["generate", str(run_dir), "--prompt", "ROMEO:", "--max-tokens", "8"]) == 0

    # A save killed midway leaves only its hidden temporary directory: never a checkpoint, and the
    # next train/resume removes it.
    stale = ckpt_dir / ".step_00000008.12345.tmp"
    stale.mkdir()
    (stale / "__0_0.distcp").write_bytes(b"x" * 100)
    assert [s for s, _ in ckpt.step_checkpoints(ckpt_dir)] == [4, 6]
    assert ckpt.remove_stale_temps(ckpt_dir) == (1, 100) and not stale.exists()

    plugins = load_plugins()
    # Another number of processes: today's one line (each rank's data position and RNG streams belong
    # to a rank, so DCP's resharding of the tensors alone would not resume exactly).
    one = build_trainer(load_config(tiny_config, SETTINGS, plugins.registry), plugins, run_dir)
    with pytest.raises(UserError, match=r"written by 2 process\(es\); resume it with the same number"):
        one.resume()
    # A sharded checkpoint does not load into a plain trainer of the same size either (one line).
    meta = ckpt.load(ckpt_dir / "step_00000006")
    meta["loop"]["world_size"] = 1
    with pytest.raises(UserError, match="is sharded"):
        one.load_state_dict(meta, ckpt_dir / "step_00000006")
