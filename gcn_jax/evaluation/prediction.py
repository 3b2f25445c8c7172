"""Predicted masks for image files: the model under `config.eval`'s inference options, one image at a time at
its own resolution, written in one of `FORMATS`:

- ``default``: ``<name>_mask.png``, a VOC-format palette PNG (pixel values = class indices, shown in colour),
  and ``<name>_overlay.png``, the colours blended over the image;
- ``voc``: what the PASCAL VOC evaluation server takes, ``results/VOC2012/Segmentation/comp6_test_cls/<name>.png``
  (palette PNGs of the 21 class indices; comp6 is the competition for methods trained on more than VOC's own
  data, as ImageNet-pretrained backbones are);
- ``cityscapes``: what the Cityscapes test server takes, ``<name>.png`` of label ids (0-33, 8-bit grayscale) for
  the model's 19 train ids, file names kept so that the server finds ``<city>_<sequence>_<frame>`` in them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from gcn_jax import xla_flags
from gcn_jax.errors import InputError, NotFoundError
from gcn_jax.evaluation import crf, evaluate, inference
from gcn_jax.images import PIL_DECODE_ERRORS, normalize
from gcn_jax.labels import CITYSCAPES_TRAIN_TO_LABEL_ID, colorize, palette_image
from gcn_jax.progress import progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
VOC_RESULTS = os.path.join("results", "VOC2012", "Segmentation", "comp6_test_cls")
FORMATS = {"default": None, "voc": 21, "cityscapes": 19}  # format -> the class count it is defined for


def check_format(fmt: str, num_classes: int) -> None:
    """``fmt`` is one of `FORMATS` and fits a model of ``num_classes``."""
    if fmt not in FORMATS:
        raise InputError(f"--format={fmt}: expected one of {', '.join(FORMATS)}")
    if FORMATS[fmt] not in (None, num_classes):
        raise InputError(f"--format={fmt} writes the {FORMATS[fmt]} classes of its benchmark; this model predicts "
                         f"{num_classes} (config.model.num_classes)")


def _write_default(output_dir: str, stem: str, image: np.ndarray, mask: np.ndarray) -> list[str]:
    mask_path = os.path.join(output_dir, f"{stem}_mask.png")
    overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
    palette_image(mask).save(mask_path)
    Image.fromarray(overlay(image, mask)).save(overlay_path)
    return [mask_path, overlay_path]


def _write_voc(output_dir: str, stem: str, image: np.ndarray, mask: np.ndarray) -> list[str]:
    path = os.path.join(output_dir, VOC_RESULTS, f"{stem}.png")
    palette_image(mask).save(path)
    return [path]


def _write_cityscapes(output_dir: str, stem: str, image: np.ndarray, mask: np.ndarray) -> list[str]:
    path = os.path.join(output_dir, f"{stem}.png")
    Image.fromarray(CITYSCAPES_TRAIN_TO_LABEL_ID[mask], mode="L").save(path)
    return [path]


_WRITERS = {"default": _write_default, "voc": _write_voc, "cityscapes": _write_cityscapes}


def find_images(paths: Sequence[str]) -> list[str]:
    """Image files named in ``paths``: files as given, folders searched (not recursively) for image
    extensions, sorted. A path that does not exist, or finding no image at all, is an error."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, n) for n in os.listdir(path)
                            if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, n)))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise NotFoundError(f"{path}: no such file or folder")
    if not found:
        raise NotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {list(paths)}")
    return found


