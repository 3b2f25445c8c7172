"""Dense-CRF post-processing (the paper's "+CRF", Tables 7 and 9): the fully connected CRF of Krähenbühl and
Koltun (NIPS 2011) as DeepLab uses it, on the host, one image at a time, through the optional package
``pydensecrf2`` (`INSTALL`). Used only when ``config.eval.crf`` is on; its parameters are
``config.eval.crf_params``.

The energy of a labelling x of an image with colours I at positions p is

    E(x) = sum_i -log P(x_i) + sum_{i<j} [x_i != x_j] k(i, j),
    k(i, j) = w1 exp(-|p_i - p_j|^2 / 2 bi_xy_std^2 - |I_i - I_j|^2 / 2 bi_rgb_std^2)
              + w2 exp(-|p_i - p_j|^2 / 2 pos_xy_std^2)

with P the network's class probabilities, w1 = bi_weight (the appearance kernel: pixels of similar colour nearby
take the same label) and w2 = pos_weight (the smoothness kernel). Mean-field inference runs ``iterations``
steps and returns the approximate marginals Q (height, width, classes), whose argmax is the refined labelling.
"""

from __future__ import annotations

import numpy as np

from gcn_jax.errors import InputError

INSTALL = "pip install -r requirements-crf.txt"
# The unary of a probability below this is capped at -log(MIN_PROBABILITY) = 18.4, so that a softmax that
# underflowed to 0 gives a finite energy.
MIN_PROBABILITY = 1e-8
PARAMS = ("iterations", "pos_weight", "pos_xy_std", "bi_weight", "bi_xy_std", "bi_rgb_std")


def _densecrf():
    """The ``pydensecrf.densecrf`` module, or an InputError naming the install command."""
    try:
        from pydensecrf import densecrf
    except ImportError as e:
        raise InputError(f"the dense CRF needs the optional package pydensecrf2, which does not import here ({e}); "
                         f"install it with: {INSTALL}") from e
    return densecrf


def check_installed() -> None:
    """Raise the InputError of `_densecrf` now, before a checkpoint is loaded, when pydensecrf2 is missing."""
    _densecrf()


def check_params(params) -> None:
    """``params`` (``config.eval.crf_params``) has `PARAMS`: a whole number of iterations >= 1, weights >= 0
    and standard deviations > 0."""
    missing = [name for name in PARAMS if name not in params]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; expected {', '.join(PARAMS)}")
    iterations = params["iterations"]
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations = {iterations!r}: expected a whole number of mean-field steps >= 1")
    for name in PARAMS[1:]:
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name} = {value!r}: expected a number")
        if name.endswith("_std") and not value > 0:
            raise ValueError(f"{name} = {value!r}: expected a standard deviation > 0 (pixels or colour levels)")
        if name.endswith("_weight") and not value >= 0:
            raise ValueError(f"{name} = {value!r}: expected a kernel weight >= 0")


def check(params) -> None:
    """What evaluation and prediction check before they start with the CRF on: `check_params`, then
    `check_installed` (the config check reports each under its own key)."""
    check_params(params)
    check_installed()


def refine(image: np.ndarray, probabilities: np.ndarray, params) -> np.ndarray:
    """The CRF's mean-field marginals, float32 (height, width, classes), for an RGB ``image`` uint8 (height,
    width, 3) and the network's ``probabilities`` float32 (height, width, classes); ``params`` as in
    `check_params`."""
    densecrf = _densecrf()
    height, width, classes = probabilities.shape
    if image.shape != (height, width, 3):
        raise ValueError(f"image has shape {image.shape}, probabilities {probabilities.shape}: expected an RGB "
                         "image of the same height and width")
    unary = -np.log(np.clip(probabilities, MIN_PROBABILITY, 1.0)).reshape(height * width, classes).T
    crf = densecrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    crf.addPairwiseGaussian(sxy=float(params["pos_xy_std"]), compat=float(params["pos_weight"]))
    crf.addPairwiseBilateral(sxy=float(params["bi_xy_std"]), srgb=float(params["bi_rgb_std"]),
                             rgbim=np.ascontiguousarray(image, np.uint8), compat=float(params["bi_weight"]))
    marginals = np.asarray(crf.inference(int(params["iterations"])), np.float32)
    return marginals.reshape(classes, height, width).transpose(1, 2, 0)


def refine_labels(images: np.ndarray, probabilities: np.ndarray, valid: np.ndarray, params) -> np.ndarray:
    """Class indices int32 (batch, height, width) of padded evaluation batches: the argmax of `refine` on each
    image's own pixels, the box where ``valid`` (batch, height, width) is true (evaluation pads images at the
    bottom and right), and the plain argmax of ``probabilities`` elsewhere (padding, which is not counted, and
    padding examples, whose ``valid`` is all false, left without a CRF). ``images`` uint8 (batch, h, w, 3)."""
    labels = np.argmax(probabilities, axis=-1).astype(np.int32)
    for i in range(len(labels)):
        rows, cols = np.flatnonzero(valid[i].any(axis=1)), np.flatnonzero(valid[i].any(axis=0))
        if not len(rows):
            continue
        box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        labels[i][box] = np.argmax(refine(images[i][box], probabilities[i][box], params), axis=-1)
    return labels
