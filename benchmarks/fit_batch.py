"""The largest batch whose train step fits the devices' memory (`benchmarks/train_step.py --fit_batch`), found
from XLA's memory analysis of the compiled train step: programs are compiled at a few batch sizes, none is run.

The bytes per device are the compiled step's arguments, plus its outputs that do not reuse a donated argument's
memory, plus its temporaries. The limit is `memory_stats()["bytes_limit"]`, which GPUs and TPUs report (on GPU,
the share of the memory JAX's allocator took, 75% by default, `XLA_PYTHON_CLIENT_MEM_FRACTION`); a CPU reports
none, so there `--fit_batch` is an error (`fit` takes a limit for tests).
"""

import jax
import numpy as np

from gcn_jax import errors, parallel
from gcn_jax.images import size_pair
from gcn_jax.models import build_model
from gcn_jax.training import optimizer, state as state_lib


def largest_fitting(bytes_at, limit: float, step: int, most: int = 1 << 14) -> int:
    """The largest multiple b of ``step`` (at most ``most``) with ``bytes_at(b) <= limit``, for ``bytes_at``
    growing with b. From b = step and 2 step, each next b is where the line through (step, bytes_at(step)) and the
    last b tried meets ``limit``, if that lies inside the bracket (the largest b known to fit, the smallest known
    not to); the b next above the largest fitting one if the line says that one is the largest; the bracket's
    middle else. Raises `errors.InputError` if ``step`` does not fit."""
    known = {step: bytes_at(step)}
    if known[step] > limit:
        raise errors.InputError(f"--fit_batch: even {step} image(s), one per device and micro-batch, need "
                                f"{known[step] / 2**30:.2f} GiB per device, over the {limit / 2**30:.2f} GiB "
                                f"allowed (--fit_memory_fraction of the device's memory)")
    low, high = step, most + step  # low fits; high does not (or lies beyond most)
    b = 2 * step
    while low < b < high:
        known[b] = bytes_at(b)
        low, high = (b, high) if known[b] <= limit else (low, b)
        slope = max(known[b] - known[step], 1) / (b - step)
        estimate = min(step + int((limit - known[step]) / slope) // step * step, most)
        if low < estimate < high:
            b = estimate
        elif estimate <= low:
            b = low + step
        else:
            b = (low + high) // 2 // step * step
    return min(low, most)


def train_step_bytes(config, mesh, global_batch: int) -> int:
    """Bytes per device that the compiled train step needs at ``global_batch``: its arguments, its outputs
    that do not reuse a donated argument's memory, and its temporaries (XLA's memory analysis)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.global_batch_size = global_batch
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_train_steps)
    state = state_lib.train_state_shapes(config, mesh, tx)
    height, width = size_pair(config.crop_size, "crop_size")
    sharding = parallel.batch_sharded(mesh)
    batch = {name: jax.ShapeDtypeStruct((global_batch, height, width, *extra), dtype, sharding=sharding)
             for name, extra, dtype in (("image", (3,), np.uint8), ("label", (), np.uint8), ("mask", (), bool))}
    step = state_lib.make_train_step(build_model(config.model), tx, schedule, mesh,
                                     config.optimizer.grad_accum_steps)
    memory = step.lower(state, batch).compile().memory_analysis()
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes)


def fit(config, mesh, fraction: float, limit: float | None = None) -> int:
    """The largest global batch, a multiple of the device count times `grad_accum_steps`, whose train step
    takes at most ``fraction`` of ``limit`` bytes per device (default: the device's reported limit); each batch
    tried is printed with its bytes."""
    limit = limit or (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if not limit:
        raise errors.InputError(f"--fit_batch needs the device's memory limit, which {jax.devices()[0].device_kind} "
                                "does not report (GPUs and TPUs do; on CPU set --config.global_batch_size)")
    allowed = fraction * limit

    def bytes_at(b):
        size = train_step_bytes(config, mesh, b)
        print(f"fit: batch {b}: {size / 2**30:.2f} GiB per device (allowed {allowed / 2**30:.2f})", flush=True)
        return size

    return largest_fitting(bytes_at, allowed, mesh.size * config.optimizer.grad_accum_steps)
