"""Checks of a config against itself and the devices, run before anything is computed. Every problem found is
reported at once, naming the key, the value and what was expected. (Unknown keys are caught earlier: configs
are locked, so `--config.modle.k=3` is an error from the flag parser.)"""

from __future__ import annotations

import os


class ConfigError(ValueError):
    pass


def _problems_of_model(config) -> list[str]:
    from gcn_jax.models import build_model

    try:
        build_model(config.model)  # checks backbone, head, k (odd, >= 3), num_classes, dtype
    except ValueError as e:
        return [f"config.model: {e}"]
    return []


def check_config(config, num_devices: int, process_count: int = 1, training: bool = True) -> None:
    """Raise `ConfigError` listing every impossible setting of ``config`` on ``num_devices`` devices in
    ``process_count`` processes."""
    from gcn_jax.data import pipeline

    problems = _problems_of_model(config)
    try:
        spec = pipeline.dataset_spec(config.data.name)
        if config.model.num_classes != spec.num_classes:
            problems.append(f"config.model.num_classes = {config.model.num_classes}, but dataset "
                            f"{config.data.name} has {spec.num_classes} classes")
    except ValueError as e:
        problems.append(f"config.data.name: {e}")

    def divides(key, value, over, what):
        if not isinstance(value, int) or value <= 0 or value % over:
            problems.append(f"config.{key} = {value} does not split evenly over {what}; use a multiple of {over}")

    divides("eval_batch_size", config.eval_batch_size, num_devices, f"{num_devices} devices")
    divides("eval_batch_size", config.eval_batch_size, process_count, f"{process_count} processes")
    if training:
        accum = config.optimizer.grad_accum_steps
        if not isinstance(accum, int) or accum < 1:
            problems.append(f"config.optimizer.grad_accum_steps = {accum}: expected an int >= 1")
            accum = 1
        what = f"{num_devices} devices" + (f" x {accum} accumulation steps" if accum > 1 else "")
        divides("global_batch_size", config.global_batch_size, num_devices * accum, what)
        divides("global_batch_size", config.global_batch_size, process_count, f"{process_count} processes")
        for key in ("num_train_steps", "log_every_steps", "checkpoint_every_steps"):
            if config[key] <= 0:
                problems.append(f"config.{key} = {config[key]}: expected a positive number of steps")
        if config.eval_every_steps < 0:
            problems.append(f"config.eval_every_steps = {config.eval_every_steps}: expected >= 0 (0: only at the end)")
        opt = config.optimizer
        if opt.name not in ("sgd", "adamw"):
            problems.append(f"config.optimizer.name = {opt.name!r}: expected 'sgd' or 'adamw'")
        if opt.learning_rate <= 0:
            problems.append(f"config.optimizer.learning_rate = {opt.learning_rate}: expected > 0")
        if not 0 <= opt.warmup_steps < config.num_train_steps:
            problems.append(f"config.optimizer.warmup_steps = {opt.warmup_steps}: expected 0 <= warmup < "
                            f"num_train_steps ({config.num_train_steps})")
        if opt.grad_clip_norm is not None and opt.grad_clip_norm <= 0:
            problems.append(f"config.optimizer.grad_clip_norm = {opt.grad_clip_norm}: expected > 0 or unset")
        if config.data.augment not in ("strong", "paper"):
            problems.append(f"config.data.augment = {config.data.augment!r}: expected 'strong' or 'paper'")
        if config.checkpoint.keep_latest < 1 or config.checkpoint.keep_best < 0:
            problems.append(f"config.checkpoint: keep_latest = {config.checkpoint.keep_latest} must be >= 1 and "
                            f"keep_best = {config.checkpoint.keep_best} >= 0")
        if config.model.pretrained and not os.path.isfile(config.model.pretrained):
            problems.append(f"config.model.pretrained = {config.model.pretrained!r}: no such file")
    ev = config.eval
    if not ev.scales or min(ev.scales) <= 0:
        problems.append(f"config.eval.scales = {tuple(ev.scales)}: expected positive numbers")
    for key in ("window_size", "window_stride"):
        value = tuple(ev[key])
        if value and (len(value) != 2 or min(value) <= 0):
            problems.append(f"config.eval.{key} = {value}: expected () or two positive ints (height, width)")
    if tuple(ev.window_stride) and not tuple(ev.window_size):
        problems.append("config.eval.window_stride is set but config.eval.window_size is not")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
