"""Under data parallelism every rank takes the same phase decisions and applies the same deltas."""

import json

import pytest
import torch
import torch.distributed as dist
from test_hybrid_controller import CONFIG

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.plugins import load_plugins


def _leaves(obj, path=""):
    """(path, value) for every leaf of nested dicts/lists/tuples, tensors whole."""
    if isinstance(obj, dict):
        return [leaf for k in sorted(obj, key=str) for leaf in _leaves(obj[k], f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, f"{path}[{i}]")]
    return [(path, obj)]


def _hybrid_ranks(world, directory):
    config, run_dir, out = f"{directory}/config.yaml", f"{directory}/run", f"{directory}/ranks.pt"
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


# Run in the session's one two-rank spawn (the two_ranks fixture, tests/conftest.py), in a directory of its own.
TWO_RANKS = {"hybrid": (_hybrid_ranks, CONFIG)}


@pytest.mark.slow
def test_ranks_agree_on_phases_and_weights(two_ranks):
    run_dir = two_ranks["hybrid"] / "run"
    result = torch.load(two_ranks["hybrid"] / "ranks.pt")
    assert torch.equal(*result["replicas"])  # identical weights after predicted and corrected steps
    # identical controller state: phase machine, directions, corrector and dynamics model
    leaves = [_leaves(s) for s in result["states"]]
    assert [p for p, _ in leaves[0]] == [p for p, _ in leaves[1]]
    for (path, a), (_, b) in zip(*leaves):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, path
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "predict" in {r.get("phase") for r in rows}  # the run did predict
