"""Packed text windows (``data.pack`` on the token datasets): positions restart at each EOS,
attention stays within a document, and a packed run trains and resumes exactly."""

import json

import numpy as np
import torch

from trainframe.cli import main
from trainframe.data.shards import TokenWindows, eos_positions
from trainframe.model import ModelConfig, build_model

EOS = 9


def test_eos_positions_restart_at_each_eos():
    x = np.array([[3, 4, EOS, 5, 6, 7, EOS, EOS, 1]])
    assert eos_positions(x, EOS).tolist() == [[0, 1, 0, 1, 2, 3, 0, 0, 1]]


def test_packed_window_loss_is_the_loss_of_each_document_alone():
    torch.manual_seed(0)
    docs = [np.array([1, 2, 3, 4, 5, EOS]), np.array([6, 7, EOS]), np.array([1, 1, 2, 3, 5, 8, 4, EOS])] * 3
    stream = np.concatenate(docs)
    windows = TokenWindows([stream], 16, 0.0, seed=0, pack_eos=EOS)
    x, y, pos = windows.next_batch(2)
    model = build_model(ModelConfig(d_model=32, n_layer=2, n_head=4, context=16, dropout=0.0), vocab_size=10)
    packed = model(x, y, reduction="sum", positions=pos)
    alone = torch.zeros(())
    for r in range(2):  # cut each row where its positions restart: every piece on its own
        starts = [*torch.nonzero(pos[r] == 0).flatten().tolist(), 16]
        for a, b in zip(starts, starts[1:]):
            alone += model(x[r:r + 1, a:b], y[r:r + 1, a:b], reduction="sum")
    assert torch.allclose(packed, alone, rtol=1e-5)
    plain = TokenWindows([stream], 16, 0.0, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(plain.next_batch(2), (x, y)))  # the same tokens, masked


def test_packed_text_run_trains_and_resumes_exactly(tiny_config, tmp_path):
    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    common = [str(tiny_config), "data.pack=true", "schedule={name: constant}", "trainer.save_every=6"]
    assert main(["train", *common, "--run-dir", str(tmp_path / "whole"), "trainer.max_steps=12"]) == 0
    assert main(["train", *common, "--run-dir", str(tmp_path / "cut"), "trainer.max_steps=6"]) == 0
    assert main(["resume", str(tmp_path / "cut"), "trainer.max_steps=12"]) == 0
    whole = losses(tmp_path / "whole")
    assert losses(tmp_path / "cut") == whole  # exact, step by step
    assert whole[12] < whole[1]


def test_document_block_mask_equals_create_block_mask():
    """The block mask built from each block's first and last document is the one FlexAttention's
    create_block_mask makes (partial and full blocks alike), and attends like the dense mask."""
    import warnings

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from trainframe.model.gpt import _document_block_mask, document_ids

    gen = torch.Generator().manual_seed(0)
    for longest in (40, 300):
        rows = []
        for _ in range(2):
            row = []
            while len(row) < 256:
                row += range(int(torch.randint(1, longest, (), generator=gen)))
            rows.append(row[:256])
        docs = document_ids(torch.tensor(rows))

        def same_document_causal(b, h, q, kv):
            return (docs[b, q] == docs[b, kv]) & (q >= kv)

        ours = _document_block_mask(docs, same_document_causal)
        theirs = create_block_mask(same_document_causal, 2, None, 256, 256, device="cpu")
        assert torch.equal(ours.to_dense(), theirs.to_dense())
        assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)
        q, k, v = (torch.randn(2, 2, 256, 8, generator=gen) for _ in range(3))
        dense = (docs[:, :, None] == docs[:, None, :]) & torch.ones(256, 256, dtype=torch.bool).tril()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager FlexAttention on CPU: the reference implementation
            out = flex_attention(q, k, v, block_mask=ours)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None])
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
