"""Train state, the loss and the jitted, sharded train step."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gcn_jax import parallel
from gcn_jax.data.common import IGNORE_LABEL
from gcn_jax.models import build_model, load_backbone


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data (a plain array checkpoints like any other); split every step

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def cross_entropy_sum(logits, labels):
    """Per-pixel softmax cross-entropy summed over pixels whose label is not 255 (ignore and padding), and the
    number of those pixels. logits (batch, height, width, classes) float32; labels int (batch, height, width)."""
    valid = labels != IGNORE_LABEL
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid, dtype=jnp.int32)


def _init_input(config) -> jax.ShapeDtypeStruct:
    """One crop-sized image: what the model is initialised on (its variables do not depend on the size)."""
    crop = config.crop_size
    height, width = (crop, crop) if isinstance(crop, int) else tuple(crop)
    return jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)


def init_variables(model, config, seed: int) -> dict:
    """Host (numpy) variables: a fresh init, the backbone replaced by `config.model.pretrained` if set. Every
    process computes the same values from the same seed."""
    x = _init_input(config)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros(x.shape, x.dtype))
    variables = jax.tree.map(np.asarray, dict(variables))
    if config.model.pretrained:
        variables = load_backbone(variables, config.model.pretrained)
    return variables


def create_train_state(config, mesh, tx) -> TrainState:
    """A replicated train state on ``mesh``."""
    model = build_model(config.model)
    variables = init_variables(model, config, config.seed)
    rng = np.asarray(jax.random.key_data(jax.random.key(config.seed + 1)))
    host = {"step": np.zeros((), np.int32), "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}), "rng": rng}
    placed = parallel.replicate(mesh, host)
    opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(placed["params"])
    return TrainState(opt_state=opt_state, **placed)


def _replicated_shapes(shapes, mesh):
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def abstract_variables(config, mesh) -> dict:
    """{'params', 'batch_stats'} shapes and replicated shardings of the config's model (evaluation target)."""
    x = _init_input(config)
    shapes = jax.eval_shape(lambda: build_model(config.model).init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
    return _replicated_shapes({k: shapes.get(k, {}) for k in ("params", "batch_stats")}, mesh)


def abstract_train_state(config, mesh, tx) -> TrainState:
    """Shapes, dtypes and shardings of `create_train_state`'s result, without computing it (restore target)."""
    variables = abstract_variables(config, mesh)
    rest = jax.eval_shape(lambda: {"step": jnp.zeros((), jnp.int32), "opt_state": tx.init(variables["params"]),
                                   "rng": jax.random.key_data(jax.random.key(0))})
    return TrainState(**variables, **_replicated_shapes(rest, mesh))


def make_train_step(model, tx, schedule, mesh, grad_accum_steps: int = 1):
    """jit(train_step)(state, batch) -> (state, metrics), the state donated. ``batch`` holds global arrays
    {'image': (global_batch, h, w, 3), 'label': (global_batch, h, w)} sharded over the data axis.

    The loss is the cross-entropy averaged over every valid pixel of the global batch. With
    ``grad_accum_steps`` = n the batch is split into n micro-batches processed one after another (a
    `lax.scan`, so activations of one micro-batch at a time); the summed gradients are divided by the valid
    pixels of the whole batch, so the update equals the full-batch one up to BatchNorm, whose statistics
    come from each micro-batch (and the running averages are updated once per micro-batch)."""
    batch_sharding = parallel.batch_sharded(mesh)

    def grads_of(params, batch_stats, images, labels):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images, train=True,
                                          mutable=["batch_stats"])
            loss_sum, count = cross_entropy_sum(logits, labels)
            return loss_sum, (count, updates["batch_stats"])

        (loss_sum, (count, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, loss_sum, count, new_stats

    def train_step(state: TrainState, batch):
        images, labels = batch["image"], batch["label"]
        if grad_accum_steps == 1:
            grads, loss_sum, count, batch_stats = grads_of(state.params, state.batch_stats, images, labels)
        else:
            n = grad_accum_steps

            # Example m * n + a goes to micro-batch a: every device keeps its own rows (no communication).
            def split(x):
                x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(
                    x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, parallel.DATA_AXIS)))

            def body(carry, micro):
                grads, loss_sum, count, stats = carry
                g, l, c, stats = grads_of(state.params, stats, *micro)
                return (jax.tree.map(jnp.add, grads, g), loss_sum + l, count + c, stats), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), state.batch_stats)
            (grads, loss_sum, count, batch_stats), _ = jax.lax.scan(body, init, (split(images), split(labels)))
        denominator = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        metrics = {"loss": loss_sum / denominator, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state.step), "valid_pixels": count}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, rng=rng)
        return new_state, metrics

    replicated = parallel.replicated(mesh)
    return jax.jit(train_step, in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                   donate_argnums=0)
