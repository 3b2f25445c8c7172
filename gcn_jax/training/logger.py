"""Metric logging of a run: TensorBoard event files (written with the `tensorboard` package, no TensorFlow)
and `metrics.jsonl`, one JSON object per record with its `step`; pictures go to TensorBoard alone. Only process 0
writes.

A run killed after its last checkpoint has logged steps that the resumed run trains again: on resume the
records after the checkpoint's step are dropped from `metrics.jsonl` (and a line cut short by the kill), and
TensorBoard is told of the restart (a `SessionLog.START` at the next step, which makes it hide the orphaned
records), so that every step appears once, with the values of the run that carried on."""

from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np
from absl import logging
from PIL import Image
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from gcn_jax.errors import WriteFailedError, write_failure_cause


class MetricLogger:
    def __init__(self, workdir: str, enabled: bool = True, resumed_at: int | None = None):
        """``resumed_at``: the step of the checkpoint a resumed run starts from."""
        self.enabled = enabled
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._events = EventFileWriter(os.path.join(workdir, "tensorboard")) if enabled else None
        if enabled and resumed_at is not None:
            _drop_records_after(self.jsonl_path, resumed_at)
            # TensorBoard hides the records of steps >= a START's step that came before it.
            self._events.add_event(Event(wall_time=time.time(), step=int(resumed_at) + 1,
                                         session_log=SessionLog(status=SessionLog.START)))

    def write(self, step: int, scalars: dict, prefix: str = "") -> None:
        """One record: ``scalars`` (name -> number or None) at ``step``; names get ``prefix`` in TensorBoard
        ('train/loss') and in the JSON line."""
        if not self.enabled:
            return
        record = {"step": int(step), **{f"{prefix}{k}": _plain(v) for k, v in scalars.items()}}
        try:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise WriteFailedError(f"cannot write {self.jsonl_path}: {write_failure_cause(e)}. Fix the cause and "
                                   "run the same command again to resume from the last checkpoint.") from e
        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float))]
        self._events.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """One picture, uint8 RGB (height, width, 3), as a TensorBoard image summary (PNG) at ``step``."""
        if not self.enabled:
            return
        png = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(png, format="PNG")
        picture = Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=3,
                                encoded_image_string=png.getvalue())
        self._events.add_event(Event(wall_time=time.time(), step=int(step),
                                     summary=Summary(value=[Summary.Value(tag=tag, image=picture)])))

    def flush(self) -> None:
        if self.enabled:
            self._events.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()


def _drop_records_after(path: str, step: int) -> None:
    """Keep the complete records of ``path`` up to ``step``; replaced in one rename, so a kill now loses
    nothing."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")[:-1]  # the last element is "" or a line cut short
    kept = [line for line in lines if _step_of(line, path) <= step]
    if len(kept) == len(lines) and text.endswith("\n"):
        return
    with open(path + ".tmp", "w") as f:
        f.write("".join(line + "\n" for line in kept))
    os.replace(path + ".tmp", path)


def _step_of(line: str, path: str) -> float:
    """The step of a record; a line that is not one (damaged) counts as after every step, so it is dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        logging.warning("dropping a damaged line of %s: %r", path, line[:200])
        return math.inf


def _plain(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf
