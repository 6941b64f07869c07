"""Worker processes that go with their parent: the data plugins' tokenizer pools.

A pool worker blocks on its task queue, and spawn hands each worker both ends of that queue's pipe,
so it never sees end-of-file when the parent dies: without a watchdog it lives on, orphaned.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """Call in a pool worker's initializer with the parent's pid (``os.getpid()`` there): once the
    parent is gone, however it died (SIGKILL included), this worker exits within ``poll_s``.

    A daemon thread polls ``os.getppid()``, which changes when the worker is re-parented. Chosen over
    Linux's ``prctl(PR_SET_PDEATHSIG)``: that fires when the parent *thread* that started the worker
    ends, misses a parent that died before the call, and macOS has no equivalent.
    """
    threading.Thread(target=_watch, args=(parent, poll_s), daemon=True, name="exit-with-parent").start()


def _watch(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)
