"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in ``workdir`` if there is one (parameters, optimizer, step, RNG and the
input iterator's position, so an interrupted and resumed run ends with the parameters of an uninterrupted
one). Logs every `log_every_steps`, evaluates every `eval_every_steps` and at the end, checkpoints every
`checkpoint_every_steps`, at every evaluation, at the end and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from gcn_jax import parallel
from gcn_jax.config_checks import check_config
from gcn_jax.data import pipeline
from gcn_jax.evaluation import evaluate, metrics
from gcn_jax.models import build_model
from gcn_jax.training import checkpoints, optimizer, state as state_lib
from gcn_jax.training.logger import MetricLogger


class NonFiniteLossError(FloatingPointError):
    pass


class _StopSignal:
    """Turns the first SIGTERM/SIGINT into a request to checkpoint and stop; a second one acts as usual.

    Only in a single process: with several, SIGTERM is left to jax.distributed's preemption notifier (a
    Python handler would replace it), which the loop polls through `manager.reached_preemption`, so that all
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


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _prepare_data(config):
    """The synthetic set is generated on first use: let process 0 build it while the others wait."""
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            pipeline.load_source(config.data.name, config.data.train_split, config.data.data_dir)
            pipeline.load_source(config.data.name, config.data.eval_split, config.data.data_dir)
        multihost_utils.sync_global_devices("datasets ready")


def train_and_evaluate(config, workdir: str) -> dict:
    """Train ``config`` in ``workdir``; returns the last evaluation's summary (`metrics.summarize`), or None
    when this call ran none (a run that was already complete)."""
    mesh = parallel.make_mesh()
    check_config(config, mesh.size, jax.process_count())
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    _prepare_data(config)

    model = build_model(config.model)
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_train_steps)
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    train_iter = iter(pipeline.train_loader_from_config(config))
    spec = pipeline.dataset_spec(config.data.name)
    eval_loader, eval_batches = pipeline.eval_loader_from_config(config)

    manager = checkpoints.make_manager(workdir, config.checkpoint.keep_latest, config.checkpoint.keep_best)
    latest = manager.latest_step()
    if latest is not None:
        state = checkpoints.restore(manager, latest, state_lib.abstract_train_state(config, mesh, tx), train_iter)
        logging.info("resumed from %s at step %d", checkpoints.checkpoint_dir(workdir), latest)
    else:
        state = state_lib.create_train_state(config, mesh, tx)
    step = checkpoints.host_step(state)
    train_step = state_lib.make_train_step(model, tx, schedule, mesh, config.optimizer.grad_accum_steps)
    eval_step = evaluate.make_eval_step(model, mesh, spec.num_classes, config.eval)
    all_finite = jax.jit(lambda tree: jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))
    logger = MetricLogger(workdir, enabled=is_main)
    total = config.num_train_steps
    summary = None
    pending = []  # (step, metrics on device) not yet fetched
    period_losses = []  # losses since the last console line
    period_start, period_steps, period_excluded = time.perf_counter(), 0, 0.0

    def is_eval_step(s):
        return (config.eval_every_steps and s % config.eval_every_steps == 0) or s == total

    def run_evaluation(s):
        result = evaluate.evaluate(eval_step, state.variables(), eval_loader, eval_batches, mesh,
                                   spec.class_names, config.eval.max_batches)
        logger.write(s, {k: result[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy",
                                                "boundary_accuracy", "interior_accuracy")}, prefix="eval/")
        logger.flush()
        if is_main:
            logging.info("step %d: validation\n%s", s, metrics.format_table(result))
        return result

    def stop_non_finite(what):
        manager.wait_until_finished()
        good = manager.latest_step()
        raise NonFiniteLossError(
            f"non-finite {what}; stopping. The last good checkpoint "
            + (f"is step {good} in {checkpoints.checkpoint_dir(workdir)}" if good is not None else
               "does not exist (none was saved yet)")
            + ". Lower config.optimizer.learning_rate, add warmup (config.optimizer.warmup_steps) or clip "
            "gradients (config.optimizer.grad_clip_norm).")

    def flush():
        """Fetch the pending step metrics; stop on a non-finite loss before anything is saved."""
        fetched = [(s, parallel.fetch(m)) for s, m in pending]
        pending.clear()
        for s, m in fetched:
            if not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"]))):
                stop_non_finite(f"training loss {float(m['loss'])}, gradient norm {float(m['grad_norm'])} at step {s}")
            period_losses.append(float(m["loss"]))
        return fetched

    if latest is not None and is_eval_step(latest) and manager.metrics(latest) is None:
        # Stopped by a signal at an evaluation step, which was skipped then: evaluate now.
        summary = run_evaluation(latest)

    try:
        with _StopSignal(enabled=jax.process_count() == 1) as stop:
            while step < total:
                batch = next(train_iter)
                state, step_metrics = train_step(state, parallel.global_batch(
                    mesh, {"image": batch["image"], "label": batch["label"]}))
                step += 1
                period_steps += 1
                pending.append((step, step_metrics))
                stopping = stop.received is not None if jax.process_count() == 1 else manager.reached_preemption(step)
                is_log = step % config.log_every_steps == 0 or step == total
                is_eval = is_eval_step(step)
                is_save = step % config.checkpoint_every_steps == 0 or is_eval or step == total or stopping
                if not (is_log or is_save):
                    continue
                fetched = flush()
                if is_log:
                    elapsed = time.perf_counter() - period_start - period_excluded
                    loss = float(np.mean(period_losses))
                    images_per_s = period_steps * config.global_batch_size / max(elapsed, 1e-9)
                    eta = (total - step) * elapsed / max(period_steps, 1)
                    last = fetched[-1][1]
                    logger.write(step, {"loss": loss, "learning_rate": last["learning_rate"],
                                        "grad_norm": last["grad_norm"], "images_per_second": images_per_s},
                                 prefix="train/")
                    if is_main:
                        logging.info("step %d/%d  loss %.4f  lr %.3g  %.1f images/s  ETA %s", step, total, loss,
                                     float(last["learning_rate"]), images_per_s, _format_eta(eta))
                    period_start, period_steps, period_excluded = time.perf_counter(), 0, 0.0
                    period_losses.clear()
                pause_start = time.perf_counter()
                miou = None
                if is_save and not parallel.fetch(all_finite(state)):  # e.g. an update that overflowed
                    stop_non_finite(f"train state after step {step}")
                if is_eval and not stopping:  # a stop skips it; the resumed run evaluates first
                    summary = run_evaluation(step)
                    miou = summary["miou"]
                if is_save:
                    checkpoints.save(manager, state, train_iter, miou)
                logger.flush()
                period_excluded += time.perf_counter() - pause_start
                if stopping:
                    logging.info("%s received: saved step %d to %s; run train.py again to resume",
                                 stop.received or "preemption notice", step, checkpoints.checkpoint_dir(workdir))
                    break
    finally:
        manager.wait_until_finished()  # an asynchronous save in flight is completed, never left half-written
        manager.close()
        logger.close()
    return summary
