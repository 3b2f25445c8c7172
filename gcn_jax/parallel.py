"""The one place that knows the devices: the data-parallel mesh, shardings, global batches, multi-host start.

Every device of every process sits on one mesh axis, 'data'. Parameters and optimizer state are replicated;
a batch is split along its first axis over all devices. Each process loads only its own slice of the global
batch and `global_batch` stitches the slices into one global array, so the same code runs on one CPU, eight
GPUs or a multi-host TPU pod. BatchNorm needs no `axis_name`: under `jax.jit` its statistics are computed
over the global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Set by cluster launchers; when one is present `maybe_initialize_distributed` starts jax.distributed.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(flag: bool | None = None) -> bool:
    """Start `jax.distributed` when ``flag`` is true, or when ``flag`` is None and the environment names a
    cluster (JAX_COORDINATOR_ADDRESS, Slurm, Open MPI, Cloud TPU). Must run before any other JAX call.
    jax.distributed reads the coordinator, process count and id from JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID or the cluster's own variables. Returns whether it started."""
    if flag is None:
        flag = any(os.environ.get(name) for name in _CLUSTER_ENV)
    if flag:
        jax.distributed.initialize()
    return bool(flag)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(mesh, local: dict) -> dict:
    """This process's slice of a batch (numpy, first axis = local examples) -> global arrays sharded over
    the data axis. Every process must call it with slices of the same shape."""
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local.items()}


def replicate(mesh, tree):
    """Host values that are the same in every process -> replicated global arrays."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def fetch(tree):
    """Replicated global arrays -> numpy on every process (each reads its own copy; no communication)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)
