"""Image conventions shared by the input pipeline and inference: ImageNet normalisation and (height, width)
sizes."""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 or float RGB in [0, 255] -> float32, ImageNet mean/std per channel."""
    return (np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def model_input(images, mask=None):
    """What the network takes, computed on the device inside a jitted step: uint8 RGB images (batch, height,
    width, 3) are normalised as `normalize` does, and pixels where ``mask`` (batch, height, width) is false
    (padding) set to 0, the normalised mean colour; float images are taken as normalised already and returned
    as they are. Images cross to the device as uint8: a quarter of the bytes of float32."""
    import jax.numpy as jnp  # here: the host-side users of this module need no jax

    if images.dtype != jnp.uint8:
        return images
    normalized = (images.astype(jnp.float32) - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return normalized if mask is None else jnp.where(mask[..., None], normalized, 0.0)


def size_pair(value, name: str = "size") -> tuple[int, int]:
    """A size given as one positive int or a (height, width) pair of positive ints -> (height, width)."""
    if isinstance(value, (int, np.integer)):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(pair[0]), int(pair[1])


# What PIL raises for a file it cannot decode: not an image, cut short, garbled, or too large to open safely
# (UnidentifiedImageError is an OSError).
PIL_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)
