"""The up-front check of a config against itself and the devices, run before anything is computed. Every
problem found is reported at once, naming the key, the value and what was expected. Each rule lives with the
code that relies on it; this module only calls them. (Unknown keys are caught earlier: configs are locked, so
`--config.modle.k=3` is an error from the flag parser.)"""

from __future__ import annotations

from gcn_jax.data.datasets import dataset_spec
from gcn_jax.data.pipeline import local_batch_size
from gcn_jax.data.transforms import check_augment
from gcn_jax.errors import InputError
from gcn_jax.evaluation import crf
from gcn_jax.evaluation.evaluate import inference_options
from gcn_jax.evaluation.pictures import check_example_count
from gcn_jax.images import size_pair
from gcn_jax.models import build_model, check_weights_file
from gcn_jax.training.checkpoints import check_retention
from gcn_jax.training.init_from import check_init_from
from gcn_jax.training.optimizer import check_optimizer, valid_grad_accum_steps
from gcn_jax.training.profiling import check_profile_steps


class ConfigError(InputError):
    """Every impossible setting of a config, one per line."""


def _problem(key: str, check, *args) -> list[str]:
    """[] if ``check(*args)`` passes, else its error as a problem of ``config.<key>``."""
    try:
        check(*args)
    except (ValueError, OSError) as e:
        return [f"config.{key}: {e}"]
    return []


def _dataset_problems(config) -> list[str]:
    try:
        spec = dataset_spec(config.data.name)
    except ValueError as e:
        return [f"config.data.name: {e}"]
    if config.model.num_classes != spec.num_classes:
        return [f"config.model.num_classes = {config.model.num_classes}, but dataset {config.data.name} has "
                f"{spec.num_classes} classes"]
    return []


def _batch_problems(key: str, value, num_devices: int, process_count: int, accum: int = 1) -> list[str]:
    """A global batch must split over the processes (the input pipeline's rule) and over the devices, times
    the accumulation steps."""
    problems = _problem(key, local_batch_size, value, process_count)
    if not problems and value % (num_devices * accum):
        what = f"{num_devices} devices" + (f" x {accum} accumulation steps" if accum > 1 else "")
        problems.append(f"config.{key} = {value} does not split evenly over {what}; use a multiple of "
                        f"{num_devices * accum}")
    return problems


def _training_problems(config, num_devices: int, process_count: int) -> list[str]:
    problems = _problem("optimizer", check_optimizer, config.optimizer, config.num_train_steps)
    problems += _problem("data", check_augment, config.data.augment, config.data.scale_range)
    problems += _problem("checkpoint", check_retention, config.checkpoint.keep_latest, config.checkpoint.keep_best)
    problems += _problem("crop_size", size_pair, config.crop_size, "crop_size")
    if config.model.pretrained:
        problems += _problem("model.pretrained", check_weights_file, config.model.pretrained)
    if config.init_from.workdir:
        problems += _problem("init_from", check_init_from, config.init_from, config.model.pretrained)
    accum = config.optimizer.grad_accum_steps
    accum = accum if valid_grad_accum_steps(accum) else 1  # an invalid value is reported above
    problems += _batch_problems("global_batch_size", config.global_batch_size, num_devices, process_count, accum)
    for key in ("num_train_steps", "log_every_steps", "checkpoint_every_steps"):
        if config[key] <= 0:
            problems.append(f"config.{key} = {config[key]}: expected a positive number of steps")
    if config.eval_every_steps < 0:
        problems.append(f"config.eval_every_steps = {config.eval_every_steps}: expected >= 0 (0: only at the end)")
    problems += _problem("profile_steps", check_profile_steps, config.profile_steps, config.num_train_steps)
    return problems


COMMANDS = ("train", "eval", "predict")


def check_config(config, num_devices: int, process_count: int = 1, command: str = "train") -> None:
    """Raise `ConfigError` listing every impossible setting of ``config`` on ``num_devices`` devices in
    ``process_count`` processes, for what ``command`` (one of `COMMANDS`) uses: prediction the model and the
    inference options; evaluation also the validation data; training everything."""
    if command not in COMMANDS:
        raise ValueError(f"command {command!r}: expected one of {COMMANDS}")
    problems = _problem("model", build_model, config.model)
    problems += _dataset_problems(config)
    problems += _problem("eval", inference_options, config.eval)
    if config.eval.crf:
        problems += _problem("eval.crf_params", crf.check_params, config.eval.crf_params)
        problems += _problem("eval.crf", crf.check_installed)
    if command != "predict":
        problems += _problem("data.eval_pad_size", size_pair, config.data.eval_pad_size, "eval_pad_size")
        problems += _batch_problems("eval_batch_size", config.eval_batch_size, num_devices, process_count)
        for key in ("examples_random", "examples_worst"):
            problems += _problem(f"eval.{key}", check_example_count, config.eval[key])
    if command == "train":
        problems += _training_problems(config, num_devices, process_count)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
