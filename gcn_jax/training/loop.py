"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in ``workdir`` if there is one (parameters, optimizer, step and the input
iterator's position, so an interrupted and resumed run ends with the parameters of an uninterrupted one).
Logs every `log_every_steps`, evaluates every `eval_every_steps` and at the end, checkpoints every
`checkpoint_every_steps`, at every evaluation, at the end and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from gcn_jax import parallel
from gcn_jax.data import pipeline
from gcn_jax.data.datasets import eval_dataset, load_source
from gcn_jax.errors import EXIT_INTERRUPTED, EXIT_NON_FINITE, GcnError, first_line
from gcn_jax.evaluation import metrics
from gcn_jax.evaluation.evaluate import Evaluator
from gcn_jax.models import build_model
from gcn_jax.training import checkpoints, init_from, optimizer, state as state_lib, workdir_lock
from gcn_jax.training.config_checks import check_config
from gcn_jax.training.logger import MetricLogger
from gcn_jax.training.prefetch import DevicePrefetch
from gcn_jax.training.profiling import StepProfiler

EVAL_SCALARS = ("miou", "pixel_accuracy", "mean_class_accuracy", "boundary_accuracy", "interior_accuracy")
TRAIN_KEYS = ("image", "label", "mask")  # what of a training batch goes to the devices
TENSORBOARD_PICTURE_WIDTH = 1024  # px; a wider example grid is shrunk to it


def class_iou_scalars(summary: dict) -> dict:
    """{'iou/<class name>': IoU or None}, spaces in names as underscores (TensorBoard tags)."""
    return {f"iou/{name.replace(' ', '_')}": iou for name, iou in summary["per_class_iou"].items()}


class NonFiniteLossError(GcnError, FloatingPointError):
    """The loss, the gradients or the state became NaN or infinite; the last good checkpoint is kept."""

    exit_code = EXIT_NON_FINITE


class TrainingInterrupted(GcnError):
    """SIGTERM, SIGINT or a preemption notice stopped the run after it saved; running again resumes."""

    exit_code = EXIT_INTERRUPTED
    label = "stopped"


class _StopSignal:
    """Turns the first SIGTERM/SIGINT into a request to checkpoint and stop; a second one acts as usual.

    Only in a single process: with several, SIGTERM is left to jax.distributed's preemption notifier (a
    Python handler would replace it), which `requested` polls through the checkpoint manager, so that all
    processes stop at the same step."""

    def __init__(self, enabled: bool = True):
        self.received = None
        self._previous = {}
        self._signals = (signal.SIGTERM, signal.SIGINT) if enabled else ()

    def __enter__(self):
        for sig in self._signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, manager, step: int) -> bool:
        if self._signals:
            return self.received is not None
        return manager.reached_preemption(step)


