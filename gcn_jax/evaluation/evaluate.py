"""One pass over a validation split: sharded inference (plain, multi-scale + flip, sliding window), optionally
refined by the dense CRF on the host (`crf`, ``config.eval.crf``), and the confusion-matrix metrics of `metrics`,
summed over the whole split, with each image's pixel accuracy, from which a few examples are chosen, predicted
again and drawn (`pictures`). Used by training and by eval.py."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from gcn_jax import parallel, xla_flags
from gcn_jax.data import pipeline
from gcn_jax.data.datasets import dataset_spec, eval_dataset, load_source
from gcn_jax.errors import InputError
from gcn_jax.evaluation import crf, inference, metrics, pictures
from gcn_jax.images import model_input
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
# image at once, Table 5's 7 px boundary band, float32, no CRF. Its results keep the plain name eval_<step>.json.
DEFAULT_EVALUATION = {"split": "validation", "scales": [1.0], "flip": False, "window": None, "stride": None,
                      "boundary_width": 7, "dtype": "float32", "crf": None}


def evaluation_options(config) -> dict:
    """What, besides the checkpoint and the dataset, decides the numbers of an evaluation: the split, the
    inference options (`inference_options`), the boundary band, the compute dtype and the CRF (None when
    ``config.eval.crf`` is off, else its parameters); as JSON values (lists, floats for the scales and the CRF's
    weights and deviations) so that equal options compare and hash equal however they were written."""
    inference = inference_options(config.eval)
    return {"split": config.data.eval_split, "scales": [float(s) for s in inference["scales"]],
            "flip": inference["flip"], "window": _int_list(inference["window"]),
            "stride": _int_list(inference["stride"]), "boundary_width": int(config.eval.boundary_width),
            "dtype": str(config.model.dtype), "crf": _crf_options(config.eval)}


def _crf_options(eval_config) -> dict | None:
    if not eval_config.crf:
        return None
    params = eval_config.crf_params
    return {name: int(params[name]) if name == "iterations" else float(params[name]) for name in crf.PARAMS}


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


def _images(batch) -> jax.Array:
    """The network's input from a batch's uint8 'image' and its 'mask' (padding), on the device."""
    return model_input(batch["image"], batch.get("mask"))


def _predict(model, variables, images, options) -> jax.Array:
    scores = inference.multi_scale(lambda x: model.apply(variables, x), images, **options)
    return jnp.argmax(scores, axis=-1)


def _counts(batch, predictions, num_classes: int, boundary_width: int) -> tuple[dict, dict]:
    counts = metrics.batch_counts(batch["label"], predictions, num_classes, valid=batch["mask"],
                                  boundary_width=boundary_width)
    per_image = metrics.image_counts(batch["label"], predictions, num_classes, valid=batch["mask"])
    return counts, {"index": batch["index"], **per_image}


def make_eval_step(model, mesh, num_classes: int, eval_config):
    """jit(step)(variables, batch) -> (summed counts of `metrics.batch_counts`, per-image counts of
    `metrics.image_counts` with the batch's 'index'), replicated (so every process holds every image's counts).
    ``batch`` holds global arrays 'image', 'label', 'mask', 'index' sharded over the data axis."""
    options = inference_options(eval_config)

    def step(variables, batch):
        predictions = _predict(model, variables, _images(batch), options)
        return _counts(batch, predictions, num_classes, eval_config.boundary_width)

    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, parallel.batch_sharded(mesh)), out_shardings=replicated,
                   compiler_options=xla_flags.forward_options())


def make_count_step(mesh, num_classes: int, eval_config):
    """jit(step)(batch) -> what `make_eval_step` returns, for predictions made elsewhere (the CRF's): ``batch``
    holds global arrays 'label', 'prediction', 'mask', 'index' sharded over the data axis; the counts come
    replicated, so summed over every process's images."""

    def step(batch):
        return _counts(batch, batch["prediction"], num_classes, eval_config.boundary_width)

    return jax.jit(step, in_shardings=(parallel.batch_sharded(mesh),), out_shardings=parallel.replicated(mesh))


def make_probability_step(model, mesh, eval_config, replicated: bool = False):
    """jit(step)(variables, batch) -> {'index', 'probabilities': float32 (batch, height, width, classes) of
    `inference.probabilities`} for a batch of global arrays 'image', 'mask', 'index' sharded over the data axis; the
    output stays sharded (each process reads its own images with `parallel.fetch_local`), or is ``replicated``."""
    options = inference_options(eval_config)

    def step(variables, batch):
        probabilities = inference.probabilities(lambda x: model.apply(variables, x), _images(batch), **options)
        return {"index": batch["index"], "probabilities": probabilities}

    out = parallel.replicated(mesh) if replicated else parallel.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)), out_shardings=out,
                   compiler_options=xla_flags.forward_options())


