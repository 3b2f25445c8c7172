"""Errors the project raises on purpose, and how the command lines report them.

A `GcnError`'s message names the file, key or value at fault and says what was expected, so the command lines
print it alone, without a traceback, and exit with its `exit_code`; anything else is a bug and keeps Python's
traceback. Exit codes (README, "When things go wrong"):

    0   finished
    1   an unexpected error (a bug): Python's traceback
    2   bad input: a config value, flag, file or dataset that cannot be used (`InputError`, `NotFoundError`)
    3   training stopped on a non-finite loss; the last good checkpoint is kept
    74  a checkpoint could not be written (a full disk, ...); the last intact one is kept
    75  stopped by SIGTERM / SIGINT / a preemption notice after saving: run the same command again to resume
"""

from __future__ import annotations

import sys
import traceback

EXIT_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_SAVE_FAILED = 74  # EX_IOERR (sysexits.h)
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): try again later


class GcnError(Exception):
    """Raised on purpose: the message says what is wrong and what to do."""

    exit_code = EXIT_ERROR
    label = "error"  # how the command lines introduce the message


class InputError(GcnError, ValueError):
    """A config value, flag, file or record that cannot be used."""


class NotFoundError(GcnError, FileNotFoundError):
    """A file, folder, dataset or checkpoint that is not where it should be."""


def report(error: BaseException, verbose: bool = False) -> int:
    """Print ``error`` for a person on stderr (its message alone for a `GcnError`, with the traceback if
    ``verbose``) and return the exit code it calls for."""
    if verbose or not isinstance(error, GcnError):
        traceback.print_exception(error, file=sys.stderr)
    else:
        print(f"{error.label}: {error}", file=sys.stderr)
    return error.exit_code if isinstance(error, GcnError) else 1
