"""What the command lines (train.py, eval.py, predict.py) share: their flags, the start-up before any other JAX
call (jax.distributed, library log levels), the up-front config check and the choice of checkpoint."""

from __future__ import annotations

import errno
import functools
import logging as std_logging
import os
import sys
import tempfile
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from gcn_jax import errors, huge_pages, parallel

FLAGS = flags.FLAGS
NONE = "None"  # `--config.KEY=None` unsets an optional config field
CHECKPOINT_CHOICES = "'latest', 'best' (highest validation mIoU) or a step number"


def parse_checkpoint(text: str) -> str | int | None:
    """'latest' / 'best' / a step number as `checkpoints.resolve_step` takes it; None for anything else."""
    if text in ("latest", "best"):
        return text
    return int(text) if text.isdigit() else None


def define_config_flag(config_help: str) -> None:
    """--config, a locked config file whose fields are overridden as --config.KEY=VALUE, and where an optional
    field (a typed placeholder, None: off) also takes `--config.KEY=None`. Parse with `parse_flags`."""
    _accept_none_for_optional_fields()
    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.DEFINE_bool("verbose", False, "Show the full traceback of every error, also of those that explain "
                      "themselves (bad input, a config value, a missing file).")


RUN_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "run.py")
_saved_config_by_default = False  # set by define_flags(checkpoint=True): eval.py, predict.py


def define_flags(config_help: str, *, checkpoint: bool = False, distributed: bool = False) -> None:
    """--config and --workdir (required); --checkpoint for the commands that read one, whose --config defaults
    to the config the run saved in its workdir; --distributed for the commands that run on several hosts."""
    global _saved_config_by_default
    _saved_config_by_default = checkpoint
    if checkpoint:
        config_help += " Default: the config the run saved, <workdir>/config.json (configs/run.py)."
    define_config_flag(config_help)
    flags.DEFINE_string("workdir", None, "Training run directory (checkpoints/, metrics.jsonl, tensorboard/).")
    if checkpoint:
        flags.DEFINE_string("checkpoint", "latest", f"Which checkpoint: {CHECKPOINT_CHOICES}.")
        flags.register_validator("checkpoint", lambda v: parse_checkpoint(v) is not None,
                                 message=f"--checkpoint must be {CHECKPOINT_CHOICES}")
    if distributed:
        flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when the environment "
                          "names a cluster, e.g. JAX_COORDINATOR_ADDRESS, Slurm, Open MPI or a Cloud TPU pod).")
    flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config override (a misspelt key, a value of the wrong type, a
    config file that does not exist, None for a field that needs a value) reported as one message and exit
    code 2 instead of a chain of tracebacks. An error raised by the code of a config file itself keeps its
    traceback."""
    try:
        args = FLAGS(_with_saved_config(argv) if _saved_config_by_default else argv)
        if "config" in FLAGS:
            FLAGS.config.keys()  # ml_collections reports a config file that did not load on first use
            _check_none_overrides(FLAGS["config"].override_values, FLAGS.config)
        return args
    except (flags.Error, AttributeError, KeyError, OSError) as e:
        if any(arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for arg in argv):
            raise
        print(f"error: {_flag_error_message(e)}\nSee --helpshort for the flags; --verbose shows the traceback.",
              file=sys.stderr)
        sys.exit(errors.EXIT_ERROR)


def _with_saved_config(argv: list[str]) -> list[str]:
    """``argv`` with --config=configs/run.py:<workdir> added when it names no --config but a --workdir (whose
    saved config.json must exist)."""
    if any(arg in ("--config", "-config") or arg.startswith(("--config=", "-config=")) for arg in argv[1:]):
        return argv
    workdir = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith(("--workdir=", "-workdir=")):
            workdir = arg.split("=", 1)[1]
        elif arg in ("--workdir", "-workdir") and i + 1 < len(argv):
            workdir = argv[i + 1]
    if workdir is None:
        return argv  # absl reports the missing flags
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise flags.IllegalFlagValueError(
            f"no --config given, and {os.path.join(workdir, 'config.json')} (the config a training run saves) "
            "does not exist: name the config the run was trained with, or train first")
    return [argv[0], f"--config={RUN_CONFIG}:{workdir}", *argv[1:]]


def _flag_error_message(error: Exception) -> str:
    """ml_collections reports an unknown config key as an AttributeError wrapping a KeyError whose text holds
    the key and a did-you-mean hint; other errors say what they mean as they are."""
    while isinstance(error, (AttributeError, KeyError)) and error.args and isinstance(error.args[0], Exception):
        error = error.args[0]
    if isinstance(error, KeyError) and error.args:
        return f"unknown config key {error.args[0]}"
    return str(error.args[0]) if isinstance(error, AttributeError) and error.args else str(error)


class _NoneOr(flags.ArgumentParser):
    """A config field's command-line parser that also reads `NONE` as None. ml_collections parses an override
    by the field's type alone, so without this a float field (even an optional one that a config file set)
    could never be unset; `_check_none_overrides` refuses None for the fields that need a value."""

    def __init__(self, parser: flags.ArgumentParser):
        self._parser = parser

    def parse(self, argument):
        return None if argument == NONE else self._parser.parse(argument)

    def flag_type(self) -> str:
        return self._parser.flag_type()


def _accept_none_for_optional_fields() -> None:
    """Let `--config.KEY=None` through the parsers of the scalar types that optional fields have."""
    for field_type, parser in ((float, flags.FloatParser()), (int, flags.IntegerParser()),
                               (str, flags.ArgumentParser())):
        config_flags.register_flag_parser_for_type(field_type, _NoneOr(parser))


def optional_fields(config, prefix: str = "") -> list[str]:
    """The dotted keys of ``config`` that may be None ("off"): its typed placeholders
    (`config_dict.placeholder(float)` and the like), which keep their type when unset."""
    keys = []
    for key, value in config.items(preserve_field_references=True):
        if isinstance(value, config_dict.ConfigDict):
            keys += optional_fields(value, f"{prefix}{key}.")
        elif isinstance(value, config_dict.FieldReference):
            keys.append(f"{prefix}{key}")
    return keys


def _check_none_overrides(overrides: dict, config) -> None:
    """Refuse `--config.KEY=None` where KEY needs a value (a field that is not an optional placeholder):
    ml_collections would store the None in any field, and the code that reads it would fail later."""
    allowed = optional_fields(config)
    for key, value in overrides.items():
        if value is None and key not in allowed:
            raise flags.IllegalFlagValueError(
                f"config.{key} cannot be None: it needs a value; only optional fields can be unset "
                f"({', '.join(allowed)})")


def run(main) -> None:
    """`app.run(main)` for the command lines: errors raised on purpose (`errors.GcnError`) are printed as
    their message alone and end the program with their exit code (`gcn_jax.errors`); --verbose keeps the
    traceback, and any other error is a bug and shows it. On Linux it first restarts the command with huge pages
    for large host allocations where that helps (`huge_pages`: faster training on CPU)."""
    huge_pages.restart_with_huge_pages()

    def main_reporting_errors(argv):
        try:
            main(argv)
        except errors.GcnError as e:
            sys.exit(errors.report(e, verbose=FLAGS.verbose))

    app.run(main_reporting_errors, flags_parser=parse_flags)


def start(argv, *, takes_paths: bool = False) -> None:
    """Refuse positional arguments unless the command ``takes_paths``, start jax.distributed where asked or
    detected (before any other JAX call), and hide the libraries' INFO chatter."""
    if not takes_paths and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=errors.EXIT_ERROR)
    if "distributed" in FLAGS:
        parallel.maybe_initialize_distributed(FLAGS.distributed)
    quiet_library_logs(verbose=FLAGS.verbose)


