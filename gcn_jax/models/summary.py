"""Parameter and FLOP summaries of a model (XLA cost analysis of the lowered forward pass).

FLOPs are XLA's count (a multiply-add is 2 FLOPs). Papers of the time, this one included ("ResNet-50 ...
3.7 GFLOPs"), count multiply-adds, so `summarize` reports both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def count_params(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def abstract_variables(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The variable tree's shapes, without allocating or computing anything."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...], variables: Any | None = None) -> float:
    """XLA's FLOP count of one inference forward pass on an input of `input_shape` (not compiled, not run)."""
    variables = variables if variables is not None else abstract_variables(model, input_shape)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
    cost = lowered.cost_analysis()
    if isinstance(cost, list):  # older jax returned one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the model's top-level submodules in the order its forward pass first calls them: the order
    data flows through them (traced, not computed)."""
    names = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and module.scope is not None and len(module.path) == 1:
            if module.path[0] not in names:
                names.append(module.path[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(model, input_shape)
    return names


def module_groups(params: Mapping, order: list[str] = ()) -> dict[str, int]:
    """Parameter counts per top-level module (backbone split by stage: stem, layer1..4), the backbone first,
    then the other modules in ``order`` (e.g. `call_order`'s), then the rest by name."""
    groups: dict[str, int] = {}
    for path, leaf in traverse_util.flatten_dict(dict(params)).items():
        trunk = path[1:] if path[0] == "backbone" else path  # a bare ResNet / classifier is not nested
        stage = re.match(r"(layer\d)_\d+$", trunk[0])
        if stage:
            key = f"backbone/{stage.group(1)}"
        elif trunk[0] in ("conv1", "bn1"):
            key = "backbone/stem"
        else:
            key = path[0]
        groups[key] = groups.get(key, 0) + int(np.prod(np.shape(leaf)))

    def rank(key):
        if key.startswith("backbone"):
            return (0, "" if key.endswith("stem") else key)
        return (1, order.index(key), "") if key in order else (2, 0, key)

    return dict(sorted(groups.items(), key=lambda kv: rank(kv[0])))


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    variables = abstract_variables(model, input_shape)
    flops = forward_flops(model, input_shape, variables)
    return {
        "input_shape": tuple(input_shape),
        "params": count_params(variables["params"]),
        "batch_stats": count_params(variables.get("batch_stats", {})),
        "groups": module_groups(variables["params"], call_order(model, input_shape)),
        "flops": flops,
        "macs": flops / 2,
    }


def format_summary(s: Mapping[str, Any]) -> str:
    width = max(len(k) for k in s["groups"]) + 2
    lines = [f"{'module':<{width}}{'params':>14}"]
    lines += [f"{k:<{width}}{v:>14,}" for k, v in s["groups"].items()]
    lines.append(f"{'total':<{width}}{s['params']:>14,}")
    lines.append(f"BN statistics (not trained): {s['batch_stats']:,}")
    lines.append(
        f"forward at {'x'.join(map(str, s['input_shape']))}: {s['flops'] / 1e9:.2f} GFLOPs (XLA), "
        f"{s['macs'] / 1e9:.2f} G multiply-adds (the paper's 'FLOPs')"
    )
    return "\n".join(lines)
