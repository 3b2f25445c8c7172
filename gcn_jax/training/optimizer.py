"""The optax optimizer: SGD with momentum (or AdamW), weight decay on kernels only, poly schedule, backbone lr
multiplier, optional global-norm clipping. Gradient accumulation lives in the train step (`state.make_train_step`)."""

from __future__ import annotations

import optax
from flax import traverse_util

OPTIMIZERS = ("sgd", "adamw")


def valid_grad_accum_steps(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_optimizer(opt_config, num_train_steps: int) -> None:
    """Raise ValueError naming every impossible setting of ``config.optimizer``."""
    problems = []
    if opt_config.name not in OPTIMIZERS:
        problems.append(f"name = {opt_config.name!r}: expected one of {OPTIMIZERS}")
    if opt_config.learning_rate <= 0:
        problems.append(f"learning_rate = {opt_config.learning_rate}: expected > 0")
    if not 0 <= opt_config.warmup_steps < num_train_steps:
        problems.append(f"warmup_steps = {opt_config.warmup_steps}: expected 0 <= warmup < num_train_steps "
                        f"({num_train_steps})")
    if opt_config.grad_clip_norm is not None and opt_config.grad_clip_norm <= 0:
        problems.append(f"grad_clip_norm = {opt_config.grad_clip_norm}: expected > 0 or unset")
    if not valid_grad_accum_steps(opt_config.grad_accum_steps):
        problems.append(f"grad_accum_steps = {opt_config.grad_accum_steps}: expected an int >= 1")
    if problems:
        raise ValueError("; ".join(problems))


def learning_rate_schedule(opt_config, num_train_steps: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps`, then poly: peak * (1 - t / T) ** power, where t counts from
    the end of warmup and T = num_train_steps - warmup_steps (0 at step num_train_steps, which is never taken)."""
    peak, warmup = opt_config.learning_rate, opt_config.warmup_steps
    poly = optax.polynomial_schedule(init_value=peak, end_value=0.0, power=opt_config.poly_power,
                                     transition_steps=max(num_train_steps - warmup, 1))
    if warmup <= 0:
        return poly
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), poly], [warmup])


def decay_mask(params):
    """True for conv and dense kernels; biases and BN scales/offsets get no weight decay."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1] == "kernel" for path in flat})


def backbone_mask(params):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[0] == "backbone" for path in flat})


def make_optimizer(opt_config, num_train_steps: int) -> optax.GradientTransformation:
    """`name` 'sgd' (the paper's): (clip) -> + weight_decay * kernel -> momentum (Nesterov optional) -> * -lr.
    'adamw': (clip) -> Adam moments -> + weight_decay * kernel (decoupled) -> * -lr. Both then scale the
    backbone's update by `backbone_lr_multiplier`, which equals scaling its learning rate.

    SGD's weight decay is the paper's L2 term, added to the gradient before momentum (SGD's usual
    `weight_decay`); AdamW's is added after the moments, so it is not rescaled by them."""
    check_optimizer(opt_config, num_train_steps)
    decay = ([optax.add_decayed_weights(opt_config.weight_decay, mask=decay_mask)]
             if opt_config.weight_decay else [])
    parts = []
    if opt_config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
    if opt_config.name == "sgd":
        parts += decay
        if opt_config.momentum:
            parts.append(optax.trace(decay=opt_config.momentum, nesterov=opt_config.nesterov))
    else:  # adamw
        parts.append(optax.scale_by_adam(b1=opt_config.adam_b1, b2=opt_config.adam_b2))
        parts += decay
    parts.append(optax.scale_by_learning_rate(learning_rate_schedule(opt_config, num_train_steps)))
    if opt_config.backbone_lr_multiplier != 1.0:
        parts.append(optax.masked(optax.scale(opt_config.backbone_lr_multiplier), backbone_mask))
    return optax.chain(*parts)
