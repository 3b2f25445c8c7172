"""Pieces shared by the tfds builders and the input pipeline: the array_record default, image decoding, label-mask
I/O and missing-file errors.

Every builder stores the same three features, so the input pipeline reads all datasets alike:
``image`` (uint8, (height, width, 3)), ``label`` (uint8 class indices, (height, width, 1), 255 = ignore)
and ``image_id`` (the dataset's own file stem). Masks are re-encoded as single-channel PNGs of the indices,
so any decoder (OpenCV or PIL) reads back exactly the stored indices; a palette PNG decoded by OpenCV would
come back as RGB colours instead.

Builders decode every image they store with `decode_image`, the decoder the input pipeline uses, and refuse a
file it cannot decode, naming it: a truncated download fails the build, not a training step hours later.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from gcn_jax.errors import InputError, NotFoundError
from gcn_jax.images import PIL_DECODE_ERRORS


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
    """Writes array_record (random access, read by grain without TensorFlow) unless told otherwise.

    tfds's default, tfrecord, needs TensorFlow to write and cannot be read by index.
    """

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def dataset_info_from_configs(self, **kwargs) -> tfds.core.DatasetInfo:
        """tfds's, without the look-up of a dataset not built yet in tfds's cloud bucket (never ours): it makes a
        temporary folder that it does not remove (tensorflow-datasets 4.9), one empty /tmp/tmp*tfds each time
        such a builder is made."""
        info = super().dataset_info_from_configs(**kwargs)
        info.initialize_from_bucket = lambda: None
        return info


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


def _imdecode(data: bytes, flags: int) -> np.ndarray | None:
    """cv2.imdecode, with None also for the bytes it raises on (empty, or more pixels than OpenCV allows)."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def decode_image(data: bytes) -> np.ndarray | None:
    """Encoded image bytes (JPEG, PNG, any bit depth or colour mode OpenCV reads) -> uint8 RGB (height, width, 3),
    or None where OpenCV cannot decode them (truncated, damaged or not an image).

    The one decoder of stored images: the builders check with it what the input pipeline will decode with it.
    EXIF orientation is ignored, as the label masks (which have none) are aligned with the stored pixels.
    """
    image = _imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes) -> np.ndarray | None:
    """A stored label (a single-channel 8-bit PNG, see `mask_image`) -> uint8 (height, width, 1), or None where it
    is not one or cannot be decoded."""
    mask = _imdecode(data, cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
        return None
    return mask[..., None]


def image_size(data: bytes, name: str, expected: str) -> tuple[int, int]:
    """(height, width) of the image in ``data``, found by decoding all of it with `decode_image` (once; the
    builders store the bytes as they are). ``name`` is the file named in the error (the path, or zip and
    member); ``expected`` says what the file should be, e.g. 'a JPEG image'."""
    image = decode_image(data)
    if image is None:
        raise InputError(f"{name}: cannot decode this file ({len(data)} bytes); expected {expected}. It may be "
                         "truncated or damaged (an interrupted download or extraction?): replace it from the "
                         "original archive and build again")
    return image.shape[:2]


def read_index_png(data: bytes | str | os.PathLike, name: str) -> np.ndarray:
    """Reads a label PNG as its stored indices: palette ('P') images give the palette indices, never colours.

    ``name`` is the file named in errors (the path, or the member of a zip file). All of the file is decoded, so
    a truncated or damaged one is refused here.
    """
    if not isinstance(data, bytes):
        with open(data, "rb") as f:  # a file that cannot be read is reported as such, not as a damaged PNG
            data = f.read()
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            img.load()
            mode = img.mode
            indices = np.array(img, dtype=np.uint8) if mode in ("P", "L") else None
    except PIL_DECODE_ERRORS as e:
        reason = "not a PNG file" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise InputError(f"{name}: cannot decode this label file ({reason}); expected a PNG of class indices. It "
                         "may be truncated or damaged: replace it from the original archive and build again") from e
    if indices is None:
        raise InputError(
            f"{name}: label PNG has mode {mode!r}; expected a palette ('P') or 8-bit grayscale ('L') "
            "image of class indices"
        )
    return indices


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
