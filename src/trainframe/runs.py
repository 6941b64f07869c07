"""Loading what training wrote: a run directory's config and model from one of its checkpoints,
or an export directory's (``trainframe export``). The commands that read a model (generate, eval,
export) and plugins that do the same all start here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from trainframe.config import load_config
from trainframe.engine import checkpoint as ckpt
from trainframe.engine import rundir
from trainframe.errors import UserError


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
    from trainframe.plugins import current

    if is_export(run_dir):
        if which not in ("latest", None):
            raise UserError(f"--checkpoint: {run_dir} is an export of a single checkpoint; leave --checkpoint out")
        return LoadedRun(*load_export(run_dir, device, packed), None, {})
    if packed:
        raise UserError(f"--packed: {run_dir} is a run directory; packed ternary weights are in exports")
    plugins = current()
    cfg = load_config(rundir.config_file(run_dir), [], plugins.registry)
    path, state = ckpt.load_checkpoint(run_dir, which)
    tokenizer = build_tokenizer(cfg, plugins)
    model = build_model(cfg, plugins, tokenizer)
    model.load_state_dict(state["model"])
    return LoadedRun(cfg, tokenizer, model.to(pick_device(device)).eval(), path, state.get("loop", {}))


def load_run_model(run_dir: Path, which: str = "latest", device: str = "auto", packed: bool = False):
    """(config, tokenizer, model in eval mode) of ``load_run``."""
    return load_run(run_dir, which, device, packed)[:3]
