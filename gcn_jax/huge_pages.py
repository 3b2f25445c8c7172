"""Transparent huge pages for the host's large allocations, asked of the C library when a command starts.

XLA's CPU backend allocates a program's temporary buffers afresh on every execution (about 490 MiB for a
ResNet-50 GCN training step at 256 x 256, batch 2). glibc serves allocations that large by ``mmap`` and gives them
back by ``munmap``, so the kernel faults every 4 KiB page in again on every step: about 130 000 page faults a
step, a fifth of the step's CPU time on a 2-core virtual machine. With the glibc tunable
``glibc.malloc.hugetlb=1``, glibc advises the kernel to back such mappings with 2 MiB pages, which makes the
faults some 500 times fewer (README, "Performance"). Results do not change: only where memory comes from.

Tunables are read when a process starts, so `restart_with_huge_pages` starts the command again in the same
process (``exec``: same process id, arguments and environment, plus that tunable). It does so only where it
helps: Linux with glibc 2.35 or newer, transparent huge pages in ``madvise`` mode (with ``always`` every large
mapping gets them anyway; with ``never`` none can), a command started from a file, and not when
``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb`` (a value of the user's own wins) or when
``GCN_JAX_HUGE_PAGES=0``.
"""

from __future__ import annotations

import os
import platform
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "GCN_JAX_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
OLDEST_GLIBC = (2, 35)  # the first with glibc.malloc.hugetlb


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode ('always', 'madvise' or 'never'), None where it cannot be read."""
    try:
        with open(path) as f:
            found = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    name, version = platform.libc_ver()
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    return (numbers[0], (numbers + [0])[1]) if name == "glibc" and numbers else None


def _sets_huge_pages(tunables: str) -> bool:
    return any(s.split("=")[0] == TUNABLE for s in tunables.split(":"))


def with_huge_pages(tunables: str) -> str:
    """A ``GLIBC_TUNABLES`` value with ``glibc.malloc.hugetlb=1`` added, unless it sets that tunable already."""
    if _sets_huge_pages(tunables):
        return tunables
    return ":".join([*(s for s in tunables.split(":") if s), f"{TUNABLE}=1"])


def applies(environ=os.environ, mode: str | None = "", glibc: tuple[int, int] | None = ()) -> bool:
    """Whether asking for huge pages would change anything here; ``mode`` (`thp_mode`) and ``glibc``
    (`glibc_version`) are read from this machine unless given."""
    if environ.get(OPT_OUT, "1") == "0" or sys.platform != "linux":
        return False
    if _sets_huge_pages(environ.get("GLIBC_TUNABLES", "")):
        return False  # set already, by the user or by an earlier start
    mode = thp_mode() if mode == "" else mode
    glibc = glibc_version() if glibc == () else glibc
    return mode == "madvise" and glibc is not None and glibc >= OLDEST_GLIBC


def environment(environ=os.environ) -> dict[str, str]:
    """``environ`` with huge pages asked for where that `applies` (for child processes, e.g. benchmarks')."""
    if not applies(environ):
        return dict(environ)
    return {**environ, "GLIBC_TUNABLES": with_huge_pages(environ.get("GLIBC_TUNABLES", ""))}


def restart_with_huge_pages(environ=os.environ) -> None:
    """Start this command again with huge pages asked for, where that `applies` and the command was started from
    a file (``python train.py ...``, ``python -m benchmarks.train_step ...``; not ``python -c``). Call it first
    thing, before any output: nothing after the call runs in this process when it restarts."""
    if not os.path.isfile(sys.argv[0]):
        return
    env = environment(environ)
    if env.get("GLIBC_TUNABLES") == environ.get("GLIBC_TUNABLES"):
        return  # nothing to ask for here
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # never required: carry on as started
        pass
