"""Train state, the loss and the jitted, sharded train step."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gcn_jax import parallel
from gcn_jax.images import model_input, size_pair
from gcn_jax.labels import IGNORE_LABEL
from gcn_jax.models import build_model, load_backbone
from gcn_jax.models.summary import abstract_variables


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def cross_entropy_sum(logits, labels):
    """Per-pixel softmax cross-entropy summed over pixels whose label is not 255 (ignore and padding), and the
    number of those pixels. logits (batch, height, width, classes) float32; labels int (batch, height, width)."""
    valid = labels != IGNORE_LABEL
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid, dtype=jnp.int32)


def init_input_shape(config) -> tuple[int, int, int, int]:
    """One crop-sized image: what the model is initialised on (its variables do not depend on the size)."""
    return (1, *size_pair(config.crop_size, "crop_size"), 3)


def init_variables(model, config, seed: int) -> dict:
    """Host (numpy) variables: a fresh init, the backbone replaced by `config.model.pretrained` if set. Every
    process computes the same values from the same seed."""
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros(init_input_shape(config), jnp.float32))
    variables = jax.tree.map(np.asarray, dict(variables))
    if config.model.pretrained:
        variables = load_backbone(variables, config.model.pretrained)
    return variables


def create_train_state(config, mesh, tx, variables: dict | None = None) -> TrainState:
    """A replicated train state on ``mesh`` at step 0 with a fresh optimizer state: of ``variables`` (host
    arrays, e.g. another run's weights), or of `init_variables`."""
    if variables is None:
        variables = init_variables(build_model(config.model), config, config.seed)
    host = {"step": np.zeros((), np.int32), "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {})}
    placed = parallel.replicate(mesh, host)
    opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(placed["params"])
    return TrainState(opt_state=opt_state, **placed)


def _replicated_shapes(shapes, mesh):
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def variable_shapes(config, mesh) -> dict:
    """{'params', 'batch_stats'}: shapes, dtypes and replicated shardings of the config's model (a restore
    target)."""
    shapes = abstract_variables(build_model(config.model), init_input_shape(config))
    return _replicated_shapes({k: shapes.get(k, {}) for k in ("params", "batch_stats")}, mesh)


def train_state_shapes(config, mesh, tx) -> TrainState:
    """Shapes, dtypes and shardings of `create_train_state`'s result, without computing it (a restore target)."""
    variables = variable_shapes(config, mesh)
    rest = jax.eval_shape(lambda: {"step": jnp.zeros((), jnp.int32), "opt_state": tx.init(variables["params"])})
    return TrainState(**variables, **_replicated_shapes(rest, mesh))


def _micro_batches(x, n: int, mesh):
    """(batch, ...) -> (n, batch / n, ...): example m * n + a goes to micro-batch a, so every device keeps its
    own rows (no communication)."""
    x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, parallel.DATA_AXIS)))


def make_train_step(model, tx, schedule, mesh, grad_accum_steps: int = 1):
    """jit(train_step)(state, batch) -> (state, metrics), the state donated. ``batch`` holds global arrays
    {'image': (global_batch, h, w, 3), 'label': (global_batch, h, w)} and optionally 'mask' (global_batch, h, w),
    false on padding, sharded over the data axis; uint8 images are normalised here (`images.model_input`),
    float ones are taken as normalised. The metrics are the loss, the gradient norm and the learning rate of
    the step.

    The loss is the cross-entropy averaged over every valid pixel of the global batch. With
    ``grad_accum_steps`` = n the batch is split into n micro-batches processed one after another (a
    `lax.scan`, so activations of one micro-batch at a time); the summed gradients are divided by the valid
    pixels of the whole batch, so the update equals the full-batch one up to BatchNorm, whose statistics
    come from each micro-batch (and the running averages are updated once per micro-batch)."""

    def grads_of(params, batch_stats, images, labels, mask):
        images = model_input(images, mask)

        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images, train=True,
                                          mutable=["batch_stats"])
            loss_sum, count = cross_entropy_sum(logits, labels.astype(jnp.int32))
            return loss_sum, (count, updates["batch_stats"])

        (loss_sum, (count, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, loss_sum, count, new_stats

    def accumulated_grads_of(params, batch_stats, images, labels, mask):
        def body(carry, micro):
            grads, loss_sum, count, stats = carry
            micro_grads, micro_loss, micro_count, stats = grads_of(params, stats, *micro)
            return (jax.tree.map(jnp.add, grads, micro_grads), loss_sum + micro_loss, count + micro_count,
                    stats), None

        init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                batch_stats)
        micro = tuple(None if x is None else _micro_batches(x, grad_accum_steps, mesh) for x in (images, labels, mask))
        return jax.lax.scan(body, init, micro)[0]

    def train_step(state: TrainState, batch):
        compute = grads_of if grad_accum_steps == 1 else accumulated_grads_of
        grads, loss_sum, count, batch_stats = compute(state.params, state.batch_stats, batch["image"],
                                                      batch["label"], batch.get("mask"))
        denominator = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss_sum / denominator, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state.step)}
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    replicated = parallel.replicated(mesh)
    return jax.jit(train_step, in_shardings=(replicated, parallel.batch_sharded(mesh)),
                   out_shardings=(replicated, replicated), donate_argnums=0)
