"""Data parallelism under torchrun: process group, DDP / FSDP2 wrapping, rank-aware helpers.

``torchrun --nproc_per_node N -m trainframe train CONFIG`` (or ``trainframe train --nproc N``)
starts N processes with RANK, WORLD_SIZE and LOCAL_RANK in their environment; :func:`init`
reads them. Without them the run is a single process and every helper here is a no-op.
"""

from __future__ import annotations

import datetime
import gc
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainframe.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_spec: str) -> World:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); a World of one without it."""
    if "RANK" not in os.environ or dist.is_initialized():
        if dist.is_initialized():
            return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())
        return World()
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    use_cuda = device_spec != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    return World(rank, local_rank, size)


def device_for(world: World, spec: str) -> str:
    """Each process on its own GPU: ``cuda`` / ``auto`` become ``cuda:LOCAL_RANK``."""
    if world.distributed and spec in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return spec


def wrap(model: torch.nn.Module, world: World, trainer_config, device: torch.device) -> torch.nn.Module:
    """The module the forward pass goes through: DDP, or FSDP2 (each block, then the root), set up
    from the run's TrainerConfig (distributed, grad_reduce, ddp_bucket_mb)."""
    if not world.distributed:
        return model
    bf16_reduce = trainer_config.grad_reduce == "bf16"
    if bf16_reduce and device.type != "cuda":
        raise UserError(f"trainer.grad_reduce=bf16 needs CUDA devices (NCCL); this run is on {device.type}: use fp32")
    if trainer_config.distributed == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Parameters stay float32 (autocast does the casting); only the reduce-scatter dtype changes.
        policy = MixedPrecisionPolicy(reduce_dtype=torch.bfloat16 if bf16_reduce else None)
        blocks = getattr(model, "blocks", None)  # protocols.HasBlocks (getattr: see protocols on isinstance)
        for block in blocks if blocks is not None else []:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # Buffers (RoPE tables) are constants: no broadcast per forward. Gradients live in the buckets.
    # (newer torch renames the switch: forward_sync_buffers)
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
    ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True,
                                  bucket_cap_mb=trainer_config.ddp_bucket_mb, **no_buffer_sync)
    if bf16_reduce:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

        ddp.register_comm_hook(None, bf16_compress_hook)
    return ddp


def mean(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The mean over ranks (asynchronous on the device; no host sync)."""
    if world.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world.size
    return tensor


def total(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, world: World):
    """Rank 0's value of ``obj`` on every rank (e.g. a run directory named by the clock)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_given(obj, world: World):
    """The value of ``obj`` of the lowest rank where it is not None, on every rank (a stop reason
    that some ranks gave: every rank must call this, so only once they agreed one was given)."""
    if not world.distributed:
        return obj
    values = [None] * world.size
    dist.all_gather_object(values, obj)
    return next((v for v in values if v is not None), None)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        from trainframe.engine import sharded

        sharded.drain()  # a sharded checkpoint still being written needs the process group
        # Free trainers (DDP and its reducer hold the group) while the group exists: left to the
        # interpreter's exit, their teardown aborted a gloo rank in about 1 run of 10.
        gc.collect()
        dist.destroy_process_group()
