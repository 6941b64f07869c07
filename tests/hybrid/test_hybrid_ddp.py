"""Under data parallelism every rank takes the same phase decisions and applies the same deltas."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import free_port, join_two_ranks

from trainframe.config import load_config
from trainframe.engine import distributed
from trainframe.engine.build import build_trainer
from trainframe.plugins import load_plugins


def _leaves(obj, path=""):
    """(path, value) for every leaf of nested dicts/lists/tuples, tensors whole."""
    if isinstance(obj, dict):
        return [leaf for k in sorted(obj, key=str) for leaf in _leaves(obj[k], f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, f"{path}[{i}]")]
    return [(path, obj)]


def _rank_main(rank, config, run_dir, port, out):
    world = join_two_ranks(rank, port)
    plugins = load_plugins()
    trainer = build_trainer(load_config(config, ["trainer.max_steps=20"], plugins.registry), plugins, run_dir, world)
    trainer.fit()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    replicas = [torch.empty_like(params) for _ in range(2)]
    dist.all_gather(replicas, params)
    state = trainer.controller.state_dict()
    state.pop("held")  # each rank holds batches of its own share of the data
    states = [None, None]
    dist.all_gather_object(states, state)
    if world.is_main:
        torch.save({"replicas": replicas, "states": states}, out)
    del trainer  # garbage before the group goes (shutdown collects it)
    distributed.shutdown(world)


@pytest.mark.slow
def test_ranks_agree_on_phases_and_weights(tmp_path):
    # Imported here: the spawned ranks import this module, and must not need the test-suite's conftest.
    from test_hybrid_controller import CONFIG

    config = tmp_path / "hybrid.yaml"
    config.write_text(CONFIG)
    run_dir, out = tmp_path / "run", tmp_path / "ranks.pt"
    mp.spawn(_rank_main, args=(str(config), str(run_dir), free_port(), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    assert torch.equal(*result["replicas"])  # identical weights after predicted and corrected steps
    # identical controller state: phase machine, directions, corrector and dynamics model
    leaves = [_leaves(s) for s in result["states"]]
    assert [p for p, _ in leaves[0]] == [p for p, _ in leaves[1]]
    for (path, a), (_, b) in zip(*leaves):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, path
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "predict" in {r.get("phase") for r in rows}  # the run did predict
