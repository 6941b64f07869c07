"""Data parallelism on CPU: two gloo processes set up the way torchrun sets them up (RANK,
WORLD_SIZE, LOCAL_RANK in the environment) against one process at the same global batch."""

import json
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
from support import TINY_YAML

from trainframe.config import load_config
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import distributed
from trainframe.engine.build import build_trainer
from trainframe.errors import UserError
from trainframe.plugins import load_plugins

COMMON = ["trainer.log_every=1", "trainer.save_every=2", "trainer.eval_batches=1", "trainer.max_steps=4"]


def _flat_params(trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def _full_weights(trainer) -> torch.Tensor:
    """Every weight, gathered from the shards under FSDP2 (a collective: all ranks call it; the
    full copy lands on rank 0 only, the one that writes checkpoints)."""
    values = [v.flatten().float() for v in trainer.state_dict()["model"].values()]
    return torch.cat(values) if values else None


def _ddp_ranks(world, directory):
    config, run_dir, out = f"{directory}/config.yaml", f"{directory}/run", f"{directory}/ranks.pt"
    plugins = load_plugins()
    per_rank = ["trainer.batch_size=2", "trainer.grad_accum=2"]  # no_sync on the first micro-batch
    trainer = build_trainer(load_config(config, [*COMMON, *per_rank], plugins.registry), plugins, run_dir, world)
    trainer.fit()
    replicas = [torch.empty_like(_flat_params(trainer)) for _ in range(2)]
    dist.all_gather(replicas, _flat_params(trainer))
    ddp_weights = _full_weights(trainer)
    # The same run with sharded weights (FSDP2) and its resume.
    sharded_cfg = load_config(config, [*COMMON, *per_rank, "trainer.distributed=fsdp2"], plugins.registry)
    sharded = build_trainer(sharded_cfg, plugins, run_dir + "-fsdp2", world)
    sharded.fit()
    fsdp_weights = _full_weights(sharded)
    # Resume with the same world size and train two more steps.
    more = load_config(config, [*COMMON, *per_rank, "trainer.max_steps=6"], plugins.registry)
    resumed = build_trainer(more, plugins, run_dir, world)
    resumed.resume()
    resumed.fit()
    after = [torch.empty_like(_flat_params(resumed)) for _ in range(2)]
    dist.all_gather(after, _flat_params(resumed))
    if world.is_main:
        torch.save({"replicas": replicas, "after_resume": after, "params": _flat_params(trainer),
                    "ddp": ddp_weights, "fsdp2": fsdp_weights}, out)


def _draws() -> list[float]:
    return [*torch.rand(3).tolist(), random.random(), float(np.random.rand())]


def _rng_ranks(world, directory):
    config, run_dir, out, rank = f"{directory}/config.yaml", f"{directory}/run", f"{directory}/draws", world.rank
    plugins = load_plugins()
    # Dropout draws from the torch RNG during training, so the saved streams are mid-run ones.
    cfg = load_config(config, ["trainer.log_every=1", "trainer.save_every=0", "trainer.max_steps=2",
                               "trainer.batch_size=2", "trainer.eval_every=0", "model.dropout=0.1"],
                      plugins.registry)
    first = build_trainer(cfg, plugins, run_dir, world)
    # Seeds of their own per rank, so the ranks' streams differ from the start.
    torch.manual_seed(100 + rank), random.seed(100 + rank), np.random.seed(100 + rank)
    first.fit()  # ends with the step-2 checkpoint; nothing draws after it
    result = {"after_save": _draws()}
    # Streams moved elsewhere (as a new process would have them), then the resume puts them back.
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    trainer = build_trainer(cfg, plugins, run_dir, world)
    trainer.resume()
    result["resumed"] = _draws()
    # A checkpoint written before per-rank states (no rng_ranks): every rank takes "rng".
    old = ckpt.load(ckpt.step_path(f"{run_dir}/checkpoints", 2))
    del old["rng_ranks"]
    trainer.load_state_dict(old)
    result["old_format"] = _draws()
    torch.save(result, f"{out}.{rank}")


# Run in the session's one two-rank spawn (the two_ranks fixture, conftest.py), each in a directory of its own.
TWO_RANKS = {"ddp": (_ddp_ranks, TINY_YAML), "rng": (_rng_ranks, TINY_YAML)}


@pytest.mark.slow
def test_two_ranks_ddp_and_fsdp2_match_one_process_at_the_same_global_batch(two_ranks, tmp_path):
    tiny_config, run_dir = two_ranks["ddp"] / "config.yaml", two_ranks["ddp"] / "run"
    result = torch.load(two_ranks["ddp"] / "ranks.pt")
    # Identical weights on both ranks, before and after a resume.
    assert torch.equal(*result["replicas"])
    assert torch.equal(*result["after_resume"])
    torch.testing.assert_close(result["fsdp2"], result["ddp"], rtol=1e-5, atol=1e-6)

    plugins = load_plugins()
    single = build_trainer(load_config(tiny_config, [*COMMON, "trainer.batch_size=4", "trainer.grad_accum=2"],
                                       plugins.registry), plugins, tmp_path / "single")
    single.fit()
    torch.testing.assert_close(result["params"], _flat_params(single), rtol=1e-4, atol=1e-5)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]  # rank 0 logs once; resume appended
    single_rows = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    single_losses = [r["loss"] for r in single_rows if "loss" in r]
    assert [r["loss"] for r in train[:4]] == pytest.approx(single_losses, rel=1e-4)
    assert train[3]["tokens"] == single_rows[3]["tokens"] == 4 * 8 * 32  # tokens over all ranks

    # A checkpoint of two processes does not resume in one.
    with pytest.raises(UserError, match="same number"):
        build_trainer(load_config(tiny_config, COMMON, plugins.registry), plugins, run_dir).resume()


