"""What the command lines (train.py, eval.py, predict.py) share: their flags, the start-up before any other JAX
call (jax.distributed, library log levels), the up-front config check and the choice of checkpoint."""

from __future__ import annotations

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from gcn_jax import parallel

FLAGS = flags.FLAGS
CHECKPOINT_CHOICES = "'latest', 'best' (highest validation mIoU) or a step number"


def parse_checkpoint(text: str) -> str | int | None:
    """'latest' / 'best' / a step number as `checkpoints.resolve_step` takes it; None for anything else."""
    if text in ("latest", "best"):
        return text
    return int(text) if text.isdigit() else None


def define_flags(config_help: str, *, checkpoint: bool = False, distributed: bool = False) -> None:
    """--config and --workdir (required); --checkpoint for the commands that read one; --distributed for the
    commands that run on several hosts."""
    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.DEFINE_string("workdir", None, "Training run directory (checkpoints/, metrics.jsonl, tensorboard/).")
    if checkpoint:
        flags.DEFINE_string("checkpoint", "latest", f"Which checkpoint: {CHECKPOINT_CHOICES}.")
        flags.register_validator("checkpoint", lambda v: parse_checkpoint(v) is not None,
                                 message=f"--checkpoint must be {CHECKPOINT_CHOICES}")
    if distributed:
        flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when the environment "
                          "names a cluster, e.g. JAX_COORDINATOR_ADDRESS, Slurm, Open MPI or a Cloud TPU pod).")
    flags.mark_flags_as_required(["config", "workdir"])


def start(argv, *, takes_paths: bool = False) -> None:
    """Refuse positional arguments unless the command ``takes_paths``, start jax.distributed where asked or
    detected (before any other JAX call), and hide the libraries' INFO chatter."""
    if not takes_paths and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if "distributed" in FLAGS:
        parallel.maybe_initialize_distributed(FLAGS.distributed)
    quiet_library_logs()


def checked_config(mesh, command: str):
    """--config, checked for ``command`` against the devices of ``mesh`` (`check_config`) before anything is
    computed."""
    import jax

    from gcn_jax.training.config_checks import check_config

    check_config(FLAGS.config, mesh.size, jax.process_count(), command)
    return FLAGS.config


def checkpoint_choice() -> str | int:
    """--checkpoint as `checkpoints.resolve_step` takes it: 'latest', 'best' or a step number."""
    return parse_checkpoint(FLAGS.checkpoint)


def quiet_library_logs() -> None:
    """Hide orbax's INFO lines (dozens per checkpoint) from the console; warnings and errors still show."""

    def keep(record) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        # Saves between evaluations carry no mIoU by design; orbax warns about each of them.
        message = record.getMessage()
        return (record.levelno >= std_logging.WARNING and "did not provide metrics" not in message
                and "read only" not in message and "read_only=True" not in message)

    logging.get_absl_handler().addFilter(keep)
