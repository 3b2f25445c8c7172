"""Training batches read and placed on the devices ahead of the step that uses them."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any


class DevicePrefetch:
    """Wraps grain's checkpointable iterator: each ``next()`` returns a batch already on the devices and then
    reads and places the following one (``place``, e.g. `parallel.global_batch`; the transfer is asynchronous),
    so that while the device runs step n, batch n + 1 is prepared and crossing over.

    ``get_state`` / ``set_state`` are the wrapped iterator's, as of the batches handed out: a checkpoint saved
    after step n resumes with batch n + 1 even though later batches were read ahead (they are read again)."""

    def __init__(self, iterator: Iterator[dict], place: Callable[[dict], Any], size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self.iterator, self.place, self.size = iterator, place, size
        self.ahead: collections.deque = collections.deque()  # (placed batch, iterator state after reading it)
        self.state = iterator.get_state()

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> Any:
        if not self.ahead:  # the first call (or the first after set_state)
            self._fill()
        batch, self.state = self.ahead.popleft()
        self._fill()
        return batch

    def _fill(self) -> None:
        while len(self.ahead) < self.size:
            batch = self.place(next(self.iterator))
            self.ahead.append((batch, self.iterator.get_state()))

    def get_state(self):
        return self.state

    def set_state(self, state) -> None:
        """Continue from ``state``; batches read ahead are dropped."""
        self.iterator.set_state(state)
        self.ahead.clear()
        self.state = state
