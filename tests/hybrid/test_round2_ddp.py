"""Under data parallelism the round-2 controllers keep both ranks identical: the gated outer step
(its verification loss summed over ranks, so both take and roll back the same steps) and stale-loss
selective backprop (each rank keeps rows of its own batch; the gradients are averaged)."""

import pytest
import torch
import torch.distributed as dist
from test_outer_nesterov import CONFIG as OUTER_CONFIG
from test_selective_backprop import CONFIG as SELECTIVE_CONFIG

from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.plugins import load_plugins

# explore 2 of the three scales, then the ensemble chooses; every 4 steps over 18: four outer steps
GATED_CONFIG = OUTER_CONFIG.replace(
    "phases: {name: outer, every: 4, momentum: 0.7, outer_lr: 0.9}",
    "phases: {name: outer-gated, every: 4, momentum: 0.7, verify_batches: 2, explore: 2, hidden: 8}")
assert GATED_CONFIG != OUTER_CONFIG


def _train_and_gather(world, directory):
    """Both ranks train; rank 0 saves both ranks' weights and controller states."""
    plugins = load_plugins()
    trainer = build_trainer(load_config(f"{directory}/config.yaml", [], plugins.registry), plugins,
                            f"{directory}/run", world)
    trainer.fit()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    replicas = [torch.empty_like(params) for _ in range(2)]
    dist.all_gather(replicas, params)
    states = [None, None]
    dist.all_gather_object(states, trainer.controller.state_dict())  # selective's is collective
    if world.is_main:
        torch.save({"replicas": replicas, "states": states}, f"{directory}/ranks.pt")


# Run in the session's one two-rank spawn (the two_ranks fixture, tests/conftest.py).
TWO_RANKS = {"outer-gated": (_train_and_gather, GATED_CONFIG), "selective": (_train_and_gather, SELECTIVE_CONFIG)}


@pytest.mark.slow
def test_gated_outer_ranks_take_the_same_outer_steps(two_ranks):
    result = torch.load(two_ranks["outer-gated"] / "ranks.pt")
    assert torch.equal(*result["replicas"])
    a, b = result["states"]
    assert len(a["history"]) == 4 and a["history"] == b["history"]  # scales, gains, rollbacks
    assert a["rollbacks"] == b["rollbacks"] and a["last_loss"] == b["last_loss"]
    for key in ("anchor", "momentum"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
    # each rank's verification batches are its own share of the stream; the losses are summed
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a["verify"], b["verify"]))


@pytest.mark.slow
def test_selective_ranks_stay_identical(two_ranks):
    result = torch.load(two_ranks["selective"] / "ranks.pt")
    assert torch.equal(*result["replicas"])
    mine, theirs = result["states"][0]["ranks"]  # the checkpoint gathers every rank's table
    assert mine["kept"] == theirs["kept"] == 16 * 4  # keep 0.5 of 8 rows, 16 steps, on each rank
    assert len(mine["keys"]) > 0 and not torch.equal(mine["keys"], theirs["keys"])  # rows of its own
