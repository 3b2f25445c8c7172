"""The optax optimizer: SGD with momentum, decoupled-from-BN weight decay, poly schedule, backbone lr multiplier,
optional global-norm clipping. Gradient accumulation lives in the train step (`state.make_train_step`)."""

from __future__ import annotations

import optax
from flax import traverse_util


def learning_rate_schedule(opt_config, num_train_steps: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps`, then poly: peak * (1 - t / T) ** power down to 0 at the last
    step, where t counts from the end of warmup and T = num_train_steps - warmup_steps."""
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
    """SGD: (clip) -> + weight_decay * kernel -> momentum (Nesterov optional) -> * -lr -> backbone * multiplier.

    Weight decay is the paper's L2 term (added to the gradient before momentum, as in SGD with
    `weight_decay`). The multiplier scales the backbone's final update, which equals scaling its lr."""
    parts = []
    if opt_config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
    if opt_config.weight_decay:
        parts.append(optax.add_decayed_weights(opt_config.weight_decay, mask=decay_mask))
    if opt_config.momentum:
        parts.append(optax.trace(decay=opt_config.momentum, nesterov=opt_config.nesterov))
    parts.append(optax.scale_by_learning_rate(learning_rate_schedule(opt_config, num_train_steps)))
    if opt_config.backbone_lr_multiplier != 1.0:
        parts.append(optax.masked(optax.scale(opt_config.backbone_lr_multiplier), backbone_mask))
    return optax.chain(*parts)
