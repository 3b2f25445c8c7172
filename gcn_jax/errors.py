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

import errno
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


class WriteFailedError(GcnError):
    """An output (a checkpoint, the metrics log) could not be written: a full disk, a quota, ..."""

    exit_code = EXIT_SAVE_FAILED


# (errno, its text in OSError / TensorStore messages, what it means for the user)
_WRITE_FAILURES = (
    (errno.ENOSPC, "No space left on device", "the disk is full"),
    (errno.EDQUOT, "Disk quota exceeded", "the disk quota is used up"),
    (errno.EFBIG, "File too large", "a file grew past the size limit of this process or file system"),
    (errno.EROFS, "Read-only file system", "the file system is read-only"),
    (errno.EACCES, "Permission denied", "permission to write was denied"),
    (errno.EIO, "Input/output error", "the storage reported an input/output error"),
)


def error_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or while handling, newest first."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def first_line(error: BaseException) -> str:
    """'ValueError: the first line of its message' (at most 300 characters)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def write_failure_cause(error: BaseException) -> str:
    """What made a write fail, for a person: 'the disk is full (No space left on device)', or the error's
    first line. TensorStore reports the OS error only in its message (os_error_code='28')."""
    chain = error_chain(error)
    text = " ".join(str(e) for e in chain)
    for number, words, meaning in _WRITE_FAILURES:
        if (any(getattr(e, "errno", None) == number for e in chain) or words in text
                or f"os_error_code='{number}'" in text):
            return f"{meaning} ({words})"
    return first_line(error)


def report(error: BaseException, verbose: bool = False) -> int:
    """Print ``error`` for a person on stderr (its message alone for a `GcnError`, with the traceback if
    ``verbose``) and return the exit code it calls for."""
    if verbose or not isinstance(error, GcnError):
        traceback.print_exception(error, file=sys.stderr)
    else:
        print(f"{error.label}: {error}", file=sys.stderr)
    return error.exit_code if isinstance(error, GcnError) else 1
