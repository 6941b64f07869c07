"""Packed workflow rows (``data.pack``): coverage, positions, resume, ranks, and the loss of a packed
batch equal to the loss of its windows one at a time."""

import numpy as np
import pytest
import torch
from test_windowing import LENGTHS, PAD, VOCAB, make_windows
from trainframe_workflows.windowing import pack_rows

from trainframe.model import ModelConfig, build_model

DATA = [{}, {"epoch_offset": True, "offset_stride": 5}, {"position_token": True},
        {"prefix": "sample", "prefix_count": 3}, {"fim_rate": 0.7, "geometric_p": 0.4}]


def epoch_batch(ds):
    _, order = ds._epoch(ds.epoch)
    return [t.numpy() for t in ds.next_batch(len(order))]


@pytest.mark.parametrize("data", DATA)
def test_every_token_is_a_target_once_per_epoch(data):
    plain, packed = make_windows(**data), make_windows(pack=True, **data)
    for epoch in range(3):
        x, y, pos = epoch_batch(packed)
        assert packed.epoch == epoch + 1
        _, y_plain = epoch_batch(plain)
        kept = y[y >= 0]
        if not data:
            content = np.sort(kept[kept != PAD])
            assert content.tolist() == list(range(sum(LENGTHS)))  # each token exactly once
            assert (kept == PAD).sum() == len(LENGTHS)  # one end-of-document target per workflow
        # the same targets as the padded epoch (FIM and prefix samples are seeded per window)
        assert sorted(kept.tolist()) == sorted(y_plain[y_plain >= 0].tolist())
        assert len(x) < len(y_plain)  # fewer rows than windows
        # positions count up within a segment and restart at 0 for the next one
        assert (pos[:, 0] == 0).all() and ((pos[:, 1:] == pos[:, :-1] + 1) | (pos[:, 1:] == 0)).all()


def test_segments_restart_positions_and_hold_whole_windows():
    ds = make_windows(pack=True)
    windows, order = ds._epoch(0)
    x, y, pos = (t.numpy() for t in ds.next_batch(3))
    for r in range(3):
        at = 0
        for i in order[r]:
            wx, wy = ds.row(windows[i], [ds.seed, 0, int(i)])
            n = int(np.flatnonzero(wy != -1)[-1]) + 1
            assert (x[r, at:at + n] == wx[:n]).all() and (y[r, at:at + n] == wy[:n]).all()
            assert (pos[r, at:at + n] == np.arange(n)).all()
            at += n
        assert (y[r, at:] == -1).all()


@pytest.mark.parametrize("data", [{}, {"fim_rate": 0.5, "geometric_p": 0.5, "prefix": "sample"}])
def test_resume_is_exact(data):
    a = make_windows(pack=True, **data)
    for _ in range(3):
        a.next_batch(2)
    b = make_windows(pack=True, **data)
    b.load_state_dict(a.state_dict())
    for _ in range(8):  # crosses epoch boundaries
        for ta, tb in zip(a.next_batch(2), b.next_batch(2)):
            assert torch.equal(ta, tb)


def test_ranks_read_disjoint_rows():
    rows = [{tuple(r) for r in epoch_batch(make_windows(pack=True, rank=k, world_size=2))[1].tolist()}
            for k in range(2)]
    whole = {tuple(r) for r in epoch_batch(make_windows(pack=True))[1].tolist()}
    assert not rows[0] & rows[1] and rows[0] | rows[1] == whole


def test_pack_rows_places_every_item_once_within_capacity():
    lengths = np.random.default_rng(0).integers(1, 65, size=3000)
    rows = pack_rows(lengths, 64, chunk=1000)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(lengths[r].sum() <= 64 for r in rows)
    assert lengths.sum() / (64 * len(rows)) > 0.95  # best fit leaves little room
    assert rows == pack_rows(lengths, 64, chunk=1000)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_loss_is_the_loss_of_each_window_alone(attention):
    torch.manual_seed(0)
    ds = make_windows(pack=True, fim_rate=0.5, geometric_p=0.5)
    model = build_model(ModelConfig(d_model=32, n_layer=2, n_head=4, n_kv_head=2, context=32, mlp="gated_relu2",
                                    qk_norm=True, dropout=0.0, attention=attention), vocab_size=VOCAB)
    windows, order = ds._epoch(0)
    x, y, pos = ds.next_batch(4)
    packed = model(x, y, reduction="sum", positions=pos)
    alone = []
    for r in range(4):
        for i in order[r]:
            wx, wy = (torch.from_numpy(a)[None] for a in ds.row(windows[i], [ds.seed, 0, int(i)]))
            alone.append(model(wx, wy, reduction="sum"))
    assert torch.allclose(packed, torch.stack(alone).sum(), rtol=1e-5)
    mean = model(x, y, positions=pos)  # token-weighted mean over every window's targets
    assert torch.allclose(mean, torch.stack(alone).sum() / (y != -1).sum(), rtol=1e-5)
