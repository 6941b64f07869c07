"""Atomic file writes: write beside the target under a temporary name, then rename over it.

A reader (or a resumed run) sees either the old file or the whole new one, never half a file.
A kill between the write and the rename leaves only a hidden temporary file, whose name matches
``TEMP_GLOB`` so that a later run can find and remove it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# Every temporary name ``atomic_path`` makes matches this pattern (in the target's directory).
TEMP_GLOB = ".*.tmp*"


def temp_path(path: Path) -> Path:
    """The temporary name ``atomic_path`` uses for ``path`` in this process.

    Hidden (leading dot) so globs over the directory skip it; the pid keeps processes that write
    the same target apart; the target's suffix is repeated at the end because some writers
    (matplotlib's savefig, for one) choose the format by suffix.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yields a temp path beside ``path`` (same directory, hidden, unique per process, same suffix so
    tools that pick a format by suffix still work); after the block the temp file replaces ``path``
    atomically (fsynced first when asked); on an exception the temp file is removed and ``path`` is
    untouched. The block must create the temp file; the parent directory must exist."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            # "ab" rather than "rb": fsync needs a writable descriptor on some platforms.
            with open(tmp, "ab") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temp behind
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
