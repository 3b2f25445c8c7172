"""The largest batch whose train step fits the devices' memory (`benchmarks/train_step.py --fit_batch`), found
from XLA's memory analysis of the compiled train step: programs are compiled at a few batch sizes, none is run.

The bytes per device are the compiled step's arguments, plus its outputs that do not reuse a donated argument's
memory, plus its temporaries (the analysis is of the program each device runs). The limit is
`memory_stats()["bytes_limit"]`, which GPUs and TPUs report (on GPU, the share of the memory JAX's allocator
took: 75% by default, `XLA_PYTHON_CLIENT_MEM_FRACTION`); a CPU reports none, so there `--fit_batch` is an error
(`fit` takes a limit for tests). A batch whose compilation runs out of memory (TPU compilers refuse a program that
cannot fit) counts as not fitting.
"""

import math

import jax
import numpy as np

from gcn_jax import errors, parallel
from gcn_jax.images import size_pair
from gcn_jax.models import build_model
from gcn_jax.training import optimizer, state as state_lib


def largest_fitting(bytes_at, limit: float, step: int, most: int = 1 << 14) -> int:
    """The largest multiple b of ``step`` (at most ``most``) with ``bytes_at(b) <= limit``, for ``bytes_at``
    growing with b (``math.inf``: does not fit). From b = step and 2 step, each next b is where the line through
    the last two batches tried meets ``limit``, if that lies inside the bracket (the largest b known to fit, the
    smallest known not to); the b next above the largest fitting one if the line says that one is the largest;
    the bracket's middle else (and after a batch that did not compile). Raises `errors.InputError` if ``step``
    does not fit."""
    most -= most % step
    known = {step: bytes_at(step)}
    if math.isinf(known[step]):
        raise errors.InputError(f"--fit_batch: even {step} image(s), one per device and micro-batch: compiling the "
                                "train step ran out of memory")
    if known[step] > limit:
        raise errors.InputError(f"--fit_batch: even {step} image(s), one per device and micro-batch, need "
                                f"{known[step] / 2**30:.2f} GiB per device, over the {limit / 2**30:.2f} GiB "
                                f"allowed (--fit_memory_fraction of the device's memory)")
    low, high = step, most + step  # low fits; high does not (or lies beyond most)
    previous, b = step, 2 * step
    while low < b < high:
        known[b] = bytes_at(b)
        low, high = (b, high) if known[b] <= limit else (low, b)
        if math.isinf(known[b]) or math.isinf(known[previous]):
            estimate = high  # no line to follow: bisect
        else:
            slope = max((known[b] - known[previous]) / (b - previous), 1.0)  # bytes per image, either way
            estimate = min(b + math.floor((limit - known[b]) / slope) // step * step, most)
        previous = b
        if low < estimate < high:
            b = estimate
        elif estimate <= low:
            b = low + step
        else:
            b = (low + high) // 2 // step * step
    return low


def batch_shapes(config, global_batch: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of a training batch as the input pipeline sends it: uint8 images and labels, a
    boolean mask of the pixels that are not padding."""
    height, width = size_pair(config.crop_size, "crop_size")
    return {"image": ((global_batch, height, width, 3), np.dtype(np.uint8)),
            "label": ((global_batch, height, width), np.dtype(np.uint8)),
            "mask": ((global_batch, height, width), np.dtype(bool))}


def train_step(config, mesh):
    """(the config's jitted train step, its optimizer): what `benchmarks/train_step.py` times and this module
    measures, built the same way (the compiled programs are then the same, and a compilation cache serves both)."""
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_train_steps)
    return state_lib.make_train_step(build_model(config.model), tx, schedule, mesh,
                                     config.optimizer.grad_accum_steps), tx


class _Step:
    """The config's train step, lowered for abstract batches of any size (model and optimizer built once)."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.step, tx = train_step(config, mesh)
        self.state = state_lib.train_state_shapes(config, mesh, tx)

    def memory(self, global_batch: int):
        sharding = parallel.batch_sharded(self.mesh)
        batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
                 for name, (shape, dtype) in batch_shapes(self.config, global_batch).items()}
        return self.step.lower(self.state, batch).compile().memory_analysis()


def step_bytes(memory) -> int:
    """Bytes per device of a compiled train step's memory analysis: arguments, outputs that do not reuse a donated
    argument's memory, temporaries."""
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes)


def train_step_bytes(config, mesh, global_batch: int) -> int:
    """Bytes per device that the config's compiled train step needs at ``global_batch`` (`step_bytes`)."""
    return step_bytes(_Step(config, mesh).memory(global_batch))


def _out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def fit(config, mesh, fraction: float, limit: float | None = None) -> tuple[int, dict]:
    """(the largest global batch, a multiple of the device count times `grad_accum_steps`, whose train step takes
    at most ``fraction`` of ``limit`` bytes per device (default: the device's reported limit); a record of the
    search for the benchmark's JSON). Each batch tried is printed with its bytes."""
    device = jax.local_devices()[0]
    limit = limit or (device.memory_stats() or {}).get("bytes_limit")
    if not limit:
        raise errors.InputError(f"--fit_batch needs the device's memory limit, which {device.device_kind} does not "
                                "report (GPUs and TPUs do; on CPU set --config.global_batch_size)")
    allowed, step, tried = fraction * limit, _Step(config, mesh), {}

    def bytes_at(b):
        try:
            memory = step.memory(b)
        except Exception as e:  # jax's XlaRuntimeError; a compiler that refuses a program too large to fit
            if not _out_of_memory(e):
                raise
            tried[b] = None
            print(f"fit: batch {b}: out of memory when compiling", flush=True)
            return math.inf
        if memory is None or step_bytes(memory) <= 0:
            raise errors.InputError(f"--fit_batch: XLA gives no memory analysis of the train step on "
                                    f"{device.device_kind} (got {memory}); set --config.global_batch_size")
        tried[b] = step_bytes(memory)
        print(f"fit: batch {b}: {tried[b] / 2**30:.2f} GiB per device (allowed {allowed / 2**30:.2f})", flush=True)
        return tried[b]

    batch = largest_fitting(bytes_at, allowed, mesh.size * config.optimizer.grad_accum_steps)
    return batch, {"limit_bytes": limit, "allowed_bytes": allowed, "bytes_per_device": tried}