def checked_config(mesh, command: str):
    """--config, checked for ``command`` against the devices of ``mesh`` (`check_config`) before anything is
    computed."""
    from gcn_jax.training.config_checks import check_config

    check_config(FLAGS.config, mesh.size, jax.process_count(), command)
    return FLAGS.config


def check_writable(path: str) -> None:
    """Fail now, not after a long computation, when process 0 cannot write ``path`` (a missing folder, a
    folder in its place, a read-only file system or file); every process stops."""
    problem = None
    if jax.process_index() == 0:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "it is a folder")
            with tempfile.TemporaryFile(dir=folder):
                pass
            if os.path.exists(path) and not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, "the file is read-only")
        except OSError as e:
            problem = f"cannot write {path}: {e.strerror or e}; pass --output to write elsewhere"
    if parallel.process_0_says(problem is not None):
        raise errors.InputError(problem or f"process 0 cannot write {path}")


def checkpoint_choice() -> str | int:
    """--checkpoint as `checkpoints.resolve_step` takes it: 'latest', 'best' or a step number."""
    return parse_checkpoint(FLAGS.checkpoint)


def quiet_library_logs(verbose: bool = False) -> None:
    """Hide orbax's INFO lines (dozens per checkpoint) from the console; warnings and errors still show, its
    errors as one line each unless ``verbose`` (a failed save logs the same traceback from several threads
    before the run stops with `checkpoints.CheckpointSaveError`). Also, unless ``verbose``, the noise a failed
    write leaves behind: asyncio's "Task exception was never retrieved" for each write task orbax abandoned
    and "_GatheringFuture exception was never retrieved" for each gathering of them (the same error, with a
    traceback, once per array) and the "Event loop is closed" that TensorStore's
    callbacks print (hundreds of times)."""
    logging.get_absl_handler().addFilter(functools.partial(keep_library_record, verbose=verbose))
    if not verbose:
        sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)


def keep_library_record(record: std_logging.LogRecord, verbose: bool = False) -> bool:
    """Whether the console shows ``record``; orbax's errors are cut to their first line unless ``verbose``."""
    message = record.getMessage()
    if record.name == "asyncio":
        return verbose or not ("/orbax/" in message or _raised_in_orbax(record.exc_info))
    if "/orbax/" not in record.pathname:
        return True
    if record.levelno >= std_logging.ERROR and not verbose:
        record.msg, record.args = (message.splitlines() or [""])[0], None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
    # Saves between evaluations carry no mIoU by design; orbax warns about each of them.
    return (record.levelno >= std_logging.WARNING and "did not provide metrics" not in message
            and "read only" not in message and "read_only=True" not in message)


def _raised_in_orbax(exc_info) -> bool:
    """Whether the exception of a log record passed through orbax's code: a future that gathered orbax's write
    tasks names no orbax file in its message, only in its traceback."""
    return bool(exc_info) and any("/orbax/" in frame.filename for frame in traceback.extract_tb(exc_info[2]))


def _without_closed_loop_noise(hook):
    def unraisable(info) -> None:
        if not (isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"):
            hook(info)

    return unraisable
