"""Checkpoint files: written atomically, loaded safely, the newest good one found on resume.

Layout under ``RUN_DIR/checkpoints/``: ``step_00000500.pt`` (the last ``keep_last`` kept) and
``best.pt`` (lowest val loss). A kill during a save leaves a hidden temporary file, never a broken ``.pt``;
the next ``train``/``resume`` of the run removes such files (``remove_stale_temps``).

Under FSDP2 the same names without ``.pt`` are directories of per-rank shards (``step_00000500/``,
``best/``; ``trainframe.engine.sharded``), published whole by a rename in the same way; everything
here (the newest good one, pruning, ``load``) takes both kinds.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from trainframe.errors import UserError
from trainframe.fileio import TEMP_GLOB, atomic_path, writing

STEP_FILE = re.compile(r"^step_(\d{8})(\.pt)?$")  # without .pt: a sharded checkpoint (a directory)


def step_path(ckpt_dir: Path, step: int, sharded: bool = False) -> Path:
    return Path(ckpt_dir) / (f"step_{step:08d}" if sharded else f"step_{step:08d}.pt")


def sharded_path(path: Path) -> Path:
    """The directory name of a sharded checkpoint for a ``.pt`` name (``best.pt`` -> ``best``)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix == ".pt" else path


def _nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) state: about the size of its checkpoint file."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(map(_nbytes, obj.values()))
    return sum(map(_nbytes, obj)) if isinstance(obj, (list, tuple)) else 0


def save_atomic(state: dict, path: Path) -> None:
    size = _nbytes(state)  # for the disk-full message
    with writing(path, "the checkpoint", size):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=True, what="the checkpoint", size=size) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def step_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint, oldest first."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).iterdir()
             if (m := STEP_FILE.match(p.name)) and p.is_dir() == (m.group(2) is None)]
    return sorted(found)


def remove(path: Path) -> None:
    """Remove a checkpoint file, or a sharded checkpoint's directory: renamed to a hidden temporary
    name first, so that a kill midway leaves no half-removed checkpoint under a step's name."""
    path = Path(path)
    if path.is_dir():
        doomed = path.with_name(f".{path.name}.{os.getpid()}.tmp-old")
        shutil.rmtree(doomed, ignore_errors=True)
        path.rename(doomed)
        shutil.rmtree(doomed)
    else:
        path.unlink(missing_ok=True)


def prune(ckpt_dir: Path, keep_last: int) -> None:
    for _, path in step_checkpoints(ckpt_dir)[:-keep_last]:
        remove(path)


def remove_stale_temps(ckpt_dir: Path) -> tuple[int, int]:
    """Remove the temporary files of saves killed mid-write; returns (files, bytes). Only for the
    run directory's owner (``rundir.lock``): no other process writes into ``ckpt_dir``."""
    count = size = 0
    for tmp in Path(ckpt_dir).glob(TEMP_GLOB):
        if tmp.is_dir():  # of a sharded save
            size += sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
            shutil.rmtree(tmp)
        else:
            size += tmp.stat().st_size
            tmp.unlink()
        count += 1
    return count, size


def load(path: Path, map_location="cpu") -> dict:
    """A checkpoint's state; of a sharded one (a directory) rank 0's metadata and the whole model
    as plain tensors, read in this process without a process group (``sharded.load_full``)."""
    if Path(path).is_dir():
        from trainframe.engine import sharded

        return sharded.load_full(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, wrong file: all mean "not a usable checkpoint"
        why = (str(e).splitlines() or [""])[0][:120]  # an EOFError of a zero-byte file has no message
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}{': ' + why if why else ''})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a trainframe checkpoint")
    return state


def load_latest_good(ckpt_dir: Path, map_location="cpu", loader=None) -> tuple[Path, dict]:
    """The newest step checkpoint that loads; each bad one is reported in one line and skipped.
    ``loader(path)``: how to load one (default ``load``; under FSDP2 resume, this rank's metadata
    of a sharded one after checking it is whole)."""
    candidates = step_checkpoints(ckpt_dir)
    if not candidates:
        raise UserError(f"{ckpt_dir}: no checkpoint to resume from")
    for _, path in reversed(candidates):
        try:
            return path, (loader(path) if loader is not None else load(path, map_location))
        except UserError as e:
            print(f"trainframe: {e}; trying the previous one", file=sys.stderr)
    raise UserError(f"{ckpt_dir}: every checkpoint is corrupt")


def load_checkpoint(run_dir: Path, which: str = "latest", map_location="cpu") -> tuple[Path, dict]:
    """(path, state) of ``latest``, ``best`` or a step number in ``run_dir``. ``latest`` (and ``best``
    where there is no best.pt) is the newest step checkpoint that loads, as ``resume`` takes it; a
    file that ``best`` or a step number names must load."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if which == "best":
        for path in (ckpt_dir / "best.pt", ckpt_dir / "best"):  # the second: sharded (FSDP2)
            if path.exists():
                return path, load(path, map_location)
        which = "latest"
    if which == "latest":
        if not step_checkpoints(ckpt_dir):
            raise UserError(f"{run_dir}: no checkpoint in {ckpt_dir}")
        return load_latest_good(ckpt_dir, map_location)
    if not which.isdigit():
        raise UserError(f"--checkpoint: expected best, latest or a step number, got '{which}'")
    path = step_path(ckpt_dir, int(which))
    if not path.exists() and step_path(ckpt_dir, int(which), sharded=True).is_dir():
        path = step_path(ckpt_dir, int(which), sharded=True)
    if not path.exists():
        steps = ", ".join(str(s) for s, _ in step_checkpoints(ckpt_dir)) or "none"
        raise UserError(f"{run_dir}: no checkpoint for step {which} (have: {steps})")
    return path, load(path, map_location)


def load_into(model, optimizer, state: dict) -> None:
    """A ``.pt`` checkpoint's model and optimizer state into the model and optimizer of this process
    (under FSDP2: ``sharded.load_full_state``)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as e:  # another model shape, or weights from an older layout
        first = str(e).strip().splitlines()[0]
        step = state["loop"]["step"]
        raise UserError(f"checkpoint at step {step} does not fit this run's model and optimizer ({first}); "
                        "resume it with the config and trainframe version that wrote it") from None


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
