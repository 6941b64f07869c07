"""Windowing invariants: coverage, no overlap, padding, epoch offsets, prefix modes, FIM, resume, ranks."""

import numpy as np
import pytest
import torch
from trainframe_workflows.dataset import WorkflowsConfig, WorkflowWindows
from trainframe_workflows.windowing import (
    Layout,
    build_fim_row,
    build_row,
    prefix_positions,
    window_starts,
)

from trainframe.model import ModelConfig, build_model

PAD, MASK, VOCAB = 9999, 9998, 10000
LENGTHS = [3, 17, 40, 64, 100, 1, 250]  # shorter and longer than a window


def make_windows(context=32, seed=0, rank=0, world_size=1, **data):
    """Documents whose every token id is unique, so a target says which token it is."""
    lengths = np.array(LENGTHS, dtype=np.int64)
    ids = iter(range(lengths.sum()))
    tokens = np.array([t for n in LENGTHS for t in [*(next(ids) for _ in range(n)), PAD]], dtype=np.int64)
    cfg = WorkflowsConfig(path="unused", **data)
    layout = Layout(context=context, pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, position_token=cfg.position_token,
                    fim=cfg.fim, fim_max_gaps=cfg.fim_max_gaps)
    train = np.arange(len(lengths))
    return WorkflowWindows(tokens, lengths, lengths * 5, train, train[:2], cfg, layout, seed, rank, world_size)


def epoch_rows(ds):
    """(inputs, targets) of every window of the dataset's current epoch, in order."""
    _, order = ds._epoch(ds.epoch)
    x, y = ds.next_batch(len(order))
    return x.numpy(), y.numpy()


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 100])
@pytest.mark.parametrize("offset", [0, 1, 7, 31])
def test_window_starts_cover_each_token_once(n, offset):
    windows = window_starts(n, 32, offset)
    covered = [i for a, b in windows for i in range(a, b)]
    assert covered == list(range(n))  # in order: no overlap, no gap
    assert windows[0][0] == 0  # a document's beginning always starts a window
    assert all(0 < b - a <= 32 for a, b in windows)
    assert all(a % 32 == offset % 32 for a, _ in windows[1:])


@pytest.mark.parametrize("data", [{}, {"epoch_offset": True, "offset_stride": 5}, {"position_token": True},
                                  {"epoch_offset": True, "position_token": True}])
def test_every_token_is_a_target_once_per_epoch(data):
    ds = make_windows(**data)
    for epoch in range(3):
        assert ds.epoch == epoch
        x, y = epoch_rows(ds)
        kept = y[y >= 0]
        content = np.sort(kept[kept != PAD])
        assert content.tolist() == list(range(sum(LENGTHS)))  # each token exactly once
        assert (kept == PAD).sum() == len(LENGTHS)  # one end-of-document target per workflow
        # padding: after a window's content the inputs are PAD and the targets -1
        for xi, yi in zip(x, y):
            n = int((yi >= 0).sum())
            assert (yi[n:] == -1).all() and (xi[n + 1:] == PAD).all()


def test_epoch_offsets_shift_window_starts():
    ds = make_windows(epoch_offset=True, offset_stride=5, position_token=True)
    cap = ds.layout.capacity
    for epoch in range(4):
        x, _ = epoch_rows(ds)
        starts = set(x[:, 0].tolist())  # the position token is the window's start
        assert 0 in starts  # every workflow's beginning
        later = {s % cap for s in starts if s}
        assert later == {(5 * epoch) % cap} if epoch else later == {0}


def test_plain_row_layout():
    seq = np.array([5, 6, 7, PAD])
    layout = Layout(context=8, pad_id=PAD, mask_id=MASK, vocab_size=VOCAB)
    x, y = build_row(seq, 0, 4, layout)
    assert x.tolist() == [PAD, 5, 6, 7, PAD, PAD, PAD, PAD]  # PAD leads a document's first window
    assert y.tolist() == [5, 6, 7, PAD, -1, -1, -1, -1]  # the first PAD is the end; the rest is ignored
    x, y = build_row(seq, 2, 4, Layout(context=8, pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, position_token=True))
    assert x.tolist()[:3] == [2, 7, PAD] and y.tolist()[:3] == [7, PAD, -1]


