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

from gcn_jax.errors import InputError


class WorkdirBusyError(InputError):
    """Another run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True):
    """Hold the workdir's lock for the duration of the ``with`` block, or raise `WorkdirBusyError` naming the
    run that holds it. ``enabled`` False (processes other than 0 of a multi-host run) does nothing."""
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise WorkdirBusyError(f"{workdir} is in use by another training run ({holder}); wait for it to end, "
                                   "stop it, or train in another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
