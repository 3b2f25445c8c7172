"""A training config small enough for tests, synthetic_shapes/tiny (24 train, 10 validation images of 48x64),
ResNet-18 GCN+BR with k=3 on 48x48 crops, batch 4, SGD with Nesterov momentum; and helpers that train it and
read a run's outputs."""

import json
import os

import jax
import numpy as np

from configs import synthetic
from gcn_jax import parallel
from gcn_jax.models import build_model
from gcn_jax.training import checkpoints, optimizer, state as state_lib


def tiny_config(data_dir: str, **overrides):
    config = synthetic.get_config()
    config.data.name = "synthetic_shapes/tiny"
    config.data.data_dir = data_dir
    config.data.eval_pad_size = (48, 64)
    config.data.worker_count = 0
    config.crop_size = (48, 48)
    config.model.kernel_size = 3
    config.global_batch_size = 4
    config.eval_batch_size = 4
    config.num_train_steps = 8
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 100
    config.optimizer.name = "sgd"
    config.optimizer.nesterov = True
    config.optimizer.learning_rate = 0.01
    config.optimizer.grad_clip_norm = 5.0
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def read_jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def saved_params(workdir, step=None):
    """The parameters of a checkpoint as numpy, whatever topology wrote it."""
    manager = checkpoints.make_manager(str(workdir), read_only=True)
    step = manager.latest_step() if step is None else step
    metadata = manager.item_metadata(step)[checkpoints.STATE]
    metadata = metadata.tree if hasattr(metadata, "tree") else metadata
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), metadata["params"])
    restored = checkpoints.restore(manager, step, {"params": target})
    manager.close()
    return step, jax.tree.map(np.asarray, restored["params"])


def fixed_batches(num, batch=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(num):
        labels = rng.integers(0, 6, (batch, size, size)).astype(np.int32)
        labels[:, :4] = 255  # ignored rows, like padding
        yield {"image": rng.standard_normal((batch, size, size, 3)).astype(np.float32), "label": labels}


def run_steps(config, devices, batches):
    mesh = parallel.make_mesh(devices)
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_train_steps)
    state = state_lib.create_train_state(config, mesh, tx)
    step = state_lib.make_train_step(build_model(config.model), tx, schedule, mesh,
                                     config.optimizer.grad_accum_steps)
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.global_batch(mesh, batch))
        losses.append(float(parallel.fetch(metrics)["loss"]))
    return losses, parallel.fetch(state.params), parallel.fetch(state.batch_stats)