def test_prefix_all_equals_mean_of_explicit_prefix_examples():
    """`all` trains every prefix length of a document-start window in one forward pass: its loss is
    the mean loss of the explicit examples (prefix of length L -> the next token) for every L."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", d_model=32, n_layer=2, n_head=2, context=24), VOCAB).eval()
    ds = make_windows(context=24, prefix="all")
    doc = 3  # 64 tokens: the first window is full
    x, y = ds.row(np.array([doc, 0, ds.layout.capacity]), [0])
    x, y = torch.from_numpy(x)[None], torch.from_numpy(y)[None]
    with torch.no_grad():
        window_loss = model(x, y).item()
        per_prefix = []
        for L in range(int((y >= 0).sum())):
            xs = x[:, : L + 1]  # the lead token and the first L document tokens
            ys = torch.full_like(xs, -1)
            ys[0, -1] = y[0, L]
            per_prefix.append(model(xs, ys).item())
    assert window_loss == pytest.approx(float(np.mean(per_prefix)), rel=1e-5)


def test_prefix_modes_select_positions():
    rng = np.random.default_rng(0)
    assert prefix_positions(10, "all", 3, "uniform", rng).tolist() == list(range(10))
    assert prefix_positions(20, "log", 3, "uniform", rng).tolist() == [0, 1, 2, 4, 8, 16]
    assert prefix_positions(10, "linear", 4, "uniform", rng).tolist() == [0, 3, 6, 9]
    assert len(prefix_positions(50, "sample", 5, "uniform", rng)) == 5
    short = np.concatenate([prefix_positions(200, "sample", 5, "short", rng) for _ in range(200)])
    uniform = np.concatenate([prefix_positions(200, "sample", 5, "uniform", rng) for _ in range(200)])
    assert np.median(short) < np.median(uniform) / 3
    hybrid = prefix_positions(64, "hybrid", 4, "uniform", rng)
    assert {0, 1, 2, 4, 8, 16, 32} <= set(hybrid.tolist()) and len(hybrid) <= 7 + 4


def test_prefix_mode_masks_only_document_start_windows():
    ds = make_windows(prefix="log")
    x, y = epoch_rows(ds)
    starts_at_doc = x[:, 0] == PAD  # no position token: PAD leads a document's first window
    kept = (y >= 0).sum(1)
    assert (kept[starts_at_doc] <= 7).all()  # 0, 1, 2, 4, 8, 16 (+ nothing past 32 tokens)
    assert (kept[~starts_at_doc] == ds.layout.capacity).any()  # later windows train every token


def test_fim_rows():
    layout = Layout(context=32, pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, fim=True, fim_max_gaps=3)
    seq = np.arange(100, 100 + layout.capacity)
    for s in range(50):
        rng = np.random.default_rng(s)
        gaps = 1 + s % 3
        x, y = build_fim_row(seq, 0, len(seq), gaps, layout, rng)
        row = np.append(x, y[-1])
        assert row[0] == 0 and row[1] != MASK  # [window_pos, gap_pos]
        body = row[2:].tolist()
        masks = [i for i, t in enumerate(body) if t == MASK]
        assert len(masks) == 2 * gaps
        in_place, seps = masks[:gaps], masks[gaps:]
        # the middles, in order, put back in place give the window's tokens
        end = body.index(PAD)
        middles = [body[a + 1: b] for a, b in zip(seps, seps[1:] + [end])]
        rebuilt, at = [], 0
        for m, mid in zip(in_place, middles):
            rebuilt += body[at:m] + mid
            at = m + 1
        rebuilt += body[at:seps[0]]
        assert rebuilt == seq.tolist()
        assert row[1] == body.index(MASK)  # gap_pos: the first gap's offset in the window
        # every document token is a target once; in-place MASKs and the gap_pos are not targets
        kept = y[y >= 0]
        assert sorted(kept[kept < MASK].tolist()) == seq.tolist()
        assert all(y[2 + m - 1] == -1 for m in in_place) and y[0] == -1


def test_fim_rate_and_geometric_p():
    ds = make_windows(fim_rate=1.0, geometric_p=0.3)
    x, _ = epoch_rows(ds)
    assert (x[:, 1] != MASK).mean() > 0.4  # most windows got a gap
    ds = make_windows(fim_rate=1.0, geometric_p=1.0)  # geometric_p 1.0: a pure decoder
    assert not ds.layout.fim
    x, _ = epoch_rows(ds)
    assert not (x == MASK).any()


@pytest.mark.parametrize("data", [{"epoch_offset": True}, {"fim_rate": 0.5, "geometric_p": 0.5, "prefix": "sample"}])
def test_resume_is_exact(data):
    a = make_windows(**data)
    for _ in range(5):
        a.next_batch(3)
    b = make_windows(**data)
    b.load_state_dict(a.state_dict())
    for _ in range(10):  # crosses epoch boundaries
        xa, ya = a.next_batch(3)
        xb, yb = b.next_batch(3)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ranks_read_disjoint_windows():
    per_rank = []
    for rank in range(2):
        ds = make_windows(rank=rank, world_size=2)
        _, y = epoch_rows(ds)
        per_rank.append({tuple(r) for r in y.tolist()})
    assert not per_rank[0] & per_rank[1]
    whole = make_windows()
    _, y = epoch_rows(whole)
    assert per_rank[0] | per_rank[1] == {tuple(r) for r in y.tolist()}