@dataclasses.dataclass(frozen=True)
class Periods:
    """When to log, evaluate and save, in optimizer steps (`eval_every` 0: only at the end)."""

    total: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, config) -> Periods:
        return cls(config.num_train_steps, config.log_every_steps, config.eval_every_steps,
                   config.checkpoint_every_steps)

    def is_log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total

    def is_eval(self, step: int) -> bool:
        return (self.eval_every > 0 and step % self.eval_every == 0) or step == self.total

    def is_save(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or self.is_eval(step)


class Meter:
    """Training throughput and ETA over one log period, leaving out time spent evaluating and saving."""

    def __init__(self, batch_size: int, total_steps: int):
        self.batch_size, self.total_steps = batch_size, total_steps
        self._reset()

    def _reset(self) -> None:
        self.start, self.steps, self.excluded = time.perf_counter(), 0, 0.0

    def tick(self) -> None:
        self.steps += 1

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def lap(self, step: int) -> tuple[float, float]:
        """(images per second, seconds left) of the period that ends at ``step``; starts the next period."""
        elapsed = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        rate = self.steps * self.batch_size / elapsed
        eta = (self.total_steps - step) * elapsed / max(self.steps, 1)
        self._reset()
        return rate, eta


class StepMetrics:
    """Per-step metrics, left on the devices until a log or save point so that no step waits for the last;
    `fetch` brings them to the host, and the losses accumulate until `period_loss` is read."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []
        self.losses: list[float] = []

    def add(self, step: int, step_metrics: dict) -> None:
        self.pending.append((step, step_metrics))

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        records = [(s, {k: float(v) for k, v in parallel.fetch(m).items()}) for s, m in self.pending]
        self.pending = []
        self.losses += [m["loss"] for _, m in records]
        return records

    def period_loss(self) -> float:
        loss, self.losses = float(np.mean(self.losses)), []
        return loss


def first_non_finite(records) -> str | None:
    """A description of the first step whose loss or gradient norm is NaN or infinite, or None."""
    for step, m in records:
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            return f"training loss {m['loss']}, gradient norm {m['grad_norm']} at step {step}"
    return None


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


@dataclasses.dataclass
class _Run:
    """What the loop works with, built once by `_set_up`: devices, data, compiled steps and the outputs."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    train_iter: DevicePrefetch  # over grain's checkpointable iterator: batches on the devices, read ahead
    train_step: Callable  # `state.make_train_step`'s jitted step
    evaluator: Evaluator
    manager: ocp.CheckpointManager
    logger: MetricLogger
    periods: Periods

    def next_batch(self) -> dict:
        return next(self.train_iter)

    def evaluate(self, state, step: int) -> dict:
        """Evaluate, then log the split-level metrics, each class's IoU and the example picture."""
        variables = state.variables()
        summary, per_image = self.evaluator.evaluate(variables, self.config.eval.max_batches)
        self.logger.write(step, {**{k: summary[k] for k in EVAL_SCALARS}, **class_iou_scalars(summary)},
                          prefix="eval/")
        picture = self.evaluator.example_picture(variables, per_image, max_width=TENSORBOARD_PICTURE_WIDTH)
        if picture is not None:
            self.logger.write_image(step, "eval/examples", picture)
        self.logger.flush()
        if jax.process_index() == 0:
            logging.info("step %d: validation\n%s", step, metrics.format_table(summary))
        return summary

    def evaluation_skipped(self, step: int) -> bool:
        """A stop at an evaluation step saved without evaluating; the resumed run evaluates first."""
        return step > 0 and self.periods.is_eval(step) and self.manager.metrics(step) is None

    def log_training(self, step: int, loss: float, last: dict, meter: Meter) -> None:
        images_per_second, eta = meter.lap(step)
        self.logger.write(step, {"loss": loss, "learning_rate": last["learning_rate"], "grad_norm": last["grad_norm"],
                                 "images_per_second": images_per_second}, prefix="train/")
        self.logger.flush()
        if jax.process_index() == 0:
            logging.info("step %d/%d  loss %.4f  lr %.3g  %.1f images/s  ETA %s", step, self.periods.total, loss,
                         last["learning_rate"], images_per_second, format_eta(eta))

    def stop_non_finite(self, what: str):
        """Raise `NonFiniteLossError` naming the last good checkpoint (after any save in flight has finished)."""
        checkpoints.check_saving(self.manager)
        good = self.manager.latest_step()
        raise NonFiniteLossError(
            f"non-finite {what}; stopping. The last good checkpoint "
            + (f"is step {good} in {checkpoints.checkpoint_dir(self.workdir)}" if good is not None else
               "does not exist (none was saved yet)")
            + ". Lower config.optimizer.learning_rate, add warmup (config.optimizer.warmup_steps) or clip "
            "gradients (config.optimizer.grad_clip_norm).")

    def save(self, state, step: int, evaluate: bool) -> dict | None:
        """Checkpoint ``state`` (evaluated first if ``evaluate``, so the checkpoint carries its mIoU), never a
        non-finite one; returns the evaluation's summary, if any."""
        if not parallel.fetch(_all_finite(state)):  # e.g. an update that overflowed
            self.stop_non_finite(f"train state after step {step}")
        summary = self.evaluate(state, step) if evaluate else None
        checkpoints.save(self.manager, state, self.train_iter, None if summary is None else summary["miou"])
        self.logger.flush()
        return summary

    def close(self, failed: bool = False) -> None:
        """Finish a save in flight (never left half-written) and close the outputs. After a failure the error
        that stopped the run is the one reported: a failing save is only logged then."""
        try:
            if not failed:  # after a failure, no waiting on the other processes, which may have stopped elsewhere
                checkpoints.check_saving(self.manager)
            self.manager.close()
        except Exception as e:
            if not failed:
                raise
            logging.error("while stopping: %s", first_line(e))
        finally:
            self.logger.close()


def _prepare_data(config) -> None:
    """The synthetic set is generated on first use: let process 0 build it while the others wait."""
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            load_source(config.data.name, config.data.train_split, config.data.data_dir)
            load_source(eval_dataset(config.data.name), config.data.eval_split, config.data.data_dir)
        multihost_utils.sync_global_devices("datasets ready")


def _set_up(config, workdir: str, mesh) -> tuple[_Run, state_lib.TrainState]:
    """Build everything the loop needs; the state is restored from the newest checkpoint or freshly
    initialised."""
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    _prepare_data(config)
    model = build_model(config.model)
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_train_steps)
    train_iter = DevicePrefetch(iter(pipeline.train_loader(config.data, config.crop_size, config.global_batch_size)),
                                lambda batch: parallel.global_batch(mesh, {k: batch[k] for k in TRAIN_KEYS}))
    manager = checkpoints.make_manager(workdir, config.checkpoint.keep_latest, config.checkpoint.keep_best)
    step = 0  # where the run starts: records a killed run logged after it are dropped
    if manager.latest_step() is None:
        variables = state_lib.init_variables(model, config, config.seed)
        if config.init_from.workdir:  # a new run only: a resumed one restores its own checkpoint below
            variables = init_from.initial_variables(config, mesh, variables)
        state = state_lib.create_train_state(config, mesh, tx, variables)
    else:  # a damaged newest step is moved aside and the newest intact one used
        state, step = checkpoints.restore_newest_intact(
            manager, state_lib.train_state_shapes(config, mesh, tx), train_iter,
            move_aside_to=os.path.join(workdir, checkpoints.DAMAGED_DIR))
        logging.info("resumed from %s at step %d", checkpoints.checkpoint_dir(workdir), step)
    run = _Run(config, workdir, mesh, train_iter,
               state_lib.make_train_step(model, tx, schedule, mesh, config.optimizer.grad_accum_steps),
               Evaluator(config, model, mesh), manager,
               MetricLogger(workdir, enabled=jax.process_index() == 0, resumed_at=step),
               Periods.from_config(config))
    return run, state


