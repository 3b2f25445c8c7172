"""A `jax.profiler` trace of chosen training steps (``config.profile_steps = (first, last)``), written to
``<workdir>/profile``: XProf's files (``plugins/profile/<time>/*.xplane.pb``) and ``perfetto_trace.json.gz``,
which https://ui.perfetto.dev opens without installing anything. Each step is a `StepTraceAnnotation`, so
XProf's step-time views split the trace by step. The trace is stopped after the device has finished the last
step, so it holds that step's computation, not only its dispatch."""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax

PROFILE_DIR = "profile"  # in the workdir


def check_profile_steps(steps: Sequence[int], num_train_steps: int) -> None:
    """Empty, or (first, last) with 1 <= first <= last <= num_train_steps."""
    steps = tuple(steps)
    if steps and not (len(steps) == 2 and all(isinstance(s, int) for s in steps)
                      and 1 <= steps[0] <= steps[1] <= num_train_steps):
        raise ValueError(f"{steps}: expected () or (first, last) training steps with 1 <= first <= last <= "
                         f"num_train_steps ({num_train_steps})")


class StepProfiler:
    """Call `step(n)` around training step n (1-based): the trace starts before step ``first`` and stops after
    step ``last``; `close` stops a trace still running (a run that failed or stopped early)."""

    def __init__(self, workdir: str, steps: Sequence[int]):
        self.folder = os.path.join(workdir, PROFILE_DIR)
        self.first, self.last = tuple(steps) or (0, -1)
        self.running = False

    def step(self, n: int):
        if n == self.first:
            jax.profiler.start_trace(self.folder, create_perfetto_trace=True)
            self.running = True
        return jax.profiler.StepTraceAnnotation("train", step_num=n)

    def done(self, n: int, state) -> None:
        """After step n: the trace ends once the device has finished step ``last``."""
        if self.running and n == self.last:
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self.running:
            self.running = False
            jax.profiler.stop_trace()
