"""Atomic file writes: write beside the target under a temporary name, then rename over it.

A reader (or a resumed run) sees either the old file or the whole new one, never half a file.
A kill between the write and the rename leaves only a hidden temporary file, whose name matches
``TEMP_GLOB`` so that a later run can find and remove it.

A write that the system refuses (no permission, a read-only file system, a missing folder, a full
disk) becomes one ``UserError`` line naming the file and what was being written (``writing``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from trainframe.errors import UserError

# Every temporary name ``atomic_path`` and ``atomic_dir`` make matches this pattern (beside the target).
TEMP_GLOB = ".*.tmp*"


def relative_note(path) -> str:
    """`` (relative to the current directory D)`` for a relative path, else nothing: for messages
    about a file that is missing, so that a path that is right from elsewhere is seen to be so."""
    return "" if Path(os.path.expanduser(path)).is_absolute() else f" (relative to the current directory {os.getcwd()})"


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``: itself, one it was raised from or while handling (torch.save turns
    a failed write into a RuntimeError), or one a Rust library (safetensors, tokenizers) spelled
    out as ``(os error N)``."""
    seen = set()
    while e is not None and id(e) not in seen and not isinstance(e, UserError):
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        if m := re.search(r"\(os error (\d+)\)", str(e)):
            return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def write_error(error: OSError, path, what: str | None = None, size: int | None = None) -> UserError:
    """One line for ``error`` raised while writing ``what`` (e.g. "the checkpoint") to ``path``;
    ``size``: about how many bytes it takes, for the disk-full message."""
    path = Path(path)
    if error.errno == errno.ENOSPC:
        folder = next(p for p in (path, *path.parents) if p.exists())
        need = f"needs about {_mb(size)}, " if size else ""
        return UserError(f"{path}: no space left on the device while writing {what or 'it'} "
                         f"({need}{_mb(shutil.disk_usage(folder).free)} free there)")
    reason = error.strerror or str(error)
    if error.errno == errno.ENOENT and not path.parent.exists():
        reason = f"the folder {path.parent} does not exist"
    return UserError(f"{path}: cannot write{' ' + what if what else ''}: {reason}")


@contextlib.contextmanager
def writing(path, what: str | None = None, size: int | None = None) -> Iterator[None]:
    """Turns an OSError raised in the block (also one wrapped as described in ``_os_error``) into
    ``write_error``'s one line; any other exception passes unchanged."""
    try:
        yield
    except Exception as e:
        error = _os_error(e)
        if error is None:
            raise
        raise write_error(error, path, what, size) from None


def temp_path(path: Path) -> Path:
    """The temporary name ``atomic_path`` uses for ``path`` in this process.

    Hidden (leading dot) so globs over the directory skip it; the pid keeps processes that write
    the same target apart; the target's suffix is repeated at the end because some writers
    (matplotlib's savefig, for one) choose the format by suffix.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path, *, fsync: bool = False, what: str | None = None, size: int | None = None) -> Iterator[Path]:
    """Yields a temp path beside ``path`` (same directory, hidden, unique per process, same suffix so
    tools that pick a format by suffix still work); after the block the temp file replaces ``path``
    atomically (fsynced first when asked); on an exception the temp file is removed and ``path`` is
    untouched. The block must create the temp file; the parent directory must exist. A refused
    write is one ``UserError`` (``writing(path, what, size)``)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with writing(path, what, size):
            yield tmp
            if fsync:
                # "ab" rather than "rb": fsync needs a writable descriptor on some platforms.
                with open(tmp, "ab") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temp behind
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path, what: str | None = None, size: int | None = None, *,
               keep_existing: bool = False) -> Iterator[Path]:
    """``atomic_path`` for a directory: yields a new empty directory beside ``path`` (its parents
    are made); after the block it takes the place of ``path`` (an existing one is moved aside, then
    removed); on an exception it is removed and ``path`` is untouched.

    ``keep_existing``: for caches keyed by their content, where another process may publish the
    same directory first: a ``path`` that exists by the end of the block is kept and ours dropped."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path, what, size):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            if not keep_existing:
                replace_dir(tmp, path)
            elif not path.exists():
                try:
                    tmp.rename(path)
                except OSError:
                    if not path.exists():
                        raise
            shutil.rmtree(tmp, ignore_errors=True)  # ours, when theirs was kept
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, path: Path) -> None:
    """The complete directory ``tmp`` takes the place of ``path`` (beside it): renamed in, an existing
    ``path`` first moved aside to a hidden temporary name and removed after. A kill in between leaves
    ``path`` whole (old or new) or absent, plus temporaries matching ``TEMP_GLOB``."""
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.tmp-old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def write_text_atomic(path: Path, text: str, what: str | None = None) -> None:
    """``path.write_text(text)``, atomically."""
    data = text.encode("utf-8")
    with atomic_path(path, what=what, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_bytes_atomic(path: Path, data: bytes, what: str | None = None) -> None:
    """``path.write_bytes(data)``, atomically."""
    with atomic_path(path, what=what, size=len(data)) as tmp:
        tmp.write_bytes(data)
