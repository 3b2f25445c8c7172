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

from gcn_jax.errors import InputError

DATA_AXIS = "data"


def maybe_initialize_distributed(flag: bool | None = None) -> bool:
    """Start `jax.distributed` when ``flag`` is true, or when ``flag`` is None and the environment names a
    cluster (JAX_COORDINATOR_ADDRESS, Slurm, Open MPI, Cloud TPU). Must run before any other JAX call.

    The coordinator comes from JAX_COORDINATOR_ADDRESS (host:port of process 0) or the cluster's own
    auto-detection (Slurm, Open MPI, Cloud TPU, Kubernetes); JAX_NUM_PROCESSES and JAX_PROCESS_ID give the
    process count and this process's id where nothing detects them. Returns whether it started."""
    env = os.environ
    if flag is None:
        flag = _cluster_in_environment(env)
    if not flag:
        return False
    kwargs = {}
    for var, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if env.get(var):
            try:
                kwargs[key] = int(env[var])
            except ValueError:
                raise InputError(f"environment variable {var}={env[var]!r}: expected an integer") from None
    jax.distributed.initialize(**kwargs)
    return True


def _cluster_in_environment(env) -> bool:
    """A launcher started several processes: an explicit coordinator, an `srun` step of several tasks, an
    `mpirun` of several ranks, or a multi-host Cloud TPU slice. (A Slurm allocation shell alone is none.)"""
    def count(name):
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    return bool(env.get("JAX_COORDINATOR_ADDRESS") or (env.get("SLURM_STEP_NODELIST") and count("SLURM_NTASKS") > 1)
                or count("OMPI_COMM_WORLD_SIZE") > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", "")
                or env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """The one-axis data-parallel mesh over ``devices`` (default: every device of every process), in the
    device order `jax.make_mesh` picks for the platform's topology."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


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


def process_0_says(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (a broadcast; no communication in a single process), so that a
    check only process 0 can make (a lock, a file it writes) stops every process, not process 0 alone."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def all_processes_say(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (no communication in a single process), so that a check whose
    answer may differ between hosts (a file one of them cannot read) leads every process the same way."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(bool(flag)))))


def fetch(tree):
    """Replicated global arrays -> numpy on every process (each reads its own copy; no communication)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def fetch_local(x: jax.Array) -> np.ndarray:
    """A global array sharded over the data axis -> numpy of this process's rows, in the order of the local slice
    `global_batch` made it from (the addressable shards sorted by their place in the global batch)."""
    shards = sorted(x.addressable_shards, key=lambda shard: shard.index[0].start or 0)
    return np.concatenate([np.asarray(shard.data) for shard in shards])
