"""Reading training batches ahead onto the devices keeps the iterator position of the batches handed out."""

import numpy as np
import pytest

from gcn_jax.training.prefetch import DevicePrefetch


class Counter:
    """A checkpointable iterator of batches {'x': [i]}; its state is the number of batches read."""

    def __init__(self):
        self.read = 0

    def __next__(self):
        self.read += 1
        return {"x": np.array([self.read - 1])}

    def get_state(self):
        return self.read

    def set_state(self, state):
        self.read = state


@pytest.mark.parametrize("size", [1, 2, 3])
def test_batches_come_in_order_and_the_state_is_that_of_the_batches_handed_out(size):
    placed = []
    it = DevicePrefetch(Counter(), lambda b: placed.append(int(b["x"][0])) or b, size=size)
    assert it.get_state() == 0 and placed == []
    for n in range(5):
        assert int(next(it)["x"][0]) == n
        assert it.get_state() == n + 1  # a checkpoint now resumes with batch n + 1 ...
        assert placed == list(range(n + 1 + size))  # ... though batches up to n + size are on the devices


def test_set_state_drops_what_was_read_ahead_and_continues_from_there():
    it = DevicePrefetch(Counter(), lambda b: b, size=2)
    for _ in range(3):
        next(it)
    it.set_state(1)
    assert it.get_state() == 1
    assert [int(next(it)["x"][0]) for _ in range(3)] == [1, 2, 3]


def test_a_resumed_run_sees_the_batches_an_uninterrupted_one_sees():
    it = DevicePrefetch(Counter(), lambda b: b, size=2)
    first = [int(next(it)["x"][0]) for _ in range(4)]
    saved = it.get_state()
    resumed = DevicePrefetch(Counter(), lambda b: b, size=2)
    resumed.set_state(saved)
    assert first + [int(next(resumed)["x"][0]) for _ in range(3)] == list(range(7))
