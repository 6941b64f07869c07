"""Background batch prefetching: same batches, same order, exact dataset state for checkpoints."""

import numpy as np
import pytest
import torch

from trainframe.config import load_config
from trainframe.data.shards import TokenWindows
from trainframe.engine import checkpoint as ckpt
from trainframe.engine.build import build_trainer
from trainframe.engine.prefetch import Prefetcher
from trainframe.plugins import load_plugins


def windows(seed=3):
    tokens = np.random.default_rng(0).integers(0, 200, 5000).astype(np.uint16)
    return TokenWindows([tokens], context=16, val_fraction=0.1, seed=seed)


def test_prefetcher_yields_the_direct_batches_in_order_and_rewinds_on_close():
    direct, ahead = windows(), windows()
    prefetcher = Prefetcher(ahead, batch_size=5, depth=3)
    try:
        for _ in range(70):  # past an epoch boundary (281 train windows / 5 per batch)
            (x, y), (px, py) = direct.next_batch(5), prefetcher.next_batch()
            assert torch.equal(x, px) and torch.equal(y, py)
            assert prefetcher.state_dict() == direct.state_dict()
    finally:
        prefetcher.close()
    assert direct.state_dict()["epoch"] == 1
    assert ahead.state_dict() == direct.state_dict()  # read-ahead batches are given back
    torch.testing.assert_close(ahead.next_batch(5), direct.next_batch(5))


def test_prefetcher_raises_the_dataset_error_where_the_batch_is_taken():
    class Failing:
        def __init__(self):
            self.n = 0

        def next_batch(self, batch_size):
            self.n += 1
            if self.n == 3:
                raise ValueError("bad row 3")
            return torch.full((batch_size, 4), self.n), torch.full((batch_size, 4), self.n)

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    dataset = Failing()
    prefetcher = Prefetcher(dataset, batch_size=2)
    assert prefetcher.next_batch()[0][0, 0] == 1
    assert prefetcher.next_batch()[0][0, 0] == 2
    with pytest.raises(ValueError, match="bad row 3"):
        prefetcher.next_batch()
    prefetcher.close()
    assert dataset.n == 2


def test_checkpoint_holds_the_position_of_the_batches_trained_on(tiny_config, tmp_path):
    plugins = load_plugins()
    cfg = load_config(tiny_config, ["trainer.max_steps=6", "trainer.save_every=4", "trainer.grad_accum=2"],
                      plugins.registry)
    trainer = build_trainer(cfg, plugins, tmp_path / "run")
    reference = build_trainer(cfg, plugins, tmp_path / "ref").dataset
    trainer.fit(finish=False)
    for _ in range(4 * 2):  # 4 steps of 2 micro-batches
        reference.next_batch(cfg.trainer.batch_size)
    saved = ckpt.load(ckpt.step_path(tmp_path / "run" / "checkpoints", 4))
    assert saved["data"] == reference.state_dict()
    for _ in range(2 * 2):
        reference.next_batch(cfg.trainer.batch_size)
    assert trainer.dataset.state_dict() == reference.state_dict()  # not the read-ahead position