@pytest.mark.slow
def test_each_rank_resumes_its_own_rng_state(two_ranks):
    run_dir, out = two_ranks["rng"] / "run", two_ranks["rng"] / "draws"
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for r in ranks:
        assert r["resumed"] == r["after_save"]
    assert ranks[0]["after_save"] != ranks[1]["after_save"]
    assert ranks[0]["old_format"] == ranks[1]["old_format"] == ranks[0]["after_save"]

    state = ckpt.load(run_dir / "checkpoints" / "step_00000002.pt")  # weights_only
    assert isinstance(state["rng_ranks"], list) and len(state["rng_ranks"]) == 2
    assert torch.equal(state["rng"]["torch"], state["rng_ranks"][0]["torch"])


def test_single_process_checkpoint_keeps_one_rng_dict(tiny_config, tmp_path):
    plugins = load_plugins()
    trainer = build_trainer(load_config(tiny_config, ["trainer.max_steps=1"], plugins.registry), plugins,
                            tmp_path / "one")
    trainer.fit()
    state = ckpt.load(ckpt.step_path(tmp_path / "one" / "checkpoints", 1))
    assert isinstance(state["rng"], dict) and set(state["rng"]) >= {"python", "numpy", "torch"}
    assert "rng_ranks" not in state
    trainer.load_state_dict(state)
    resumed = _draws()
    ckpt.set_rng_state(state["rng"])
    assert _draws() == resumed


def test_nproc_is_checked(tiny_config, tmp_path, capsys):
    from trainframe.cli import main

    assert main(["train", str(tiny_config), "--nproc", "0", "--run-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == "--nproc: expected a positive integer, got 0"
    assert not (tmp_path / "r").exists()


def test_bf16_gradient_reduce_needs_cuda():
    # The bf16 all-reduce hook exists for NCCL only: a CPU run gets one line, before any process group is used.
    from trainframe.config import TrainerConfig

    two = distributed.World(rank=0, local_rank=0, size=2)
    with pytest.raises(UserError, match="grad_reduce=bf16 needs CUDA"):
        distributed.wrap(torch.nn.Linear(2, 2), two, TrainerConfig(grad_reduce="bf16"), torch.device("cpu"))
