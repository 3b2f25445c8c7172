"""One training run per workdir: an exclusive lock on ``<workdir>/.lock`` held while `train_and_evaluate` runs.

The lock is `fcntl.flock` on an open file, so the operating system drops it when the process ends, however it
ends (a crash, SIGKILL, a lost node): a dead run never leaves a workdir locked. The file records who holds
it, for the message a second run gets. (On network file systems that do not support flock, such as some NFS
set-ups, the lock may not hold between hosts.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

import jax

from gcn_jax import parallel
from gcn_jax.errors import InputError


class WorkdirBusyError(InputError):
    """Another run holds the workdir."""


def _acquire(workdir: str):
    """The open, locked lock file, or `WorkdirBusyError` naming the run that holds it."""
    os.makedirs(workdir, exist_ok=True)
    f = open(os.path.join(workdir, ".lock"), "a+")  # closed by `hold`
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise WorkdirBusyError(f"{workdir} is in use by another training run ({holder}); wait for it to end, "
                               "stop it, or train in another --workdir") from None
    f.truncate(0)  # "a+" writes at the end, which is now the start
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


@contextlib.contextmanager
def hold(workdir: str):
    """Hold the workdir's lock for the duration of the ``with`` block, or raise `WorkdirBusyError` naming the
    run that holds it. Only process 0 takes the lock; in a multi-host run it tells the others whether it got
    it, so that every process stops when it did not."""
    lock, busy = None, None
    if jax.process_index() == 0:
        try:
            lock = _acquire(workdir)
        except WorkdirBusyError as e:
            busy = e
    if parallel.process_0_says(busy is not None) and busy is None:
        busy = WorkdirBusyError(f"{workdir} is in use by another training run (process 0 found its lock)")
    if busy is not None:
        raise busy
    try:
        yield
    finally:
        if lock is not None:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