def read_image(path: str) -> np.ndarray:
    """RGB uint8 (height, width, 3), as a viewer shows the file: the EXIF orientation applied; 16-bit images
    scaled to 8 bits (PIL's own conversion would clip them to white); grayscale, palette, CMYK and bilevel
    images converted to RGB; an alpha channel dropped. Float images, whose range is unknown, are refused."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode == "F":
                raise InputError(f"{path}: a floating-point image (mode F) has no known range; save it as 8-bit "
                                 "or 16-bit")
            if image.mode.startswith("I"):  # I;16, I;16B, I: 16-bit grayscale (PNG, TIFF); above 65535 saturates
                gray = np.asarray(image, np.float64) * (255 / 65535)
                return np.repeat(np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"))
    # PIL reports some damaged files as SyntaxError, bad EXIF data as ValueError, a huge image as a bomb.
    except PIL_DECODE_ERRORS as e:
        raise InputError(f"{path}: not a readable image ({e})") from e


def make_segment_fn(model, variables, eval_config):
    """images uint8 or float RGB (batch, height, width, 3) -> class indices uint8 (batch, height, width), and
    with ``probabilities=True`` also the class probabilities float32 (batch, height, width, classes): a softmax
    of the logits, or `inference.multi_scale`'s mean over scales and flips. Inference follows ``eval_config``;
    compiled once per input shape. Results are numpy arrays. With ``eval_config.crf`` the dense CRF refines
    each image on the host (`crf.refine`): the classes are the argmax of its marginals, which are then the
    probabilities returned."""
    options = evaluate.inference_options(eval_config)

    @functools.partial(jax.jit, static_argnames="probabilities", compiler_options=xla_flags.forward_options())
    def segment(variables, images, probabilities):
        scores = inference.multi_scale(lambda x: model.apply(variables, x), images, **options)
        classes = jnp.argmax(scores, axis=-1).astype(jnp.uint8)
        if not probabilities:
            return classes
        return classes, inference.as_probabilities(scores, options["scales"], options["flip"])

    def run(images: np.ndarray, probabilities: bool = False):
        return jax.tree.map(np.asarray, segment(variables, normalize(images), probabilities))

    if not eval_config.crf:
        return run
    crf.check(eval_config.crf_params)

    def run_with_crf(images: np.ndarray, probabilities: bool = False):
        _, network = run(images, probabilities=True)
        rgb = np.clip(np.round(images), 0, 255).astype(np.uint8)  # as the CRF's colour kernel reads them
        refined = np.stack([crf.refine(image, p, eval_config.crf_params) for image, p in zip(rgb, network)])
        classes = np.argmax(refined, axis=-1).astype(np.uint8)
        return (classes, refined) if probabilities else classes

    return run_with_crf


def make_predict_fn(model, variables, eval_config):
    """image uint8 (height, width, 3) -> class indices uint8 (height, width); compiled once per image size."""
    segment = make_segment_fn(model, variables, eval_config)
    return lambda image: segment(image[None])[0]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The mask's colours blended over the image (uint8 RGB); background (class 0) is left as is."""
    colours = colorize(mask).astype(np.float32)
    blended = np.where((mask > 0)[..., None], (1 - alpha) * image + alpha * colours, image)
    return np.round(blended).astype(np.uint8)


def predict_files(predict_fn, paths: Sequence[str], output_dir: str, fmt: str = "default"
                  ) -> tuple[list[tuple[str, ...]], list[tuple[str, str]]]:
    """Write the prediction of every image that can be read in format ``fmt`` (`FORMATS`). Returns the (image,
    *files written for it) and the (image, reason) of those that could not be read: one bad file does not stop
    the others."""
    write = _WRITERS[fmt]
    os.makedirs(os.path.join(output_dir, VOC_RESULTS) if fmt == "voc" else output_dir, exist_ok=True)
    written, failed, names = [], [], set()
    for path in progress(paths, desc="predicting", unit="image"):
        base = stem = os.path.splitext(os.path.basename(path))[0]
        copy = 1
        while stem in names:  # the same file name in two folders: keep both
            stem, copy = f"{base}_{copy}", copy + 1
        names.add(stem)
        try:
            image = read_image(path)
        except InputError as e:
            failed.append((path, str(e)))
            continue
        written.append((path, *write(output_dir, stem, image, predict_fn(image))))
    return written, failed
