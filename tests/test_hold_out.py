"""``hold_out`` on the token windows (``SupportsHoldOut``): the rows set aside are never read by
training on any rank, the pick is the same on every rank and after a resume, and it is checkpointed
as part of the data position."""

import numpy as np
import pytest
import torch

from trainframe import SupportsHoldOut
from trainframe.data.shards import TokenWindows
from trainframe.errors import UserError

CONTEXT = 8
STREAM = np.arange(40 * CONTEXT + 1)  # every window's tokens are its own: rows identify windows


def rows(batch) -> set:
    return {tuple(r) for r in batch[0].tolist()}


def windows(**kw) -> TokenWindows:
    return TokenWindows([STREAM], CONTEXT, 0.1, seed=3, **kw)


def read(data: TokenWindows, batches: int, size: int = 5) -> list[tuple[torch.Tensor, ...]]:
    return [data.next_batch(size) for _ in range(batches)]


def test_held_rows_are_never_trained_on_and_nothing_else_is_lost():
    data = windows()
    assert isinstance(data, SupportsHoldOut)
    everything = {tuple(STREAM[s: s + CONTEXT]) for _, s in data.train}
    held = data.hold_out(4)
    assert held[0].shape == (4, CONTEXT) and torch.equal(held[0][:, 1:], held[1][:, :-1])
    seen = set().union(*map(rows, read(data, 30)))  # 150 rows: over 4 epochs of the 32 left
    assert seen.isdisjoint(rows(held))
    assert seen | rows(held) == everything
    assert all(torch.equal(a, b) for a, b in zip(data.hold_out(4), held))  # once: asked again, the same rows
    with pytest.raises(ValueError, match="held out already"):
        data.hold_out(3)


def test_every_rank_removes_every_rank_s_rows():
    ranks = [windows(rank=r, world_size=2) for r in range(2)]
    held = [rows(d.hold_out(3)) for d in ranks]
    assert all(len(h) == 3 for h in held) and held[0].isdisjoint(held[1])
    for d in ranks:
        assert set().union(*map(rows, read(d, 20))).isdisjoint(held[0] | held[1])


def test_the_hold_out_is_part_of_the_data_position():
    data = windows()
    held = data.hold_out(4)
    read(data, 9)
    state = data.state_dict()
    assert state["held"] == 4
    fresh = windows()
    fresh.load_state_dict(state)  # a resumed run: the same rows held out, the same stream after
    assert all(torch.equal(a, b) for a, b in zip(fresh.hold_out(4), held))
    for a, b in zip(read(data, 12), read(fresh, 12)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert "held" not in windows().state_dict()  # runs that hold nothing out keep the old position format


def test_too_few_windows_to_hold_out_is_one_clear_error():
    with pytest.raises(UserError, match="too few to hold 40 out"):
        windows().hold_out(40)
