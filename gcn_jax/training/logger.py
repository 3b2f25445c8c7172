"""Metric logging of a run: TensorBoard event files (written with the `tensorboard` package, no TensorFlow)
and `metrics.jsonl`, one JSON object per record with its `step`. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import time

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricLogger:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._events = EventFileWriter(os.path.join(workdir, "tensorboard")) if enabled else None

    def write(self, step: int, scalars: dict, prefix: str = "") -> None:
        """One record: ``scalars`` (name -> number or None) at ``step``; names get ``prefix`` in TensorBoard
        ('train/loss') and in the JSON line."""
        if not self.enabled:
            return
        record = {"step": int(step), **{f"{prefix}{k}": _plain(v) for k, v in scalars.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float))]
        self._events.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

    def flush(self) -> None:
        if self.enabled:
            self._events.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()


def _plain(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf
