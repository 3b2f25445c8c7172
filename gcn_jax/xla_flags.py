"""XLA flags this project sets by default, because they make its model faster where they apply.

`DEFAULT_FLAGS` are added to the ``XLA_FLAGS`` environment variable when ``gcn_jax`` is imported, before JAX
starts its backend; they then apply to every program of the process. Each is added only if the user has not
set that flag already (a value of their own in ``XLA_FLAGS`` wins), only with a jaxlib that knows it (an
unknown flag would stop XLA), and not at all when ``GCN_JAX_XLA_DEFAULTS=0``. None is required: without them
the results are the same to float32 rounding, only slower (README, "Performance").
"""

from __future__ import annotations

import os
import re
from importlib import metadata

# flag -> (value, oldest jaxlib (major, minor) it was measured with). Only CPU flags so far: XLA's other
# backends ignore them.
DEFAULT_FLAGS = {
    # YNNPACK for dots (the 1 x 1 convolutions among them) and reductions (BatchNorm's statistics): ResNet-50
    # GCN training 1.35x faster on 2 CPU cores. 'eltwise' too made the backward pass faster still but the
    # optimizer update slower, so the whole step was slower; 'individual_convolution' (YNNPACK for the other
    # convolutions) made training 1.2x slower.
    "xla_cpu_experimental_ynn_fusion_type": ("dot,reduce", (0, 12)),
    # The train step updates its donated state in place; without this, XLA's CPU backend copies every
    # parameter first (108 copies for ResNet-50 GCN; openxla/xla#20440). Training 3-8% faster on 2 cores.
    "xla_cpu_copy_insertion_use_region_analysis": ("true", (0, 12)),
}
OPT_OUT = "GCN_JAX_XLA_DEFAULTS"


def _version(text: str) -> tuple[int, int]:
    major, minor = ([int(n) for n in re.findall(r"\d+", text)[:2]] + [0, 0])[:2]
    return major, minor


def with_defaults(xla_flags: str, jaxlib_version: str) -> str:
    """``xla_flags`` (an ``XLA_FLAGS`` value) with each default the user has not set and this jaxlib knows."""
    added = [f"--{flag}={value}" for flag, (value, oldest) in DEFAULT_FLAGS.items()
             if f"--{flag}=" not in xla_flags and _version(jaxlib_version) >= oldest]
    return " ".join([xla_flags.strip(), *added]).strip()


def set_defaults(environ=os.environ) -> None:
    """Add `DEFAULT_FLAGS` to ``environ['XLA_FLAGS']`` (no effect once JAX's backend has started)."""
    if environ.get(OPT_OUT, "1") == "0":
        return
    try:
        jaxlib_version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    flags = with_defaults(environ.get("XLA_FLAGS", ""), jaxlib_version)
    if flags:
        environ["XLA_FLAGS"] = flags