def make_predict_step(model, mesh, eval_config):
    """jit(step)(variables, batch) -> {'index', 'prediction': int32 (batch, height, width)}, replicated, for a
    batch of global arrays 'image', 'mask', 'index' sharded over the data axis."""
    options = inference_options(eval_config)

    def step(variables, batch):
        return {"index": batch["index"], "prediction": _predict(model, variables, _images(batch), options)}

    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, parallel.batch_sharded(mesh)), out_shardings=replicated,
                   compiler_options=xla_flags.forward_options())


def _sorted_by_index(per_image: list[dict]) -> dict[str, np.ndarray]:
    """The per-image counts of every batch, padding examples (index -1) left out, sorted by record index."""
    joined = {key: np.concatenate([np.asarray(p[key], np.int64) for p in per_image]) for key in per_image[0]}
    order = np.argsort(joined["index"], kind="stable")
    order = order[joined["index"][order] >= 0]
    return {key: value[order] for key, value in joined.items()}


class Evaluator:
    """Evaluates model variables on ``config.data.eval_split`` with the inference options of ``config.eval``.
    Built once (loader and compiled steps), called at every evaluation: ``evaluator(variables)`` returns
    `metrics.summarize`'s dict; `evaluate` also the per-image counts, from which `example_picture` draws.

    With ``config.eval.crf`` the devices compute probabilities instead of counts; each process refines its own
    images with the dense CRF (`crf.refine_labels`, on each image's unpadded box) and the counts of the refined
    labels are computed by `make_count_step`, summed over all processes as without the CRF."""

    def __init__(self, config, model, mesh):
        d = config.data
        self.mesh, self.dataset, self.config = mesh, f"{eval_dataset(d.name)} {d.eval_split}", config
        self.class_names = dataset_spec(d.name).class_names
        self.source = load_source(eval_dataset(d.name), d.eval_split, d.data_dir, decode=False)
        self.loader, self.num_batches = pipeline.eval_loader(d, config.eval_batch_size, source=self.source)
        if config.eval.crf:
            crf.check(config.eval.crf_params)
            self.probabilities = make_probability_step(model, mesh, config.eval)
            self.example_probabilities = make_probability_step(model, mesh, config.eval, replicated=True)
            self.count = make_count_step(mesh, len(self.class_names), config.eval)
        else:
            self.step = make_eval_step(model, mesh, len(self.class_names), config.eval)
            self.predict = make_predict_step(model, mesh, config.eval)

    def __call__(self, variables, max_batches: int = 0) -> dict:
        return self.evaluate(variables, max_batches)[0]

    def evaluate(self, variables, max_batches: int = 0, show_progress: bool = False
                 ) -> tuple[dict, dict[str, np.ndarray]]:
        """(`metrics.summarize`'s dict, the per-image counts {'index', 'correct', 'counted'}: int64 arrays over
        the images evaluated, sorted by record index, the same on every process). ``max_batches`` > 0 stops
        early (a quicker estimate during training); every process stops at the same batch. ``show_progress``:
        a progress bar on a terminal (`gcn_jax.progress`)."""
        limit = self.num_batches if max_batches <= 0 else min(self.num_batches, max_batches)
        batches = zip(range(limit), self.loader)
        if show_progress:
            batches = progress(batches, total=limit, desc=f"evaluating {self.dataset}", unit="batch")
        totals, per_image = None, []
        for _, batch in batches:
            if self.config.eval.crf:
                counts, images = self._crf_counts(variables, batch)
            else:
                arrays = parallel.global_batch(self.mesh, {k: batch[k] for k in ("image", "label", "mask", "index")})
                counts, images = parallel.fetch(self.step(variables, arrays))
            totals = metrics.add_counts(totals, counts)
            per_image.append(images)
        if totals is None:
            raise InputError(f"the validation split of {self.dataset} is empty")
        return metrics.summarize(totals, self.class_names), _sorted_by_index(per_image)

    def _crf_counts(self, variables, batch) -> tuple[dict, dict]:
        """The counts of one batch (``batch``: this process's numpy slice) predicted with the dense CRF."""
        arrays = parallel.global_batch(self.mesh, {k: batch[k] for k in ("image", "mask", "index")})
        local = jax.tree.map(parallel.fetch_local, self.probabilities(variables, arrays))
        if not np.array_equal(local["index"], batch["index"]):  # the host's images must be the rows it refines
            raise RuntimeError(f"process {jax.process_index()} read back records {local['index']} for the batch "
                               f"of records {batch['index']} it sent")
        labels = crf.refine_labels(batch["image"], local["probabilities"], batch["mask"],
                                   self.config.eval.crf_params)
        arrays = parallel.global_batch(self.mesh, {"label": batch["label"], "prediction": labels,
                                                   "mask": batch["mask"], "index": batch["index"]})
        return parallel.fetch(self.count(arrays))

    def examples(self, variables, indices) -> dict[str, np.ndarray]:
        """Records ``indices`` of the split as the evaluation prepares them, with the model's predictions:
        {'image', 'label', 'mask', 'index', 'prediction'} numpy, in the order given. The predictions are
        computed on the whole mesh: every process calls this with the same indices and gets the same arrays."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("no records to predict")
        batch, processes = self.config.eval_batch_size, jax.process_count()
        local = batch // processes
        padded = indices + [-1] * (-len(indices) % batch)
        host = pipeline.eval_examples(self.config.data, self.source, padded)
        predicted = {}
        for start in range(0, len(padded), batch):
            mine = slice(start + jax.process_index() * local, start + (jax.process_index() + 1) * local)
            arrays = parallel.global_batch(self.mesh, {k: host[k][mine] for k in ("image", "mask", "index")})
            if self.config.eval.crf:  # every process refines the whole batch: the same labels everywhere
                out = parallel.fetch(self.example_probabilities(variables, arrays))
                rows = [start + padded[start:start + batch].index(int(i)) for i in out["index"]]
                out["prediction"] = crf.refine_labels(host["image"][rows], out["probabilities"],
                                                      host["mask"][rows], self.config.eval.crf_params)
            else:
                out = parallel.fetch(self.predict(variables, arrays))
            predicted.update((int(i), p) for i, p in zip(out["index"], out["prediction"]) if i >= 0)
        examples = {key: value[:len(indices)] for key, value in host.items()}
        examples["prediction"] = np.stack([predicted[i] for i in indices])
        return examples

    def example_picture(self, variables, per_image: dict, max_width: int | None = None) -> np.ndarray | None:
        """`pictures.example_grid` of the examples `pictures.choose_examples` picks from an evaluation's
        per-image counts (``config.eval.examples_random`` random, ``examples_worst`` worst), predicted again;
        None when both are 0. Every process calls it (see `examples`)."""
        chosen = pictures.choose_examples(per_image, self.config.eval.examples_random,
                                          self.config.eval.examples_worst)
        if not len(chosen["index"]):
            return None
        examples = self.examples(variables, chosen["index"])
        captions = [f"record {i} ({kind})" for i, kind in zip(chosen["index"], chosen["kind"])]
        return pictures.example_grid(examples, captions, len(self.class_names), max_width)
