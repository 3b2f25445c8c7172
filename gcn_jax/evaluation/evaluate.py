"""One pass over a validation split: sharded inference (plain, multi-scale + flip, sliding window) and the
confusion-matrix metrics of `metrics`, summed over the whole split. Used by training and by eval.py."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp

from gcn_jax import parallel
from gcn_jax.data import pipeline
from gcn_jax.data.datasets import dataset_spec
from gcn_jax.errors import InputError
from gcn_jax.evaluation import inference, metrics
from gcn_jax.progress import progress


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


# The options of a plain evaluation (configs/default.py): the validation split, one scale, no flip, the whole
# image at once, Table 5's 7 px boundary band, float32. Its results keep the plain name eval_<step>.json.
DEFAULT_EVALUATION = {"split": "validation", "scales": [1.0], "flip": False, "window": None, "stride": None,
                      "boundary_width": 7, "dtype": "float32"}


def evaluation_options(config) -> dict:
    """What, besides the checkpoint and the dataset, decides the numbers of an evaluation: the split, the
    inference options (`inference_options`), the boundary band and the compute dtype; as JSON values (lists,
    floats for the scales) so that equal options compare and hash equal however they were written."""
    inference = inference_options(config.eval)
    return {"split": config.data.eval_split, "scales": [float(s) for s in inference["scales"]],
            "flip": inference["flip"], "window": _int_list(inference["window"]),
            "stride": _int_list(inference["stride"]), "boundary_width": int(config.eval.boundary_width),
            "dtype": str(config.model.dtype)}


def _int_list(pair) -> list[int] | None:
    return None if pair is None else [int(v) for v in pair]


def results_name(step: int, options: dict) -> str:
    """The file name of an evaluation's results: eval_<step>.json with the default options
    (`DEFAULT_EVALUATION`), else eval_<step>_<the options that differ>_<hash of their values>.json, so that an
    evaluation with other options never replaces another's file, and one with the same options does."""
    differ = {key: value for key, value in options.items() if value != DEFAULT_EVALUATION.get(key)}
    if not differ:
        return f"eval_{step}.json"
    digest = hashlib.sha256(json.dumps(differ, sort_keys=True).encode()).hexdigest()[:8]
    return f"eval_{step}_{'+'.join(differ)}_{digest}.json"


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

    def __call__(self, variables, max_batches: int = 0, show_progress: bool = False) -> dict:
        """``max_batches`` > 0 stops early (a quicker estimate during training); every process stops at the
        same batch. ``show_progress``: a progress bar on a terminal (`gcn_jax.progress`)."""
        limit = self.num_batches if max_batches <= 0 else min(self.num_batches, max_batches)
        batches = zip(range(limit), self.loader)
        if show_progress:
            batches = progress(batches, total=limit, desc=f"evaluating {self.dataset}", unit="batch")
        totals = None
        for _, batch in batches:
            arrays = parallel.global_batch(self.mesh, {k: batch[k] for k in ("image", "label", "mask")})
            totals = metrics.add_counts(totals, parallel.fetch(self.step(variables, arrays)))
        if totals is None:
            raise InputError(f"the validation split of {self.dataset} is empty")
        return metrics.summarize(totals, self.class_names)
