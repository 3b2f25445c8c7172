"""Test-time inference modes: plain, sliding window, and multi-scale + flip.

All functions are pure jax.numpy and trace under `jax.jit`: shapes are static, so the Python loops over
windows and scales unroll at trace time. `apply_fn(images) -> logits` maps normalized float32 images
(batch, height, width, 3) to float32 logits (batch, height, width, classes) at the input resolution, for any
height and width (as `gcn_jax.models.GCNSegmentation` does).

The paper evaluates Cityscapes on 1024x2048 images as four 1024x1024 crops whose score maps are fused (overlap
and fusion rule not stated): `sliding_window(apply_fn, images, window=(1024, 1024), stride=(1024, 342))` places
crops at x = 0, 342, 684, 1024 and averages the logits where they overlap. Its multi-scale test ("+MS",
Table 9) gives no scales; `multi_scale` follows common practice: softmax probabilities averaged over scales and
horizontal flips at full resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gcn_jax.images import size_pair

ApplyFn = Callable[[jax.Array], jax.Array]


def check_options(scales: Sequence[float] = (1.0,), window=None, stride=None) -> None:
    """The inference options `multi_scale` and `sliding_window` accept: positive scales; window and stride
    both unset or both an int or (height, width), the stride at most the window so no pixel is left out."""
    if not len(scales) or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {tuple(scales)}")
    if (window is None) != (stride is None):
        raise ValueError(f"sliding-window inference needs both window and stride, got {window=}, {stride=}")
    if window is not None:
        window, stride = size_pair(window, "window"), size_pair(stride, "stride")
        if stride[0] > window[0] or stride[1] > window[1]:
            raise ValueError(f"stride {stride} > window {window} would leave pixels no window covers")


def window_positions(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of length `size`.

    Windows start at 0, stride, 2*stride, ...; the last one is moved back to end exactly at the border, so there
    are ceil((size - window) / stride) + 1 windows and every pixel is covered. If size <= window there is one
    window at 0 (the caller shrinks it to the image). Example (Cityscapes width): (2048, 1024, 342) ->
    [0, 342, 684, 1024].
    """
    if size < 1 or window < 1 or stride < 1:
        raise ValueError(f"size, window and stride must be positive, got {size}, {window}, {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave pixels no window covers")
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(count)]


def sliding_window(apply_fn: ApplyFn, images: jax.Array, window, stride) -> jax.Array:
    """Logits from overlapping crops, averaged where crops overlap.

    Args:
      apply_fn: images (batch, h, w, 3) -> logits (batch, h, w, classes).
      images: (batch, height, width, 3).
      window: crop size, an int or (height, width). Along an axis where the image is smaller, the crop is the
        whole axis (the image is not padded).
      stride: step between crop starts, an int or (height, width); at most the window, so nothing is left out.

    Returns:
      logits (batch, height, width, classes): per pixel the sum of the logits of every crop containing it,
      divided by the number of such crops. With a single crop, exactly `apply_fn(images)`.
    """
    check_options(window=window, stride=stride)
    window, stride = size_pair(window), size_pair(stride)
    height, width = images.shape[1:3]
    wh, ww = min(window[0], height), min(window[1], width)
    ys = window_positions(height, wh, min(stride[0], wh))
    xs = window_positions(width, ww, min(stride[1], ww))
    if len(ys) == 1 and len(xs) == 1:
        return apply_fn(images)

    # The crop grid is static, so the per-pixel crop count is a constant.
    count = np.zeros((height, width), np.float32)
    total = None
    for y in ys:
        for x in xs:
            logits = apply_fn(images[:, y:y + wh, x:x + ww])
            if total is None:
                total = jnp.zeros((*images.shape[:3], logits.shape[-1]), logits.dtype)
            total = total.at[:, y:y + wh, x:x + ww].add(logits)
            count[y:y + wh, x:x + ww] += 1
    return total / jnp.asarray(count)[None, :, :, None]


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
    # Bilinear with pixel-centre alignment and no antialiasing: the same sampling as the cv2.INTER_LINEAR
    # rescaling used for training augmentation (gcn_jax.data.transforms.rescale).
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear", antialias=False)


def multi_scale(apply_fn: ApplyFn, images: jax.Array, scales: Sequence[float] = (1.0,), flip: bool = False,
                window=None, stride=None) -> jax.Array:
    """Scores averaged over rescaled and horizontally flipped copies of the images; meant for argmax.

    For every scale s the images are resized bilinearly to (round(s * height), round(s * width)) (at least 1
    pixel), predicted by `apply_fn` (or by `sliding_window` with `window`/`stride`, at every scale), and the
    logits are resized back to (height, width) and turned into probabilities by a softmax. With `flip` the
    mirrored copy is predicted too and its output mirrored back. The probabilities are averaged.

    Plain inference, scales == (1.0,) and flip=False, returns `apply_fn(images)` (or `sliding_window(...)`)
    unchanged: logits, not probabilities, bit-identical to calling the model directly. Both share their
    argmax, which is what evaluation uses.

    Returns:
      (batch, height, width, classes): logits in the plain case, mean probabilities otherwise.
    """
    check_options(scales, window, stride)
    scales = tuple(float(s) for s in scales)

    def predict(x):
        return apply_fn(x) if window is None else sliding_window(apply_fn, x, window, stride)

    if scales == (1.0,) and not flip:
        return predict(images)

    height, width = images.shape[1:3]
    total = 0.0
    for scale in scales:
        scaled = _resize(images, max(1, round(height * scale)), max(1, round(width * scale)))
        for mirrored in (False, True) if flip else (False,):
            if mirrored:
                logits = predict(scaled[:, :, ::-1])[:, :, ::-1]
            else:
                logits = predict(scaled)
            total = total + jax.nn.softmax(_resize(logits, height, width), axis=-1)
    return total / (len(scales) * (2 if flip else 1))


def probabilities(apply_fn: ApplyFn, images: jax.Array, scales: Sequence[float] = (1.0,), flip: bool = False,
                  window=None, stride=None) -> jax.Array:
    """Class probabilities (batch, height, width, classes) under `multi_scale`'s options: its mean over scales
    and flips, or in the plain case the softmax of the logits. (What the dense CRF takes as its unary.)"""
    return as_probabilities(multi_scale(apply_fn, images, scales, flip, window, stride), scales, flip)


def as_probabilities(scores: jax.Array, scales: Sequence[float] = (1.0,), flip: bool = False) -> jax.Array:
    """`multi_scale`'s output under ``scales`` and ``flip`` as probabilities: already so when it averaged over
    scales or flips, else logits, whose softmax this returns."""
    averaged = tuple(float(s) for s in scales) != (1.0,) or flip
    return scores if averaged else jax.nn.softmax(scores, axis=-1)
