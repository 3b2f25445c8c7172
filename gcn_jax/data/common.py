"""Pieces shared by the tfds builders: the array_record default, label-mask I/O and missing-file errors.

Every builder stores the same three features, so the input pipeline reads all datasets alike:
``image`` (uint8, (height, width, 3)), ``label`` (uint8 class indices, (height, width, 1), 255 = ignore)
and ``image_id`` (the dataset's own file stem). Masks are re-encoded as single-channel PNGs of the indices,
so any decoder (OpenCV or PIL) reads back exactly the stored indices; a palette PNG decoded by OpenCV would
come back as RGB colours instead.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from gcn_jax.errors import InputError, NotFoundError


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
    """Writes array_record (random access, read by grain without TensorFlow) unless told otherwise.

    tfds's default, tfrecord, needs TensorFlow to write and cannot be read by index.
    """

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)


def segmentation_features(image_format: str = "jpeg") -> tfds.features.FeaturesDict:
    """The features of every builder; ``image_format`` is that of the stored image bytes (kept as they come)."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
            "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "image_id": tfds.features.Text(),
        }
    )


def mask_image(indices: np.ndarray) -> Image.Image:
    """A (height, width) uint8 index array as a single-channel PIL image (tfds encodes it to PNG without TF)."""
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.dtype != np.uint8:
        raise ValueError(f"a label mask must be a 2-D uint8 array, got {indices.dtype} {indices.shape}")
    return Image.fromarray(indices, mode="L")


def read_index_png(data: bytes | str | os.PathLike, name: str) -> np.ndarray:
    """Reads a label PNG as its stored indices: palette ('P') images give the palette indices, never colours.

    ``name`` is the file named in errors (the path, or the member of a zip file).
    """
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        if img.mode not in ("P", "L"):
            raise InputError(
                f"{name}: label PNG has mode {img.mode!r}; expected a palette ('P') or 8-bit grayscale ('L') "
                "image of class indices"
            )
        return np.array(img, dtype=np.uint8)


def check_values(mask: np.ndarray, allowed: Iterable[int], name: str) -> None:
    bad = np.setdiff1d(np.unique(mask), np.asarray(sorted(allowed)))
    if bad.size:
        raise InputError(f"{name}: label values {bad.tolist()} are not classes of this dataset")


class MissingFilesError(NotFoundError):
    """Files a builder needs are not where the dataset's layout puts them."""


def require_files(paths: Sequence[str], what: str, where: str, hint: str = "") -> None:
    """Raises one MissingFilesError naming the missing files (up to 10), their count and the expected place."""
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return
    shown = "\n  ".join(missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise MissingFilesError(
        f"{len(missing)} of {len(paths)} {what} missing; they should be in {where}:\n  {shown}{more}"
        + (f"\n{hint}" if hint else "")
    )
