"""Who may write into a run directory, and when.

**One owner.** A run holds an exclusive ``flock`` on ``RUN_DIR/.trainframe.lock`` for as long as
its process lives (under torchrun: rank 0's). The OS drops the lock when the process dies, however
it dies, so a killed run never leaves the directory stuck. The file stays behind (unlinking a lock
file races with the next process to open it); it holds the last owner's pid, for the "in use"
message, and marks the directory as one ``trainframe train`` started. Where ``flock`` is missing
(no ``fcntl``) or refused (some network filesystems), the run goes on unlocked and says so.

**Nothing foreign is touched.** ``train`` writes only into a new or empty directory, so it never
overwrites or appends to a file it did not create; a directory that already holds a run is
continued with ``resume``, which accepts only a directory ``train`` started (the lock file, or
step checkpoints from before it existed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainframe.engine import checkpoint as ckpt
from trainframe.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".trainframe.lock"


class RunDirLock:
    """The open, locked lock file; closing it (``release``, or the process ending) unlocks."""

    def __init__(self, file=None):
        self.file = file

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _in_use(run_dir: Path, holder: str) -> UserError:
    who = f" (pid {holder})" if holder.isdigit() else ""
    return UserError(f"{run_dir}: in use by another trainframe run{who}; wait for it to end, "
                     "or choose another --run-dir")


def lock(run_dir: Path, new: bool = False) -> RunDirLock:
    """Take ``run_dir`` (it must exist) for this process, or raise a UserError naming the holder.
    ``new``: ``train``'s rule, checked again under the lock (another run may have begun meanwhile)."""
    f = open(Path(run_dir) / LOCK_FILE, "a+")  # held open for the run
    try:
        if fcntl is None:
            raise OSError("file locks are not available on this platform")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise _in_use(run_dir, holder) from None
    except OSError as e:
        print(f"trainframe: {run_dir}: cannot lock the run directory ({e.strerror or e}); make sure no "
              "other run writes into it", file=sys.stderr)
    if new:
        try:
            _check_empty(Path(run_dir))
        except UserError:
            f.close()
            raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return RunDirLock(f)


def check_free(run_dir: Path) -> None:
    """Raise if another process holds ``run_dir``; creates nothing."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return
    with open(path) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(run_dir, f.read().strip()) from None
        except OSError:  # unlockable filesystem: lock() says so
            pass


def check_new(run_dir: Path) -> None:
    """For ``train``: ``run_dir`` is free and new or empty (its lock file aside); creates nothing."""
    check_free(run_dir)
    _check_empty(Path(run_dir))


def _check_empty(run_dir: Path) -> None:
    if not run_dir.is_dir():
        return  # new (or a file in the way: check_run_dir says so)
    found = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if not found:
        return
    if (run_dir / LOCK_FILE).exists() or ckpt.step_checkpoints(run_dir / "checkpoints"):
        raise UserError(f"{run_dir}: already holds a run; continue it with `trainframe resume {run_dir}` "
                        "or choose another --run-dir")
    listing = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise UserError(f"{run_dir}: not empty and not a trainframe run directory (holds {listing}); "
                    "train into a new or empty --run-dir")


def config_file(run_dir: Path) -> Path:
    """``run_dir``'s config.yaml, which every run directory has (``train`` writes it first)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    return path


def check_resumable(run_dir: Path) -> None:
    """For ``resume``: ``run_dir`` is free and was started by ``train``; creates nothing."""
    run_dir = Path(run_dir)
    config_file(run_dir)
    check_free(run_dir)
    if not (run_dir / LOCK_FILE).exists() and not ckpt.step_checkpoints(run_dir / "checkpoints"):
        raise UserError(f"{run_dir}: not a run started by `trainframe train` (a config.yaml but no checkpoint); "
                        f"start one with `trainframe train {run_dir / 'config.yaml'} --run-dir NEW_DIR`")