def train_and_evaluate(config, workdir: str) -> dict | None:
    """Train ``config`` in ``workdir``; returns the last evaluation's summary (`metrics.summarize`), or None
    when this call ran none (a run that was already complete). The config is checked before anything is
    written; a workdir that another run holds is refused (`workdir_lock`). A stop by a signal or a
    preemption notice saves and then raises `TrainingInterrupted`."""
    mesh = parallel.make_mesh()
    check_config(config, mesh.size, jax.process_count())
    with workdir_lock.hold(workdir):
        return _train(config, workdir, mesh)


def _train(config, workdir: str, mesh) -> dict | None:
    run, state = _set_up(config, workdir, mesh)
    periods, step, summary, stopped_by = run.periods, checkpoints.host_step(state), None, None
    meter, step_metrics = Meter(config.global_batch_size, periods.total), StepMetrics()
    profiler = StepProfiler(workdir, config.profile_steps)
    try:
        if run.evaluation_skipped(step):
            summary = run.evaluate(state, step)
        with _StopSignal(enabled=jax.process_count() == 1) as stop:
            while step < periods.total:
                with profiler.step(step + 1):
                    state, new_metrics = run.train_step(state, run.next_batch())
                step += 1
                profiler.done(step, state)
                meter.tick()
                step_metrics.add(step, new_metrics)
                stopping = stop.requested(run.manager, step)
                is_log, is_save = periods.is_log(step), periods.is_save(step) or stopping
                if not (is_log or is_save):
                    continue
                records = step_metrics.fetch()
                problem = first_non_finite(records)
                if problem:
                    run.stop_non_finite(problem)
                if is_log:
                    run.log_training(step, step_metrics.period_loss(), records[-1][1], meter)
                    checkpoints.check_saving(run.manager, block=False)  # a failed save stops the run here
                if is_save:
                    with meter.paused():  # a stop skips the evaluation; the resumed run evaluates first
                        evaluated = run.save(state, step, evaluate=periods.is_eval(step) and not stopping)
                    summary = summary if evaluated is None else evaluated
                if stopping:
                    stopped_by = stop.received or "a preemption notice"
                    break
    except BaseException:
        profiler.close()
        run.close(failed=True)
        raise
    profiler.close()
    run.close()
    if stopped_by:
        raise TrainingInterrupted(f"{stopped_by} received: saved step {step} to "
                                  f"{checkpoints.checkpoint_dir(workdir)}; run the same command again to resume")
    return summary
