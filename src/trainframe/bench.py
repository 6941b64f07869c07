"""``trainframe bench throughput``: time training steps through the real Trainer.

Under torchrun (``torchrun --nproc_per_node N -m trainframe bench throughput ...``) the figures
are for all ranks together. The run is the config's own: same model, optimizer, phase controller, hooks, plugins and loggers
(console output is left out so it does not mix with the figures). After ``--warmup`` steps
(torch.compile, the autotuner and the loggers' first write run there) the device is synchronised and
``--steps`` steps are timed, synchronising again before the clock is read at the end.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import trainframe
from trainframe.config import load_config, resolve
from trainframe.engine.prefetch import pinned
from trainframe.errors import UserError
from trainframe.fileio import atomic_path


class RandomTokens:
    """Uniform random tokens, the reference loop's data: a few batches made once, in pinned memory
    on CUDA, and handed out in turn, so the figures measure the loop and not the generator."""

    def __init__(self, vocab_size: int, context: int, batch_size: int, pin: bool, seed: int = 0, pool: int = 4):
        gen = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(pool):
            tokens = torch.randint(0, vocab_size, (batch_size, context + 1), generator=gen)
            x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
            self.batches.append(pinned((x, y)) if pin else (x, y))
        self.index = 0

    def next_batch(self, batch_size: int):
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def val_batches(self, batch_size: int, max_batches: int):
        yield from self.batches[:max_batches]

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]


class StepTimer:
    """A listener that starts the clock after the warm-up steps and stops it after the last step;
    with ``profile`` it runs torch.profiler over the same steps (started before the clock, stopped
    after it, so only its per-operator overhead is timed)."""

    def __init__(self, device: torch.device, warmup: int, last: int, profile: bool = False):
        self.device, self.warmup, self.last = device, warmup, last
        self.start = self.end = None
        self.targets = torch.zeros((), dtype=torch.long, device=device)  # counted targets of the timed steps
        self.profiler = None
        if profile:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # The clock starts when the first timed step starts, not when the last warm-up step ends: the
    # warm-up's last log step (and the loggers' first-use set-up, e.g. tensorboard's import, ~0.2 s)
    # runs in between and belongs to the warm-up.
    @trainframe.hookimpl
    def trainframe_step_start(self, step):
        if step == self.warmup + 1:  # the first timed step (hooks number steps from 1)
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            if self.profiler is not None:
                self.profiler.start()
            self.start = time.perf_counter()

    @trainframe.hookimpl
    def trainframe_batch_ready(self, batch):
        if self.start is not None and self.end is None:  # on the device: no host sync per step
            self.targets += (batch[1] != -1).sum()

    @trainframe.hookimpl
    def trainframe_step_end(self, step):
        if step == self.last:
            self._sync()
            self.end = time.perf_counter()
            if self.profiler is not None:
                self.profiler.stop()

    @trainframe.hookimpl
    def trainframe_fit_end(self):
        if self.profiler is not None and self.start is not None and self.end is None:
            self.profiler.stop()  # the run ended early (NaN stop, Ctrl-C): leave no profiler running

    def top_operators(self, steps: int, n: int = 15) -> list[dict]:
        """The operators and kernels that took the most time per step: GPU time on CUDA, CPU time
        otherwise (self time: a kernel once, not again in the op that launched it)."""
        on_gpu = self.device.type == "cuda"
        rows = []
        for event in self.profiler.key_averages():
            total = event.self_device_time_total if on_gpu else event.self_cpu_time_total
            if total > 0:
                rows.append({"name": event.key, "ms_per_step": total / 1e3 / steps,
                             "calls_per_step": event.count / steps})
        return sorted(rows, key=lambda r: r["ms_per_step"], reverse=True)[:n]


def measure(cfg, plugins, steps: int, warmup: int, data: str, world=None, profile: Path | None = None) -> dict:
    """Build the config's Trainer, run warmup + steps steps, return the figures (tokens over all ranks);
    with ``profile`` also write a trace there and add the top operators (key ``profile``)."""
    from trainframe.engine.build import build_trainer
    from trainframe.engine.loop import TrainingStopped

    with tempfile.TemporaryDirectory(prefix="trainframe-bench-") as run_dir:
        trainer = build_trainer(cfg, plugins, Path(run_dir), world)
        if data == "random":
            vocab = getattr(trainer.model.config, "vocab_size", None) or trainer.tokenizer.vocab_size()
            trainer.dataset = RandomTokens(vocab, trainer.context, cfg.trainer.batch_size,
                                           pin=trainer.device.type == "cuda", seed=cfg.seed)
        timer = StepTimer(trainer.device, warmup, warmup + steps, profile=profile is not None)
        trainer.listeners.append(timer)
        try:
            trainer.fit(finish=False)
        except TrainingStopped as e:  # NaN steps: one line, not a traceback
            raise UserError(f"bench throughput: {e}") from None
        if timer.end is None:
            raise UserError(f"the run stopped at step {trainer.step} before {warmup + steps} steps ({trainer.stop_reason})")
        seconds = (timer.end - timer.start) / steps
        tokens = cfg.trainer.batch_size * cfg.trainer.grad_accum * trainer.context * trainer.world.size
        tokens_per_s = tokens / seconds
        cuda = trainer.device.type == "cuda"
        profiled = {}
        if profile is not None:
            if trainer.world.distributed and trainer.world.rank > 0:
                profile = profile.with_name(f"{profile.stem}.rank{trainer.world.rank}{profile.suffix}")
            with atomic_path(profile) as tmp:
                timer.profiler.export_chrome_trace(str(tmp))
            profiled = {"profile": {"trace": str(profile), "top": timer.top_operators(steps)}}
        # Counted (non-padding) targets per second: what packing raises; one rank's count, times the ranks.
        target_tokens_per_s = float(timer.targets) * trainer.world.size / (timer.end - timer.start)
        return {
            "tokens_per_s": tokens_per_s,
            "target_tokens_per_s": target_tokens_per_s,
            "ms_per_step": seconds * 1e3,
            "mfu": trainer.mfu(tokens_per_s),  # per GPU; tokens/s counts every rank
            "peak_mem_gb": trainer.peak_mem_gb() if cuda else None,
            "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
            "flops_per_token": trainer.flops_per_token,
            "batch_size": cfg.trainer.batch_size, "grad_accum": cfg.trainer.grad_accum, "context": trainer.context,
            "steps": steps, "warmup": warmup, "data": data, "device": _device_name(trainer.device),
            "torch": torch.__version__, "compile": trainer.forward_model is not trainer.wrapped_model,
            "cuda_graphs": trainer.cuda_graphs,
            "host_sync_per_step": not trainer.defer_sync, "world_size": trainer.world.size,
            "distributed": cfg.trainer.distributed if trainer.world.distributed else None,
            **profiled,
        }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_bench(config, overrides: list[str], steps: int, warmup: int, data: str, plugins=None,
              profile: Path | None = None) -> dict:
    """``bench throughput`` as a function: the figures of ``steps`` timed steps of CONFIG."""
    from trainframe.engine import distributed
    from trainframe.plugins import current

    if steps < 1 or warmup < 1:
        raise UserError(f"--steps and --warmup: expected positive integers, got {steps} and {warmup}")
    if profile is not None and not profile.parent.is_dir():
        raise UserError(f"--profile: {profile.parent} is not a directory; expected a path for the trace file")
    plugins = plugins or current()
    overrides = [*overrides, f"trainer.max_steps={warmup + steps}", "trainer.eval_every=0",
                 "trainer.save_every=0", "trainer.save_every_minutes=null", "trainer.sample_tokens=0"]
    cfg = load_config(config, overrides, plugins.registry)
    # Every logger stays on except the console: its progress bar would mix with the figures.
    resolved = cfg.to_dict()
    resolved["loggers"] = [item for item in resolved["loggers"] if item["name"] != "console"]
    cfg = resolve(resolved, plugins.registry, source=str(config))
    world = distributed.init(cfg.trainer.device)  # under torchrun: every rank times its steps
    try:
        return {"name": cfg.name, **measure(cfg, plugins, steps, warmup, data, world, profile)}
    finally:
        distributed.shutdown(world)
