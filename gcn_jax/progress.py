"""Progress bars (tqdm: count, rate, ETA) for the long passes a user waits on: evaluation, prediction over a
folder. Shown only on a terminal and only by process 0, so logs and pipes stay clean."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import jax
from tqdm import tqdm


def shown() -> bool:
    """Whether this process draws progress bars: process 0, with stderr a terminal."""
    return jax.process_index() == 0 and sys.stderr.isatty()


def progress(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it") -> Iterable:
    """``iterable`` with a bar on stderr when `shown`, else as it is. The bar goes when done."""
    if not shown():
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)
