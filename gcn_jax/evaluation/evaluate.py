"""One pass over a validation split: sharded inference (plain, multi-scale + flip, sliding window) and the
confusion-matrix metrics of `metrics`, summed over the whole split. Used by training and by eval.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gcn_jax import parallel
from gcn_jax.data import pipeline
from gcn_jax.data.datasets import dataset_spec
from gcn_jax.errors import InputError
from gcn_jax.evaluation import inference, metrics


def inference_options(eval_config) -> dict:
    """`inference.multi_scale` keyword arguments from ``config.eval``, checked (`inference.check_options`).
    A window without a stride steps by half the window."""
    window = tuple(eval_config.window_size) or None
    stride = tuple(eval_config.window_stride) or None
    if window is not None and stride is None:
        stride = tuple(max(1, w // 2) for w in window)
    options = {"scales": tuple(eval_config.scales), "flip": bool(eval_config.flip), "window": window,
               "stride": stride}
    inference.check_options(options["scales"], window, stride)
    return options


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


class Evaluator:
    """Evaluates model variables on ``config.data.eval_split`` with the inference options of ``config.eval``.
    Built once (loader and compiled step), called at every evaluation: ``evaluator(variables)`` returns
    `metrics.summarize`'s dict."""

    def __init__(self, config, model, mesh):
        self.mesh, self.dataset = mesh, f"{config.data.name} {config.data.eval_split}"
        self.class_names = dataset_spec(config.data.name).class_names
        self.loader, self.num_batches = pipeline.eval_loader(config.data, config.eval_batch_size)
        self.step = make_eval_step(model, mesh, len(self.class_names), config.eval)

    def __call__(self, variables, max_batches: int = 0) -> dict:
        """``max_batches`` > 0 stops early (a quicker estimate during training); every process stops at the
        same batch."""
        limit = self.num_batches if max_batches <= 0 else min(self.num_batches, max_batches)
        totals = None
        for _, batch in zip(range(limit), self.loader):
            arrays = parallel.global_batch(self.mesh, {k: batch[k] for k in ("image", "label", "mask")})
            totals = metrics.add_counts(totals, parallel.fetch(self.step(variables, arrays)))
        if totals is None:
            raise InputError(f"the validation split of {self.dataset} is empty")
        return metrics.summarize(totals, self.class_names)
