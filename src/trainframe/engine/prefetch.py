"""Training batches built ahead, in a background thread, while the device computes.

The dataset runs ahead of the loop by up to ``depth`` batches, so its own position is not the
position to checkpoint. Each queued batch carries the dataset state taken right after it was
made; ``state_dict()`` is the state after the last batch the loop took, i.e. before the first
batch it has not taken, and a resumed run sees exactly the batches an uninterrupted one would.

A dataset's ``next_batch`` therefore runs in another thread: it must not read the global torch
or Python RNGs (the built-in datasets draw from their own seeded generators).
"""

from __future__ import annotations

import copy
import queue
import threading

import torch


def pinned(batch) -> tuple:
    """The batch's tensors made contiguous, then copied to pinned memory: the one place batches are
    pinned. Contiguous first: a strided view (x = window[:, :-1]) would be made contiguous in pageable
    memory inside the device copy, and a copy from pageable memory waits for the GPU."""
    return tuple(t.contiguous().pin_memory() for t in batch)


class Prefetcher:
    def __init__(self, dataset, batch_size: int, depth: int = 2, device: torch.device | None = None):
        """``device``: the CUDA device the batches go to (they are then pinned); None = no pinning."""
        self.dataset, self.batch_size = dataset, batch_size
        self.pin_device = None
        if device is not None and device.type == "cuda":  # "cuda" means the creating thread's device
            self.pin_device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
        self._state = copy.deepcopy(dataset.state_dict())
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="trainframe-prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        if self.pin_device is not None:  # a new thread starts on device 0; pin for this rank's GPU
            torch.cuda.set_device(self.pin_device)
        while not self._stop.is_set():
            try:
                batch = self._prepare(self.dataset.next_batch(self.batch_size))
                item = (batch, copy.deepcopy(self.dataset.state_dict()), None)
            except BaseException as e:  # noqa: BLE001 - handed to the loop, raised where the batch is taken
                item = (None, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def _prepare(self, batch):
        # Pinned: the host-to-device copy can then run without waiting for the GPU.
        return pinned(batch) if self.pin_device is not None else batch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch, state, error = self._queue.get()
        if error is not None:
            raise error
        self._state = state
        return batch

    def state_dict(self) -> dict:
        """The dataset state before the first batch not yet taken by ``next_batch``."""
        return copy.deepcopy(self._state)

    def close(self) -> None:
        """Stop the thread and rewind the dataset to the batches actually taken."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self.dataset.load_state_dict(self.state_dict())
