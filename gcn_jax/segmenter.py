"""A trained model as a Python function from RGB images to class maps:

    from gcn_jax import Segmenter
    segmenter = Segmenter.from_workdir("runs/voc", checkpoint="best")
    mask = segmenter("photo.jpg")                          # uint8 (height, width) of class indices
    masks, probabilities = segmenter(batch, probabilities=True)  # (batch, h, w), (batch, h, w, classes)
    print(segmenter.class_names[mask[120, 200]])

Inference follows the run's ``config.eval`` (multi-scale, flip, sliding window, dense CRF) unless ``from_workdir``
is told otherwise; images and lists of images are predicted exactly as predict.py predicts them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from PIL import Image

from gcn_jax import xla_flags
from gcn_jax.errors import InputError
from gcn_jax.images import size_pair

# images (batch, height, width, 3) -> classes uint8 (batch, h, w), or with probabilities=True the pair
# (classes, probabilities float32 (batch, h, w, classes)).
SegmentFn = Callable[..., "np.ndarray | tuple[np.ndarray, np.ndarray]"]


class Segmenter:
    """Call it on an image, a batch or a list of images (see `__call__`). Built by `from_workdir` or
    `from_export`; ``step`` is the checkpoint's training step and ``config`` the config it runs with (None for
    an export, whose metadata.json holds the run's)."""

    def __init__(self, segment_fn: SegmentFn, class_names: Sequence[str], step: int | None = None, config=None):
        self._segment, self.class_names, self.step, self.config = segment_fn, tuple(class_names), step, config

    @classmethod
    def from_workdir(cls, workdir: str, checkpoint: str | int = "latest", *, config=None, scales=None, flip=None,
                     window=None, stride=None, crf=None) -> Segmenter:
        """The model of a training run's checkpoint ('latest', 'best' or a step number).

        ``config`` defaults to the one the run saved (``<workdir>/config.json``); ``scales``, ``flip``,
        ``window``, ``stride`` and ``crf`` (the dense CRF, with ``config.eval.crf_params``) replace its
        ``config.eval`` options when given (a window without a stride steps by half the window, as in eval.py)."""
        from gcn_jax import parallel
        from gcn_jax.data.datasets import dataset_spec
        from gcn_jax.evaluation.prediction import make_segment_fn
        from gcn_jax.training.checkpoints import load_variables
        from gcn_jax.training.config_checks import check_config

        if not os.path.isdir(workdir):
            raise InputError(f"{workdir}: no such training run (folder)")
        config = _saved_config(workdir) if config is None else config.copy_and_resolve_references()
        if scales is not None:
            config.eval.scales = tuple(float(s) for s in np.atleast_1d(scales))
        if flip is not None:
            config.eval.flip = bool(flip)
        if crf is not None:
            config.eval.crf = bool(crf)
        if window is not None:
            config.eval.window_size = size_pair(window, "window")
            config.eval.window_stride = () if stride is None else size_pair(stride, "stride")
        elif stride is not None:
            config.eval.window_stride = size_pair(stride, "stride")
        mesh = parallel.make_mesh()
        check_config(config, mesh.size, jax.process_count(), "predict")
        model, variables, step = load_variables(config, workdir, checkpoint, mesh)
        return cls(make_segment_fn(model, variables, config.eval), dataset_spec(config.data.name).class_names,
                   step, config)

    @classmethod
    def from_export(cls, folder: str) -> Segmenter:
        """The model of an export.py folder (`gcn_jax.evaluation.export`): the plain forward pass it holds, on
        whatever platform jax runs here. Float images are rounded to the artifact's uint8 input."""
        from gcn_jax.evaluation.export import load_exported

        exported, meta = load_exported(folder)
        call = jax.jit(exported.call, compiler_options=xla_flags.forward_options())

        def segment(images: np.ndarray, probabilities: bool = False):
            if images.dtype != np.uint8:
                images = np.clip(np.round(images), 0, 255).astype(np.uint8)
            logits, classes = call(images)
            if not probabilities:
                return np.asarray(classes)
            return np.asarray(classes), np.asarray(jax.nn.softmax(logits, axis=-1))

        return cls(segment, meta["class_names"], meta["checkpoint_step"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __call__(self, images, probabilities: bool = False):
        """Class maps for ``images``:

        - one image (a file path, a PIL image, or an RGB array (height, width, 3), uint8 or float in [0, 255])
          -> uint8 (height, width);
        - a batch, an array (batch, height, width, 3) -> uint8 (batch, height, width);
        - a list of images, which may differ in size -> a list of uint8 (height, width), each predicted alone.

        With ``probabilities=True`` each result comes as (class map, probabilities float32 (..., classes)):
        the softmax of the logits, or the mean over scales and flips under multi-scale inference; with the dense
        CRF on (``config.eval.crf``), the CRF's marginals, whose argmax the class map is."""
        if isinstance(images, (list, tuple)):
            return [self(image, probabilities) for image in images]
        batch = _as_rgb(images)
        single = batch.ndim == 3
        result = self._segment(batch[None] if single else batch, probabilities=probabilities)
        return jax.tree.map(lambda x: x[0], result) if single else result

    def __repr__(self) -> str:
        return f"Segmenter({self.num_classes} classes, step {self.step})"


def _saved_config(workdir: str):
    from configs import run

    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise InputError(f"{os.path.join(workdir, 'config.json')} (the config a training run saves) does not "
                         "exist: pass config= (the run's config) or train first")
    return run.get_config(workdir)


def _as_rgb(image) -> np.ndarray:
    """A path, PIL image or array -> RGB array (height, width, 3) or (batch, height, width, 3)."""
    from gcn_jax.evaluation.prediction import read_image

    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim not in (3, 4) or array.shape[-1] != 3 or not (
            array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"expected an RGB image (height, width, 3) or a batch (batch, height, width, 3) of "
                         f"uint8 or floats in [0, 255], got an array of shape {array.shape} and dtype {array.dtype}")
    return array
