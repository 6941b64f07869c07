"""Stale-loss selective backprop: train each step on the rows that were hardest at their last visit.

For data seen many times (the workflow corpus is read for several epochs), each row of a batch has
a loss from its previous visit. Every step keeps the ``keep`` share of the batch's rows with the
highest such stale loss (rows never seen come first, in random order) and runs forward and
backward on those only; their fresh losses, from that same forward pass, replace the stale ones.
No pass is added: the step costs ``keep`` of a full one. ``select: random`` keeps a random
``keep`` share instead: the control at equal FLOPs.

Rows are known by a hash of their input tokens, so any dataset whose rows recur exactly works
(padded windows; packed rows are regrouped every epoch, so they are refused). The losses live in a
table of ``2**table_bits`` slots on the device, keyed by the hash (a slot taken by another row
reads as unseen); the table is checkpointed, so a resumed run selects exactly as an uninterrupted
one. Everything stays on the device: no host sync per step.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from trainframe.config import ComponentConfig
from trainframe.errors import UserError
from trainframe.phases import Phase, PhaseController, StepOutcome

UNSEEN = 1e9  # the score of a row with no stale loss: above every real loss


class SelectiveConfig(ComponentConfig):
    keep: float = Field(0.5, gt=0, le=1, description="share of each batch's rows trained on")
    select: Literal["stale", "random"] = Field("stale", description="stale: the highest loss at the last "
                                               "visit; random: the control at equal FLOPs")
    table_bits: int = Field(20, ge=8, le=28, description="log2 of the loss table's slots (12 bytes each)")
    seed: int = Field(0, description="seed of the row noise: the order of unseen rows, and select: random")


class SelectiveController(PhaseController):
    wants_row_losses = True
    warms_up_itself = True

    def __init__(self, cfg: SelectiveConfig):
        self.cfg = cfg
        self.keys: torch.Tensor | None = None  # per slot: the hash of the row whose loss it holds (0: empty)
        self.losses: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.weights: torch.Tensor | None = None  # the hash's per-position multipliers
        self.selected: list[torch.Tensor] = []  # this step's kept rows' hashes, per micro-batch
        self.seen = self.kept = None  # kept rows that had a stale loss, and all kept rows (device counts)
        self.pending: dict | None = None  # this rank's loaded state, until the first batch
        self.world = None

    @property
    def wants_host_values(self) -> bool:
        return False

    def _setup(self, device: torch.device, length: int) -> None:
        size = 1 << self.cfg.table_bits
        self.keys = torch.zeros(size, dtype=torch.long, device=device)
        self.losses = torch.zeros(size, dtype=torch.float32, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        self.kept = torch.zeros((), dtype=torch.long, device=device)
        self.generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        # Odd 62-bit multipliers from a fixed seed: the same rows hash alike in every run.
        g = torch.Generator().manual_seed(0x5E1EC7)
        self.weights = (torch.randint(0, 1 << 62, (length,), generator=g) | 1).to(device)
        state, self.pending = self.pending, None
        if state is not None:
            slots = state["slots"].to(device)
            self.keys[slots] = state["keys"].to(device)
            self.losses[slots] = state["losses"].to(device)
            self.generator.set_state(state["generator"])
            self.seen += state["seen"]
            self.kept += state["kept"]

    def _hash(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.shape[1] != self.weights.shape[0]:
            raise UserError(f"phases selective: rows of {inputs.shape[1]} tokens, expected {self.weights.shape[0]} "
                            "(every batch of a run must have the same row length)")
        # int64 arithmetic wraps: a polynomial-style hash mod 2**64; | 1 keeps 0 free for empty slots
        return (inputs.long() * self.weights).sum(1) | 1

    def batches_for(self, phase: Phase, batches: list) -> list:
        if phase != Phase.FULL:
            return batches
        out, self.selected = [], []
        for batch in batches:
            if len(batch) != 2:
                raise UserError("phases selective: needs rows that recur exactly (data.pack false): packed rows "
                                "are regrouped every epoch, so no row has a stale loss")
            inputs = batch[0]
            if self.keys is None:
                self._setup(inputs.device, inputs.shape[1])
            rows = inputs.shape[0]
            k = max(1, round(rows * self.cfg.keep))
            h = self._hash(inputs)
            slot = h & (self.keys.numel() - 1)
            had = self.keys[slot] == h
            noise = torch.rand(rows, device=inputs.device, generator=self.generator)
            if self.cfg.select == "random":
                score = noise
            else:  # unseen rows first, in random order; then the highest stale loss
                score = torch.where(had, self.losses[slot], UNSEEN + noise)
            index = torch.topk(score, k).indices
            self.seen += had[index].sum()
            self.kept += k
            self.selected.append(h[index])
            out.append(tuple(t[index] for t in batch))
        return out

    def observe(self, outcome: StepOutcome, trainer) -> dict:
        self.world = trainer.world
        if outcome.phase != Phase.FULL or self.keys is None:
            return {}
        for h, losses in zip(self.selected, outcome.row_losses):
            slot = h & (self.keys.numel() - 1)
            self.keys[slot] = h
            self.losses[slot] = losses.float()
        if (outcome.step + 1) % trainer.config.trainer.log_every == 0:  # the engine reads back here anyway
            return {"stale_seen": (self.seen.float() / self.kept.clamp(min=1)).item()}
        return {}

    def state_dict(self) -> dict:
        """Every rank's table (each rank selects from its own rows): gathered, so rank 0 saves all."""
        if self.keys is None:
            mine = self.pending
        else:
            slots = torch.nonzero(self.keys).flatten()
            mine = {"slots": slots.cpu(), "keys": self.keys[slots].cpu(), "losses": self.losses[slots].cpu(),
                    "generator": self.generator.get_state(), "seen": int(self.seen), "kept": int(self.kept)}
        if self.world is None or not self.world.distributed:
            return {"ranks": [mine]}
        ranks = [None] * self.world.size
        torch.distributed.all_gather_object(ranks, mine)
        return {"ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.keys = self.losses = self.generator = self.weights = None
        self.pending = state["ranks"][rank]


def build_selective(cfg: SelectiveConfig) -> SelectiveController:
    return SelectiveController(cfg)
