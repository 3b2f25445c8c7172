"""One pass over a validation split: sharded inference (plain, multi-scale + flip, sliding window) and the
confusion-matrix metrics of `metrics`, summed over the whole split. Used by training and by eval.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gcn_jax import parallel
from gcn_jax.data import pipeline
from gcn_jax.evaluation import inference, metrics


def inference_options(eval_config) -> dict:
    """`inference.multi_scale` keyword arguments from ``config.eval``."""
    window = tuple(eval_config.window_size) or None
    stride = tuple(eval_config.window_stride) or None
    if window is not None and stride is None:
        stride = tuple(max(1, w // 2) for w in window)
    return {"scales": tuple(eval_config.scales), "flip": bool(eval_config.flip), "window": window,
            "stride": stride}


def make_eval_step(model, mesh, num_classes: int, eval_config):
    """jit(step)(variables, batch) -> summed counts of `metrics.batch_counts`, replicated. ``batch`` holds
    global arrays 'image', 'label', 'mask' sharded over the data axis."""
    options = inference_options(eval_config)

    def step(variables, batch):
        scores = inference.multi_scale(lambda images: model.apply(variables, images), batch["image"], **options)
        predictions = jnp.argmax(scores, axis=-1)
        return metrics.batch_counts(batch["label"], predictions, num_classes, valid=batch["mask"],
                                    boundary_width=eval_config.boundary_width)

    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, parallel.batch_sharded(mesh)), out_shardings=replicated)


def evaluate(eval_step, variables, loader, num_batches: int, mesh, class_names, max_batches: int = 0) -> dict:
    """Run ``eval_step`` over ``loader`` (from `pipeline.eval_loader`) and summarise (`metrics.summarize`).
    ``max_batches`` > 0 stops early (a quicker estimate during training); every process stops at the same
    batch."""
    limit = num_batches if max_batches <= 0 else min(num_batches, max_batches)
    totals = None
    for i, batch in enumerate(loader):
        if i >= limit:
            break
        counts = eval_step(variables, parallel.global_batch(mesh, {k: batch[k] for k in ("image", "label", "mask")}))
        totals = metrics.add_counts(totals, parallel.fetch(counts))
    if totals is None:
        raise ValueError("the validation split is empty")
    return metrics.summarize(totals, class_names)


def evaluate_config(config, model, variables, mesh, max_batches: int = 0) -> dict:
    """Evaluate ``variables`` on ``config.data.eval_split`` with the inference options of ``config.eval``."""
    spec = pipeline.dataset_spec(config.data.name)
    loader, num_batches = pipeline.eval_loader_from_config(config)
    step = make_eval_step(model, mesh, spec.num_classes, config.eval)
    return evaluate(step, variables, loader, num_batches, mesh, spec.class_names, max_batches)
