"""The `text` dataset: weighted draws, exact resume mid-mixture, val_bpc, and a short training run."""

import json

import numpy as np
import torch
from textdata import SHAKESPEARE, cli, trained_bpe, write_config  # noqa: F401 (a fixture)
from trainframe_text.bpe import load_bpe
from trainframe_text.dataset import MixtureWindows, build_text

from trainframe.config import load_config
from trainframe.plugins import current


def _mixture(tmp_path, bpe_path, weights=(0.5, 0.3, 0.2)):
    text = SHAKESPEARE.read_text()
    parts = [text[i * 30_000:(i + 1) * 30_000] for i in range(len(weights))]
    sources = []
    for i, (part, w) in enumerate(zip(parts, weights)):
        (tmp_path / f"part{i}.txt").write_text(part)
        sources.append({"files": [str(tmp_path / f"part{i}.txt")], "weight": w, "name": f"part{i}"})
    config = write_config(tmp_path, sources, bpe_path, val_fraction=0.1)
    assert cli("data", "prepare", config, "--workers", 1) == 0
    cfg = load_config(config, [], current().registry)
    return cfg, load_bpe(bpe_path)


def test_weights_hold_over_many_draws(tmp_path, bpe_path):
    cfg, tok = _mixture(tmp_path, bpe_path)
    data = build_text(cfg.component("data")[1], tokenizer=tok, context=32, seed=5)
    counts = np.bincount(data.choices(0, 200_000), minlength=3) / 200_000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.005)
    assert np.array_equal(data.choices(1000, 50), data.choices(0, 1050)[1000:])  # a function of the position
    # Each batch row comes from the source the draw names.
    x, y = data.next_batch(64)
    assert x.shape == (64, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert 2.0 < data.chars_per_token < 5.0  # bytes of text per BPE token
    other = build_text(cfg.component("data")[1], tokenizer=tok, context=32, seed=6)
    assert not np.array_equal(other.choices(0, 100), data.choices(0, 100))


def test_resume_mid_mixture_draws_the_same_batches(tmp_path, bpe_path):
    cfg, tok = _mixture(tmp_path, bpe_path)
    make = lambda: build_text(cfg.component("data")[1], tokenizer=tok, context=32, seed=9)
    whole = make()
    # Enough batches that the smallest source runs through more than one epoch.
    straight = [whole.next_batch(32) for _ in range(100)]
    first = make()
    for _ in range(25):
        first.next_batch(32)
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as in a checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    for expected in straight[25:]:
        got = resumed.next_batch(32)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert any(s["epoch"] > 0 for s in resumed.state_dict()["sources"])
    vals = [list(whole.val_batches(8, 3)), list(resumed.val_batches(8, 3))]
    assert len(vals[0]) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(*vals))


def test_ranks_read_different_windows(tmp_path, bpe_path):
    cfg, tok = _mixture(tmp_path, bpe_path, weights=(1.0,))
    ranks = [build_text(cfg.component("data")[1], tokenizer=tok, context=32, seed=1, rank=r, world_size=2)
             for r in range(2)]
    a, b = (r.next_batch(8)[0] for r in ranks)
    assert not torch.equal(a, b)
    assert isinstance(ranks[0], MixtureWindows)


def test_train_and_resume_from_prepared_shards(tmp_path, bpe_path):
    _mixture(tmp_path, bpe_path, weights=(0.7, 0.3))
    config = tmp_path / "t.yaml"
    run = tmp_path / "run"
    assert cli("train", config, "--run-dir", run, "trainer.max_steps=6") == 0
    assert cli("resume", run, "trainer.max_steps=12") == 0
    straight = tmp_path / "straight"
    assert cli("train", config, "--run-dir", straight) == 0
    rows = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    losses = lambda d: {r["step"]: r["loss"] for r in rows(d) if "loss" in r}
    resumed, uninterrupted = losses(run), losses(straight)
    assert {s: resumed[s] for s in uninterrupted} == uninterrupted  # steps 10 and 12 come after the resume
    assert any("val_bpc" in r for r in rows(straight))


def test_hold_out_shares_the_rows_among_the_sources_and_resumes(tmp_path, bpe_path):
    cfg, tok = _mixture(tmp_path, bpe_path)
    data = build_text(cfg.component("data")[1], tokenizer=tok, context=32, seed=5)
    held = data.hold_out(12)
    assert held[0].shape == (12, 32)
    shares = [s.state_dict().get("held", 0) for s in data.sources]
    assert sum(shares) == 12 and sum(s > 0 for s in shares) >= 2  # weighted: the sources each hold some
    seen = {tuple(r) for _ in range(40) for r in data.next_batch(64)[0].tolist()}
    assert seen.isdisjoint({tuple(r) for r in held[0].tolist()})
    fresh = build_text(cfg.component("data")[1], tokenizer=tok, context=32, seed=5)
    fresh.load_state_dict(data.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.hold_out(12), held))
    assert all(torch.equal(a, b) for a, b in zip(fresh.next_batch(8), data.next_batch(8)))
