"""Turn a validated RunConfig into a ready Trainer: each component from its registry entry."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pluggy
import torch

from trainframe.config import RunConfig
from trainframe.engine import distributed
from trainframe.engine.distributed import World
from trainframe.engine.loop import Trainer
from trainframe.errors import UserError
from trainframe.optim.combined import CombinedOptimizer
from trainframe.plugins import hook_problems, invalid_hook_message


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"trainer.device: expected auto, cpu, cuda or cuda:N, got '{spec}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device: '{spec}' requested but CUDA is not available")
    return device


def set_cpu_threads(setting: int | None) -> str:
    """Set torch's thread count for a CPU run (``trainer.cpu_threads``); returns a line saying what and why.

    null leaves a core to other processes: torch's default takes every core, and its threads meet at
    the end of every op, so one busy core stalls all of them at each op (3-30x slower steps on 2 cores,
    docs/engine.md). A count chosen before the run, by OMP_NUM_THREADS, MKL_NUM_THREADS or
    torch.set_num_threads to fewer than every core, is kept.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = [f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(v)]
    if setting is not None:
        torch.set_num_threads(setting)
        why = "trainer.cpu_threads"
    elif env:
        why = f"kept: {env[0]}"
    elif torch.get_num_threads() < cores:
        why = "kept: torch already uses fewer"
    else:
        torch.set_num_threads(max(1, cores - 1))
        why = "one core left to other processes; trainer.cpu_threads sets the count"
    return f"cpu threads: {torch.get_num_threads()} of {cores} cores ({why})"


def _make(plugins, kind: str, name: str, cfg, *args, **kwargs):
    component = plugins.registry.get(kind, name)
    try:
        return component.factory(cfg, *args, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"{kind} '{name}': {e}") from None


def build_tokenizer(cfg: RunConfig, plugins):
    return _make(plugins, "tokenizer", *cfg.component("tokenizer"))


def build_model(cfg: RunConfig, plugins, tokenizer):
    return _make(plugins, "model", *cfg.component("model"), vocab_size=tokenizer.vocab_size())


def build_dataset(cfg: RunConfig, plugins, tokenizer, context: int, *, seed: int | None = None,
                  rank: int = 0, world_size: int = 1):
    """The config's dataset; ``seed`` defaults to the config's (eval passes the run's seed with another
    config's data section, so the validation split stays the run's)."""
    return _make(plugins, "dataset", *cfg.component("data"), tokenizer=tokenizer, context=context,
                 seed=cfg.seed if seed is None else seed, rank=rank, world_size=world_size)


def build_optimizer(cfg: RunConfig, plugins, model, device: torch.device, world: World):
    """The config's optimizer; several (a factory may return a list or tuple) become one
    :class:`CombinedOptimizer` here, so everything downstream sees a single optimizer."""
    optimizer = _make(plugins, "optimizer", *cfg.component("optim"), model, device)
    if isinstance(optimizer, (list, tuple)):
        optimizer = CombinedOptimizer(optimizer)
    muon = getattr(torch.optim, "Muon", ())  # () where torch has no Muon: isinstance is then False
    if (world.distributed and cfg.trainer.distributed == "fsdp2"
            and any(isinstance(opt, muon) for opt in getattr(optimizer, "optimizers", [optimizer]))):
        raise UserError(f"optim: Muon orthogonalizes whole weight matrices, but trainer.distributed=fsdp2 gives each "
                        f"of the {world.size} ranks a shard of each; use trainer.distributed=ddp (each rank then "
                        "orthogonalizes the full gradient) or an optimizer without Muon")
    return optimizer


def build_trainer(cfg: RunConfig, plugins, run_dir: Path, world: World | None = None) -> Trainer:
    """``world``: this process's place under torchrun (``distributed.init``); one process by default."""
    world = world or World()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the same seed on every rank: identical initial weights
    device = pick_device(distributed.device_for(world, cfg.trainer.device))
    if device.type == "cpu":
        threads = set_cpu_threads(cfg.trainer.cpu_threads)
        if world.is_main:
            print(threads)
    if cfg.trainer.deterministic:
        # cuBLAS needs a fixed workspace to be repeatable; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    tokenizer = build_tokenizer(cfg, plugins)
    model = build_model(cfg, plugins, tokenizer).to(device)
    context = model.config.context  # a model plugin exposes its context length the same way
    dataset = build_dataset(cfg, plugins, tokenizer, context, rank=world.rank, world_size=world.size)
    # Before the optimizer: FSDP2 replaces the parameters with sharded ones.
    wrapped = distributed.wrap(model, world, cfg.trainer, device)
    optimizer = build_optimizer(cfg, plugins, model, device, world)
    schedule = _make(plugins, "schedule", *cfg.component("schedule"), cfg.trainer.max_steps)
    controller = _make(plugins, "phases", *cfg.component("phases"))
    listeners = []
    for kind, section in (("logger", "loggers"), ("callback", "callbacks")):
        if kind == "logger" and not world.is_main:  # one set of logs per run; callbacks run on every rank
            continue
        for name, sub in cfg.component(section):
            listener = _make(plugins, kind, name, sub, run_dir=run_dir)
            problem = hook_problems(plugins.manager, listener)
            if problem is None:
                try:  # checks hook argument names against the specs, then undoes the registration
                    plugins.manager.register(listener)
                    plugins.manager.unregister(listener)
                except pluggy.PluginValidationError as e:
                    problem = invalid_hook_message(e)
            if problem:
                raise UserError(f"{kind} '{name}' {problem}")
            listeners.append(listener)
    if world.distributed:
        # Weights are built alike on every rank; from here each rank draws its own stream (dropout masks).
        random.seed(cfg.seed + world.rank)
        np.random.seed(cfg.seed + world.rank)
        torch.manual_seed(cfg.seed + world.rank)
    return Trainer(cfg, plugins, run_dir, model=model, tokenizer=tokenizer, dataset=dataset, optimizer=optimizer,
                   schedule=schedule, controller=controller, listeners=listeners, device=device,
                   world=world, wrapped_model=wrapped)
