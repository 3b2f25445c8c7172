"""XLA flags this project sets by default, because they make its model faster where they apply.

`DEFAULT_FLAGS` are added to the ``XLA_FLAGS`` environment variable when ``gcn_jax`` is imported, before JAX
starts its backend; they then apply to every program of the process. Each is added only if the user has not
set that flag already (a value of their own in ``XLA_FLAGS`` wins), only with a jaxlib that knows it (an
unknown flag would stop XLA), and not at all when ``GCN_JAX_XLA_DEFAULTS=0``. None is required: without them
the results are the same to float32 rounding, only slower (README, "Performance").

`FORWARD_OPTIONS` are per-program options (`jax.jit(..., compiler_options=forward_options())`) for the programs
that only run the model forward: evaluation, prediction and the inference benchmark. They stay out of the train
step, where they made it slower. The same rules apply: a flag set in ``XLA_FLAGS`` wins, an older jaxlib gets
none, and ``GCN_JAX_XLA_DEFAULTS=0`` turns them off.
"""

from __future__ import annotations

import os
import re
import warnings
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
ONEDNN = "xla_cpu_experimental_onednn_custom_call"
CACHE_WRITE_FAILURE = r"Error writing persistent compilation cache entry for .*: MemoryError: std::bad_alloc"
# platform -> {option: (value, oldest jaxlib it was measured with)}, for forward-only programs.
FORWARD_OPTIONS = {
    "cpu": {
        # oneDNN's convolutions instead of Eigen's: inference 1.09x faster for ResNet-50 GCN at 256^2 on 2 CPU
        # cores and 1.44x for the demo's ResNet-18 at 96^2 (ResNet-152 at 512^2: the same). Not for training:
        # XLA hands oneDNN the kernel gradients too, as convolutions over a feature-map-sized window, where it
        # was up to 2x slower than Eigen, and the train step 9% slower (on a Xeon).
        ONEDNN: (True, (0, 12)),
    },
}
OPT_OUT = "GCN_JAX_XLA_DEFAULTS"


def _version(text: str) -> tuple[int, int]:
    major, minor = ([int(n) for n in re.findall(r"\d+", text)[:2]] + [0, 0])[:2]
    return major, minor


def _unset_and_known(table: dict, xla_flags: str, jaxlib_version: str) -> dict:
    """{flag: value} of ``table``'s entries that ``xla_flags`` does not set and this jaxlib knows."""
    return {flag: value for flag, (value, oldest) in table.items()
            if f"--{flag}=" not in xla_flags and _version(jaxlib_version) >= oldest}


def with_defaults(xla_flags: str, jaxlib_version: str) -> str:
    """``xla_flags`` (an ``XLA_FLAGS`` value) with each default the user has not set and this jaxlib knows."""
    added = [f"--{flag}={value}" for flag, value in _unset_and_known(DEFAULT_FLAGS, xla_flags, jaxlib_version).items()]
    return " ".join([xla_flags.strip(), *added]).strip()


def _opted_out(environ) -> bool:
    return environ.get(OPT_OUT, "1") == "0"


def _jaxlib_version() -> str | None:
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


def set_defaults(environ=os.environ) -> None:
    """Add `DEFAULT_FLAGS` to ``environ['XLA_FLAGS']`` (no effect once JAX's backend has started)."""
    jaxlib_version = _jaxlib_version()
    if _opted_out(environ) or jaxlib_version is None:
        return
    flags = with_defaults(environ.get("XLA_FLAGS", ""), jaxlib_version)
    if flags:
        environ["XLA_FLAGS"] = flags


def forward_options(platform: str | None = None, environ=os.environ, jaxlib_version: str | None = None) -> dict:
    """``compiler_options`` for a program that only runs the model forward on ``platform`` (default: JAX's
    default backend, 'cpu', 'gpu' or 'tpu'): each of `FORWARD_OPTIONS` that ``XLA_FLAGS`` does not set and the
    jaxlib (default: the installed one) knows; none with ``GCN_JAX_XLA_DEFAULTS=0``."""
    jaxlib_version = jaxlib_version or _jaxlib_version()
    if _opted_out(environ) or jaxlib_version is None:
        return {}
    if platform is None:
        import jax  # here, not at the top: this module is read before JAX starts (`set_defaults`)

        platform = jax.default_backend()
    options = _unset_and_known(FORWARD_OPTIONS.get(platform, {}), environ.get("XLA_FLAGS", ""), jaxlib_version)
    if options.get(ONEDNN):
        _silence_cache_write_failure()
    return options


def _silence_cache_write_failure() -> None:
    """XLA cannot serialise a CPU executable that calls oneDNN (jaxlib 0.12: std::bad_alloc), so JAX's
    persistent compilation cache, where one is set, cannot keep these programs: they are compiled anew in each
    process, and JAX's warning that the cache write failed says nothing the user can act on. The filter is
    added only where it is missing: adding one resets which warnings were already shown."""
    if not any(action == "ignore" and message is not None and message.pattern == CACHE_WRITE_FAILURE
               for action, message, *_ in warnings.filters):
        warnings.filterwarnings("ignore", message=CACHE_WRITE_FAILURE, category=UserWarning)
