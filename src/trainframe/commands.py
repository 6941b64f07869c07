"""The built-in CLI commands, registered like any plugin's (see ``trainframe.builtin``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from trainframe.bench import throughput_args, throughput_main
from trainframe.bench_target import target_args, target_main
from trainframe.config import load_config
from trainframe.describe import describe_args, describe_main
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import rundir
from trainframe.errors import UserError
from trainframe.evaluate import eval_args, eval_main
from trainframe.export import export_args, export_main
from trainframe.fileio import atomic_dir, write_text_atomic
from trainframe.logging import truncate_metrics
from trainframe.plot import plot_args, plot_main


def _plugins():
    from trainframe.plugins import current

    return current()


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. trainer.max_steps=10 optim.lr=3e-4")


# ------------------------------------------------------------------------------------------ train
def _nproc_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine, one per GPU (starts torchrun --standalone); "
                        "for several machines run torchrun yourself, see docs/performance.md")


def train_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--run-dir", type=Path, help="where the run is written (default runs/NAME-TIMESTAMP)")
    _nproc_arg(p)


def _check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise UserError(f"--nproc: expected a positive integer, got {nproc}")
    if nproc > 1 and "RANK" in os.environ:
        raise UserError("--nproc: already running under torchrun; leave it out (torchrun's --nproc_per_node sets it)")


def _launch(nproc: int, device: str, argv: list) -> int:
    """Run ``python -m trainframe ARGV`` in ``nproc`` processes under torchrun; its exit status."""
    if device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < nproc:
        raise UserError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--nproc {nproc}: trainer.device '{device}' needs CUDA, which is not available")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "trainframe", *map(str, argv)]
    proc = subprocess.Popen(command)
    stopped_by = []

    def on_signal(signum, frame):
        stopped_by.append(signum)
        if signum == signal.SIGTERM:
            proc.send_signal(signum)

    # `kill` and `docker stop` signal this process alone: SIGTERM goes on to torchrun, which passes it
    # to every rank; Ctrl-C reaches torchrun and the ranks directly. The ranks save at the next log
    # step and stop; torchrun then exits 1, so the status is ours: 128 + the signal, as in one process.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + stopped_by[0] if stopped_by else status


def _describe_run(trainer) -> None:
    model = trainer.model
    if hasattr(model, "summary"):
        print(f"model: {model.summary()}")
    else:  # a plugin's model: count what we can
        print(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    t = trainer.config.trainer
    ranks = f" x {trainer.world.size} ranks ({t.distributed})" if trainer.world.distributed else ""
    print(f"device: {trainer.device}, batch {t.batch_size} x accum {t.grad_accum}{ranks} x context "
          f"{trainer.context}, {t.max_steps} steps; run dir {trainer.run_dir}", flush=True)


def _fit(trainer) -> int:
    from trainframe.engine.loop import TrainingStopped

    try:
        reason = trainer.fit()
    except TrainingStopped as e:
        print(f"trainframe: {e}", file=sys.stderr)
        return 1
    val = f", best val loss {trainer.best_val:.4f}" if trainer.best_val < float("inf") else ""
    stopped = trainer.stop_signal if reason == "interrupted" else None
    if trainer.world.is_main:
        what = {None: "finished", signal.SIGINT: "interrupted"}.get(stopped, "terminated")
        print(f"{what} at step {trainer.step}{val}; run dir {trainer.run_dir}")
    # Stopped by a signal: the status of a process the signal killed (130, 143), so that scripts and
    # schedulers do not take the run for finished; the checkpoint is written, `resume` goes on.
    return 128 + stopped if stopped else 0


def _claim(run_dir: Path, world, new: bool) -> rundir.RunDirLock:
    """Rank 0 takes the run directory (``new``: train's rule, see engine/rundir.py) and removes the
    temporary files of saves killed mid-write (no other process writes there); a refusal reaches
    every rank, so that all stop."""
    from trainframe.engine import distributed
    from trainframe.engine.loop import check_run_dir

    held, error = rundir.RunDirLock(), None
    if world.is_main:
        try:
            check_run_dir(run_dir)
            held = rundir.lock(run_dir, new)
        except UserError as e:
            error = str(e)
        else:
            count, size = ckpt.remove_stale_temps(run_dir / "checkpoints")
            if count:
                print(f"trainframe: removed {count} temporary file(s) ({size / 1e6:.1f} MB) left in "
                      f"{run_dir / 'checkpoints'} by saves that were killed", file=sys.stderr)
    error = distributed.broadcast_object(error, world)
    if error:
        raise UserError(error)
    return held


def train_main(args: argparse.Namespace) -> int:
    from trainframe.engine import distributed

    _check_nproc(args.nproc)
    plugins = _plugins()
    cfg = load_config(args.config, args.overrides, plugins.registry)
    run_dir = args.run_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rundir.check_new(run_dir)
    if args.nproc > 1:
        return _launch(args.nproc, cfg.trainer.device, ["train", args.config, *args.overrides, "--run-dir", run_dir])
    world = distributed.init(cfg.trainer.device)
    try:
        return _train(cfg, plugins, run_dir, world)
    finally:
        distributed.shutdown(world)


def _train(cfg, plugins, run_dir: Path, world) -> int:
    # Its own function so the trainer is garbage once it returns, before the process group goes.
    from trainframe.engine import distributed
    from trainframe.engine.build import build_trainer

    run_dir = distributed.broadcast_object(run_dir, world)  # one name, even if ranks read the clock apart
    trainer = build_trainer(cfg, plugins, run_dir, world)
    held = _claim(run_dir, world, new=True)
    try:
        if world.is_main:
            write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
            _describe_run(trainer)
        distributed.barrier(world)
        return _fit(trainer)
    finally:
        held.release()


# ----------------------------------------------------------------------------------------- resume
def resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory written by `trainframe train`")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides, e.g. trainer.max_steps=20000 to continue a WSD run for longer")
    _nproc_arg(p)


def resume_main(args: argparse.Namespace) -> int:
    from trainframe.engine import distributed

    _check_nproc(args.nproc)
    plugins = _plugins()
    rundir.check_resumable(args.run_dir)
    cfg = load_config(args.run_dir / "config.yaml", args.overrides, plugins.registry)
    if args.nproc > 1:
        return _launch(args.nproc, cfg.trainer.device, ["resume", args.run_dir, *args.overrides])
    world = distributed.init(cfg.trainer.device)
    try:
        return _resume(cfg, plugins, args, world)
    finally:
        distributed.shutdown(world)


def _resume(cfg, plugins, args: argparse.Namespace, world) -> int:
    from trainframe.engine.build import build_trainer

    trainer = build_trainer(cfg, plugins, args.run_dir, world)
    held = _claim(args.run_dir, world, new=False)
    try:
        return _continue(trainer, cfg, plugins, args, world)
    finally:
        held.release()


def _continue(trainer, cfg, plugins, args: argparse.Namespace, world) -> int:
    config_file = args.run_dir / "config.yaml"
    say = print if world.is_main else (lambda *a, **k: None)
    if ckpt.step_checkpoints(args.run_dir / "checkpoints"):
        path, old_max = trainer.resume()
        say(f"resuming from {path} at step {trainer.step}")
    else:  # killed before its first checkpoint: the same run from the start, its metric rows dropped
        if world.is_main:
            truncate_metrics(args.run_dir, 0)
        old_max = cfg.trainer.max_steps
        say(f"resuming {args.run_dir} from step 0: it stopped before its first checkpoint")
    if old_max != cfg.trainer.max_steps:
        name, schedule_cfg = cfg.component("schedule")
        old = plugins.registry.get("schedule", name).factory(schedule_cfg, old_max)
        say(f"trainer.max_steps changed from {old_max} to {cfg.trainer.max_steps}: the '{name}' schedule is "
            f"recomputed for the new length; lr factor at step {trainer.step} was {old(trainer.step):.4f}, "
            f"is now {trainer.schedule(trainer.step):.4f}")
    if args.overrides and world.is_main:
        write_text_atomic(config_file, cfg.to_yaml())
    if trainer.step >= trainer.max_steps:
        say(f"the run is complete ({trainer.step} steps); raise trainer.max_steps to continue it")
        return 0
    if world.is_main:
        _describe_run(trainer)
    return _fit(trainer)


# ----------------------------------------------------------------------------------------- config
def config_show_main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, _plugins().registry)
    print(cfg.to_yaml(), end="")
    return 0


def config_validate_main(args: argparse.Namespace) -> int:
    load_config(args.config, args.overrides, _plugins().registry)
    print(f"{args.config}: valid")
    return 0


# ---------------------------------------------------------------------------------------- plugins
def plugins_main(args: argparse.Namespace) -> int:
    plugins = _plugins()
    registry = plugins.registry
    for info in plugins.info:
        print(f"{info.name} {info.version} ({info.module}){'' if info.status == 'ok' else ': ' + info.status}")
        for kind, table in registry.components.items():
            names = sorted(n for n, c in table.items() if c.plugin == info.name)
            if names:
                print(f"  {kind}: {', '.join(names)}")
        commands = sorted(n for n, c in registry.commands.items() if c.plugin == info.name)
        if commands:
            print(f"  command: {', '.join(commands)}")
    return 0


# --------------------------------------------------------------------------------------- generate
def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory")
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a new document; a newline for text tokenizers)")
    p.add_argument("--prefix-from", type=Path, metavar="FILE",
                   help="complete the document this file begins, as typed so far (it need not parse: the "
                        "longest run of leading lines the tokenizer can continue is kept; constrained); "
                        "with --prefix-tokens, continue the whole file's first K tokens instead")
    p.add_argument("--prefix-tokens", type=int, default=None, metavar="K",
                   help="how many tokens of --prefix-from's encoding to keep")
    p.add_argument("--infill", type=Path, metavar="FILE",
                   help="regenerate the value at --at in this document from everything before and after it "
                        "(a run trained with fill-in-the-middle; constrained: the document stays valid)")
    p.add_argument("--at", metavar="PATH", help="with --infill: where, e.g. jobs.build.steps[2] or jobs.test")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=1, help="number of samples (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="samples drawn at once (default 16)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write one file per sample into DIR, plus samples.jsonl, instead of printing")
    p.add_argument("--constrained", action="store_true",
                   help="sample only tokens the tokenizer's allowed_next permits (schema-valid output)")
    p.add_argument("--max-tokens", type=int, default=200, help="new tokens per sample at most (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the K likeliest tokens; 0 = all (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep tokens up to this mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="latest", help="best, latest or a step number")
    p.add_argument("--device", default="auto")


class LoadedRun(NamedTuple):
    cfg: Any
    tokenizer: Any
    model: Any  # in eval mode
    checkpoint: Path | None  # the checkpoint file read; None for an export
    loop: dict  # its loop state (step, best_val); empty for an export


def load_run(run_dir: Path, which: str = "latest", device: str = "auto", packed: bool = False) -> LoadedRun:
    """A run directory's config and model from its checkpoint ``which`` (``ckpt.load_checkpoint``),
    or an export directory's (``trainframe export``; ``packed``: from its packed ternary weights)."""
    from trainframe.engine.build import build_model, build_tokenizer, pick_device
    from trainframe.export import is_export, load_export

    if is_export(run_dir):
        if which not in ("latest", None):
            raise UserError(f"--checkpoint: {run_dir} is an export of a single checkpoint; leave --checkpoint out")
        return LoadedRun(*load_export(run_dir, device, packed), None, {})
    if packed:
        raise UserError(f"--packed: {run_dir} is a run directory; packed ternary weights are in exports")
    plugins = _plugins()
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(config_file, [], plugins.registry)
    path, state = ckpt.load_checkpoint(run_dir, which)
    tokenizer = build_tokenizer(cfg, plugins)
    model = build_model(cfg, plugins, tokenizer)
    model.load_state_dict(state["model"])
    return LoadedRun(cfg, tokenizer, model.to(pick_device(device)).eval(), path, state.get("loop", {}))


def load_run_model(run_dir: Path, which: str = "latest", device: str = "auto", packed: bool = False):
    """(config, tokenizer, model in eval mode) of ``load_run``."""
    return load_run(run_dir, which, device, packed)[:3]


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{flag}: {path}: cannot read: {e}") from None


def _prompt(args: argparse.Namespace, tokenizer) -> tuple[list[int], str]:
    """(prompt ids, prompt text to print before the sample; None: decode the prompt ids with it)."""
    if args.prefix_from is not None:
        text = _read_text(args.prefix_from, "--prefix-from")
        try:
            ids = list(tokenizer.encode(text))
        except ValueError as e:
            raise UserError(f"--prefix-from: {args.prefix_from}: the tokenizer rejects it: {e}") from None
        return ids[: args.prefix_tokens] if args.prefix_tokens is not None else ids, None
    if args.prompt is not None:
        try:
            return list(tokenizer.encode(args.prompt)), args.prompt
        except ValueError as e:
            raise UserError(f"--prompt: the tokenizer rejects it: {e}") from None
    return [], ""


def sample_documents(model, tokenizer, start: list[int], prompt: list[int], n: int, *, max_tokens: int,
                     batch_size: int = 16, constrained: bool = False, temperature: float = 0.8,
                     top_k: int | None = 50, top_p: float | None = None, seed: int = 0, progress=None,
                     allowed_new=None):
    """Yield (new ids, finished) for ``n`` samples continuing ``start + prompt``.

    A sample is finished when it emits the tokenizer's ``eos_id`` (``pad_id`` for tokenizers whose
    documents end in padding). ``constrained`` masks every step with ``allowed_next(prompt + new)``;
    a tokenizer that also has ``closing_cost`` gets the tokens left as ``budget``, so every sample
    closes within ``max_tokens``, its end token included. ``allowed_new(new ids)``: a mask
    function of the new tokens alone, used instead (an infill's middle, a typed completion).
    """
    stop = getattr(tokenizer, "eos_id", None)
    stop = getattr(tokenizer, "pad_id", None) if stop is None else stop
    allowed = None
    if allowed_new is not None:
        base = len(start) + len(prompt)
        allowed = lambda row: allowed_new(row[base:])  # noqa: E731
    elif constrained:
        if not hasattr(tokenizer, "allowed_next"):
            raise UserError(f"--constrained: the tokenizer {type(tokenizer).__name__} has no allowed_next")
        skip, base = len(start), len(start) + len(prompt)
        if hasattr(tokenizer, "closing_cost") and stop is not None:
            allowed = lambda row: tokenizer.allowed_next(row[skip:], budget=max_tokens - 1 - (len(row) - base))
        else:
            allowed = lambda row: tokenizer.allowed_next(row[skip:])
        try:
            allowed(start + prompt)
        except ValueError as e:
            raise UserError(f"--constrained: the prompt cannot be completed: {e}") from None
        if hasattr(tokenizer, "closing_cost") and (need := tokenizer.closing_cost(prompt) + 1) > max_tokens:
            raise UserError(f"--max-tokens: {max_tokens} is too few: the shortest complete document from this "
                            f"prompt takes {need} more tokens, its end token included")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    context = start + prompt
    for first in range(0, n, batch_size):
        rows = min(batch_size, n - first)
        idx = torch.tensor([context] * rows, device=device)
        with torch.no_grad():
            out = model.generate(idx, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 eos_id=stop, allowed_fn=allowed, generator=gen)
        for row in out[:, len(context):].tolist():
            finished = stop is not None and stop in row
            yield (row[: row.index(stop)] if finished else row), finished
        if progress is not None:
            progress(rows)


def _render(tokenizer, ids: list[int], prompt_text: str | None, new: list[int]) -> tuple[str, str]:
    """(file text, suffix): the tokenizer's ``decode_file`` when it has one, else decoded text."""
    if hasattr(tokenizer, "decode_file"):
        return tokenizer.decode_file(ids)
    if prompt_text is None:
        return tokenizer.decode(ids), ".txt"
    return prompt_text + tokenizer.decode(new), ".txt"


def generate_main(args: argparse.Namespace) -> int:
    for flag, value in (("--max-tokens", args.max_tokens), ("--n", args.n), ("--batch-size", args.batch_size)):
        if value <= 0:
            raise UserError(f"{flag}: expected a positive integer, got {value}")
    if not 0 <= args.temperature < math.inf:  # NaN too
        raise UserError(f"--temperature: expected a number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k: expected an integer >= 0 (0 = every token), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p: expected a number > 0 and <= 1, got {args.top_p}")
    if args.prefix_tokens is not None and (args.prefix_from is None or args.prefix_tokens <= 0):
        raise UserError("--prefix-tokens: expected a positive integer, together with --prefix-from")
    if args.prefix_from is not None and args.prompt is not None:
        raise UserError("--prompt and --prefix-from: give one of them")
    if args.out is not None and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"--out: {args.out} exists and is not an empty directory; choose a new one")
    if (args.infill is None) != (args.at is None):
        raise UserError("--infill and --at: give both (the document, and the path of the value to regenerate)")
    if args.infill is not None and (args.prefix_from is not None or args.prompt is not None):
        raise UserError("--infill: leave out --prompt and --prefix-from")
    cfg, tokenizer, model = load_run_model(args.run_dir, args.checkpoint, args.device)
    _, data_cfg = cfg.component("data")
    start = list(data_cfg.start_tokens(tokenizer)) if hasattr(data_cfg, "start_tokens") else []
    infill = allowed_new = None
    if args.infill is not None:
        if not (hasattr(tokenizer, "infill") and hasattr(data_cfg, "layout")):
            raise UserError(f"--infill: the run's tokenizer {type(tokenizer).__name__} and dataset cannot fill in "
                            "the middle")
        infill = tokenizer.infill(_read_text(args.infill, "--infill"), args.at,
                                  data_cfg.layout(tokenizer, model.config.context), args.max_tokens)
        start, prompt, prompt_text, allowed_new = infill.prompt, [], None, infill.allowed
    elif args.prefix_from is not None and args.prefix_tokens is None and hasattr(tokenizer, "complete_typed"):
        typed = tokenizer.complete_typed(_read_text(args.prefix_from, "--prefix-from"))
        print(f"completing {args.prefix_from} from its first {typed.lines} of {len(typed.text.splitlines())} "
              f"lines ({len(typed.prompt)} tokens)", file=sys.stderr)
        prompt, prompt_text = typed.prompt, None
        if typed.min_tokens() > args.max_tokens:
            raise UserError(f"--max-tokens: {args.max_tokens} is too few: the shortest completion of "
                            f"{args.prefix_from} takes {typed.min_tokens()} tokens, its end token included")
        allowed_new = lambda new: typed.allowed(new, args.max_tokens - 1 - len(new))  # noqa: E731
    else:
        prompt, prompt_text = _prompt(args, tokenizer)
    if allowed_new is not None:
        args.constrained = True  # a completion or an infill must come back as a valid document
    if not start and not prompt:  # a text model: continue a newline, as before
        prompt_text = "\n"
        prompt = list(tokenizer.encode(prompt_text)) or [tokenizer.eos_id]
    show = SampleProgress(args.n) if args.out is not None else None
    rows = []
    samples = sample_documents(model, tokenizer, start, prompt, args.n, max_tokens=args.max_tokens,
                               batch_size=args.batch_size, constrained=args.constrained,
                               temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                               seed=args.seed, progress=show and show.advance, allowed_new=allowed_new)
    # --out appears whole, with samples.jsonl, or not at all
    with (atomic_dir(args.out, "the samples") if args.out is not None else contextlib.nullcontext()) as folder:
        try:
            for i, (new, finished) in enumerate(samples, 1):
                if infill is not None:  # the middle goes back into the document
                    new = infill.document(new)
                row = {"sample": i, "file": None, "tokens": len(prompt) + len(new), "prompt_tokens": len(prompt),
                       "finished": finished, "error": None}
                if args.constrained and allowed_new is None and hasattr(tokenizer, "budget_limited"):
                    row["budget_closed"] = tokenizer.budget_limited(prompt, new, args.max_tokens - 1)
                try:
                    text, suffix = _render(tokenizer, prompt + new, prompt_text, new)
                except ValueError as e:
                    row["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
                    text = suffix = None
                if folder is None:
                    if args.n > 1 or row["error"]:
                        print(f"--- sample {i}" + (f": does not decode: {row['error']}" if row["error"] else ""))
                    if text is not None:
                        print(text)
                    continue
                if text is not None:
                    row["file"] = f"sample_{i:04d}{suffix}"
                    (folder / row["file"]).write_text(text, encoding="utf-8")
                rows.append(row)
        finally:
            if show is not None:
                show.close()
        if folder is not None:
            (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if args.out is not None:
        decoded = sum(r["file"] is not None for r in rows)
        closed = sum(bool(r.get("budget_closed")) for r in rows)
        print(f"{len(rows)} samples, {decoded} decoded, {sum(r['finished'] for r in rows)} finished"
              + (f" ({closed} closed early to fit --max-tokens)" if closed else "") + f"; written to {args.out}")
        if decoded < len(rows):
            fix = ("sample with --constrained (only tokens that keep the document valid) or raise --max-tokens"
                   if hasattr(tokenizer, "allowed_next") and not args.constrained else "raise --max-tokens")
            print(f"trainframe: {len(rows) - decoded} of {len(rows)} samples do not decode (samples.jsonl says "
                  f"why): {fix}", file=sys.stderr)
    return 0


class SampleProgress:
    """A rich progress bar on a terminal, nothing otherwise."""

    def __init__(self, total: int, label: str = "sampling") -> None:
        self.bar = None
        if sys.stdout.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# -------------------------------------------------------------------------------- tokenizer train
def tokenizer_train_args(p: argparse.ArgumentParser) -> None:
    trainers = _plugins().registry.components["tokenizer_trainer"]
    p.add_argument("config", nargs="?", help="a run config: train the tokenizer it names on its data")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the run config")
    p.add_argument("--kind", choices=sorted(trainers),
                   help="which tokenizer to train (default: the config's tokenizer.name); "
                   + "; ".join(f"{name}: {t.help}" for name, t in sorted(trainers.items())))
    p.add_argument("--data", default=None, help="training corpus, for kinds that read a file instead of a config")
    p.add_argument("--out", default=None, help="file to write (default: where the config or kind says)")
    p.add_argument("--vocab-size", type=int, default=8192, help="total ids, special tokens included (default 8192)")
    for name, trainer in sorted(trainers.items()):
        if trainer.add_arguments:
            trainer.add_arguments(p.add_argument_group(f"--kind {name}"))


def tokenizer_train_main(args: argparse.Namespace) -> int:
    """Run the trainer that ``--kind`` names, or the one for the config's ``tokenizer.name``.
    The trainer receives ``args`` with ``args.run_config`` set (the validated config, or None)."""
    registry = _plugins().registry
    trainers = registry.components["tokenizer_trainer"]
    args.run_config = load_config(args.config, args.overrides, registry) if args.config else None
    kind = args.kind
    if kind is None:
        if args.run_config is None:
            raise UserError("tokenizer train: give a run CONFIG (its tokenizer.name picks the kind) or --kind "
                            f"({', '.join(sorted(trainers)) or 'none registered'})")
        kind, _ = args.run_config.component("tokenizer")
        if kind not in trainers:
            raise UserError(f"{args.config}: tokenizer.name: '{kind}' has no trainer; pass --kind "
                            f"({', '.join(sorted(trainers)) or 'none registered'})")
    return int(registry.get("tokenizer_trainer", kind).factory(args) or 0)


def register_commands(registry) -> None:
    registry.add_command("train", train_main, train_args, help="train a model from a YAML config")
    registry.add_command("resume", resume_main, resume_args, help="continue a run from its newest good checkpoint")
    registry.add_command("bench throughput", throughput_main, throughput_args,
                         help="time training steps: tokens/s, ms/step, MFU, peak memory")
    registry.add_command("bench target", target_main, target_args,
                         help="recipes against a baseline: wall-clock, tokens, steps and FLOPs to a target val loss")
    registry.add_command("config show", config_show_main, _config_args, help="print the resolved config")
    registry.add_command("config validate", config_validate_main, _config_args, help="check a config")
    registry.add_command("config describe", describe_main, describe_args,
                         help="list config options (key, type, default, description) of every section and component")
    registry.add_command("plugins", plugins_main, help="list plugins, versions and what each registers")
    registry.add_command("generate", generate_main, generate_args, help="sample text from a trained run")
    registry.add_command("plot", plot_main, plot_args, help="plot a run's train and validation loss to a PNG")
    registry.add_command("export", export_main, export_args,
                         help="write a checkpoint as safetensors + config + tokenizer files (+ packed ternary)")
    registry.add_command("eval", eval_main, eval_args,
                         help="val loss, perplexity and bits per character of a run or an export")
    registry.add_command("tokenizer train", tokenizer_train_main, tokenizer_train_args,
                         help="learn a tokenizer (the kind a config names, or --kind) and write it to one file")
