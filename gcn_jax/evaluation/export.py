"""A trained model's inference as a self-contained `jax.export` artifact: StableHLO with the weights inside,
loadable with jax alone (no gcn_jax, no flax, no checkpoint).

An export folder (`write`, read back by `load_exported`) holds two files:

- ``model.jax_exported``: the bytes of `jax.export.Exported.serialize()` of
  ``images -> (logits, classes)``, where
    images   uint8 (batch, height, width, 3), RGB, values 0-255, not normalised: the ImageNet mean / std
             normalisation of training (`gcn_jax.images`) is applied inside;
    logits   float32 (batch, height, width, classes), the model's output at the input resolution;
    classes  uint8 (batch, height, width), the argmax of the logits over classes (int32 above 256 classes).
  batch, height and width are symbolic: one artifact takes any batch size and any image size (also sizes not
  divisible by 32; see `GCNSegmentation`). Lowered for cpu, cuda and tpu (`PLATFORMS`).
- ``metadata.json``: what a user of the artifact needs besides it (`metadata`): class names, palette, the
  input convention, output names / shapes / dtypes, the symbolic dims, the checkpoint step, the platforms and
  the run's config.

    exported = jax.export.deserialize(open("export/model.jax_exported", "rb").read())
    logits, classes = exported.call(images)

Only the plain forward pass is exported. Multi-scale inference resizes to round(s * height), and sliding-window
inference lays its crop grid from the image size: both need a static size. Flip averages the probabilities of
two passes, so its output would not be logits. A config asking for any of them is refused (`check_options`).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from gcn_jax.errors import InputError, NotFoundError
from gcn_jax.images import IMAGENET_MEAN, IMAGENET_STD, model_input
from gcn_jax.labels import PASCAL_PALETTE

ARTIFACT = "model.jax_exported"
METADATA = "metadata.json"
FORMAT = "gcn-jax export 1"  # metadata["format"]: changes when the files or the function's signature change
PLATFORMS = ("cpu", "cuda", "tpu")
SYMBOLIC_DIMS = ("batch", "height", "width")


def check_options(eval_config) -> None:
    """Refuse the inference options of ``eval_config`` that an export with symbolic sizes cannot honour."""
    plain = "; export.py exports the plain forward pass (logits for any image size): override with --config.eval."
    if tuple(eval_config.scales) != (1.0,):
        raise InputError(f"config.eval.scales = {tuple(eval_config.scales)}: multi-scale inference resizes to "
                         f"round(scale * height), which needs a static image size{plain}scales=1.0")
    if eval_config.flip:
        raise InputError("config.eval.flip = True: flip averages the probabilities of two passes, not logits (flip "
                         f"the images and call the artifact twice instead){plain}flip=False")
    if tuple(eval_config.window_size):
        raise InputError(f"config.eval.window_size = {tuple(eval_config.window_size)}: sliding-window inference "
                         f"lays its crops from the image size, which needs a static image size{plain}"
                         "window_size=() --config.eval.window_stride=()")
    if eval_config.crf:
        raise InputError("config.eval.crf = True: the dense CRF runs on the host after the network "
                         f"(gcn_jax/evaluation/crf.py), outside any artifact{plain}crf=False")


def classes_dtype(num_classes: int):
    """The dtype of the class map: uint8 (as predict.py's PNGs) unless there are more than 256 classes."""
    return jnp.uint8 if num_classes <= 256 else jnp.int32


def inference_fn(model, variables):
    """images uint8 (batch, height, width, 3) RGB -> (logits float32 (batch, height, width, classes), classes
    (batch, height, width)); the variables are constants of the function."""
    variables = jax.device_get(variables)  # host copies: no sharding or device count is baked into the artifact

    def infer(images):
        logits = model.apply(variables, model_input(images))
        return logits, jnp.argmax(logits, axis=-1).astype(classes_dtype(model.num_classes))

    return infer


def export_inference(model, variables, platforms=PLATFORMS) -> jax_export.Exported:
    """`inference_fn` exported for uint8 images of symbolic (batch, height, width) on ``platforms``."""
    batch, height, width = jax_export.symbolic_shape(", ".join(SYMBOLIC_DIMS))
    images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)
    return jax_export.export(jax.jit(inference_fn(model, variables)), platforms=platforms)(images)


def metadata(config, step: int, exported: jax_export.Exported, class_names) -> dict:
    """What a user of the artifact needs besides it: classes, conventions, provenance (JSON-ready)."""
    num_classes = config.model.num_classes
    dims = list(SYMBOLIC_DIMS)
    return {
        "format": FORMAT,
        "artifact": ARTIFACT,
        "function": "images -> (logits, classes)",
        "input": {"name": "images", "shape": [*dims, 3], "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                  "value_range": [0, 255],
                  "normalization": {"applied_inside": True, "formula": "(images - mean) / std",
                                    "mean": _rounded(IMAGENET_MEAN), "std": _rounded(IMAGENET_STD)}},
        "outputs": [
            {"name": "logits", "shape": [*dims, num_classes], "dtype": "float32"},
            {"name": "classes", "shape": dims, "dtype": np.dtype(classes_dtype(num_classes)).name,
             "meaning": "argmax of logits over the last axis"},
        ],
        "symbolic_dims": dims,
        "inference": "plain forward pass of the whole image (no multi-scale, flip or sliding window)",
        "num_classes": num_classes,
        "class_names": list(class_names),
        "palette": PASCAL_PALETTE[:num_classes].tolist(),
        "checkpoint_step": int(step),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "config": json.loads(config.to_json_best_effort()),
    }


def _rounded(values: np.ndarray) -> list[float]:
    return np.round(values.astype(np.float64), 4).tolist()  # 123.675, not float32's 123.67500305175781


def write(folder: str, exported: jax_export.Exported, meta: dict) -> list[str]:
    """Write ``folder``/`ARTIFACT` and ``folder``/`METADATA`; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, ARTIFACT), os.path.join(folder, METADATA)]
    with open(paths[0], "wb") as f:
        f.write(exported.serialize())
    with open(paths[1], "w") as f:
        json.dump(meta, f, indent=2)
    return paths


def load_exported(folder: str) -> tuple[jax_export.Exported, dict]:
    """(exported, metadata) of an export folder written by `write`; ``exported.call(images)`` runs it."""
    paths = [os.path.join(folder, ARTIFACT), os.path.join(folder, METADATA)]
    for path in paths:
        if not os.path.isfile(path):
            raise NotFoundError(f"{path}: no such file; export.py writes {ARTIFACT} and {METADATA} to a folder")
    with open(paths[1]) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise InputError(f"{paths[1]}: format {meta.get('format')!r}, this version reads {FORMAT!r}")
    with open(paths[0], "rb") as f:
        return jax_export.deserialize(f.read()), meta
