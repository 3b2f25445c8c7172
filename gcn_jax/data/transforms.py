"""Per-example transforms of the input pipeline, as grain transforms over numpy arrays.

Training (`TrainTransform`), in this order: label ids -> train ids (Cityscapes); random scale (image
bilinear, label nearest); a random crop of the image padded at the bottom/right to at least the crop size;
horizontal flip; optional photometric jitter. Images stay uint8 RGB with a mask of their own pixels: they
cross to the device as uint8 and are normalised there (`images.model_input`), where the padding becomes 0 in
the normalised image (the mean colour); the label is 255 (ignore) there, so padded pixels never count in the
loss.
Mode ``paper`` is the paper's recipe: no scaling and no jitter, only padding to the crop size (and a random
crop where an image is larger, as for Cityscapes' 800x800 crops) and the flip.

Evaluation (`EvalTransform`): no augmentation, full resolution, padded to one fixed shape with a validity mask.

Both come after `DecodeRecord`, which decodes the stored image and label bytes of a record.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import grain
import numpy as np

from gcn_jax.data import common
from gcn_jax.errors import InputError
from gcn_jax.labels import IGNORE_LABEL

AUGMENT_MODES = ("strong", "paper")


def check_augment(mode: str, scale_range: Sequence[float]) -> None:
    """`mode` is one of `AUGMENT_MODES` and `scale_range` a (min, max) with 0 < min <= max."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augment mode {mode!r}: expected one of {AUGMENT_MODES}")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range {tuple(scale_range)}: expected (min, max) with 0 < min <= max")


def rescale(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Resizes by ``scale`` (output size rounded, at least 1): the image bilinearly, the label by nearest."""
    h, w = label.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # OpenCV wants (width, height)
    if size == (w, h):
        return image, label
    # INTER_NEAREST_EXACT samples at pixel centres, as INTER_LINEAR does; OpenCV's INTER_NEAREST does not and
    # would shift the label against the image by up to half a source pixel.
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT))


def pad_to(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pads at the bottom/right to ``size`` (image and label no larger): 0 in the image, 255 in the label."""
    h, w = label.shape
    out_image = np.zeros((*size, image.shape[-1]), image.dtype)
    out_label = np.full(size, IGNORE_LABEL, label.dtype)
    out_image[:h, :w] = image
    out_label[:h, :w] = label
    return out_image, out_label


def own_pixels(shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The mask of `pad_to`'s output: true on the (height, width) = ``shape`` block it keeps, false on padding."""
    mask = np.zeros(size, bool)
    mask[:shape[0], :shape[1]] = True
    return mask


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness (±32), contrast and saturation (×0.5-1.5), each applied with probability 1/2, on an
    RGB image in [0, 255]; returns uint8 (rounded), as images cross to the device."""
    image = np.asarray(image, np.float32)
    if rng.random() < 0.5:
        image = image + rng.uniform(-32, 32)
    if rng.random() < 0.5:
        image = image * rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
        image = gray[..., None] + (image - gray[..., None]) * rng.uniform(0.5, 1.5)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


class DecodeRecord(grain.transforms.Map):
    """A record read with its image and label as stored bytes (`datasets.load_source(..., decode=False)`) -> the
    same record with 'image' uint8 RGB (height, width, 3) and 'label' uint8 (height, width, 1).

    A record that cannot be decoded, or whose image and label differ in size, is an InputError naming the dataset,
    split and image id (of the part a record of a `datasets.MixedSource` names under 'dataset'), not an error
    deep inside a later transform. Fields already decoded (a source read decoded, the pipeline's padding
    records) pass as they are.
    """

    def __init__(self, dataset: str, split: str):
        self.dataset, self.split = dataset, split

    def map(self, element: dict) -> dict:
        image, label = element["image"], element["label"]
        if isinstance(image, bytes):
            image = self._check(common.decode_image(image), element, "image", "a JPEG or PNG image", len(image))
        if isinstance(label, bytes):
            label = self._check(common.decode_mask(label), element, "label",
                                "a single-channel 8-bit PNG of class indices", len(label))
        if image.shape[:2] != label.shape[:2]:
            raise InputError(f"{self._record(element)}: the image is {image.shape[0]}x{image.shape[1]} but the label "
                             f"is {label.shape[0]}x{label.shape[1]} (height x width). {self._advice(element)}")
        element = {key: value for key, value in element.items() if key not in ("dataset", "part_index")}
        return {**element, "image": image, "label": label}

    def _check(self, decoded: np.ndarray | None, element: dict, what: str, expected: str, size: int) -> np.ndarray:
        if decoded is None:
            raise InputError(f"{self._record(element)}: the stored {what} ({size} bytes) cannot be decoded; "
                             f"expected {expected}. {self._advice(element)}")
        return decoded

    def _where(self, element: dict) -> tuple[str, str, int]:
        """(dataset, split, record index in it): a `datasets.MixedSource` record names its part and its index
        there."""
        if "dataset" in element:
            dataset, split = element["dataset"].rsplit(":", 1)
            return dataset, split, element["part_index"]
        return self.dataset, self.split, element["index"]

    def _record(self, element: dict) -> str:
        image_id = element["image_id"]
        image_id = image_id.decode(errors="replace") if isinstance(image_id, bytes) else str(image_id)
        dataset, split, index = self._where(element)
        return f"dataset {dataset}, split {split}, record {index} (image id {image_id!r})"

    def _advice(self, element: dict) -> str:
        return (f"The built dataset is damaged, or was built by a version that did not decode its files: build it "
                f"again from the raw files with python -m gcn_jax.data.build {self._where(element)[0]} --overwrite, "
                "which checks every file")


def _decoded(element: dict, label_lut: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    label = element["label"][..., 0]
    if label_lut is not None:
        label = label_lut[label]
    return element["image"], label


class TrainTransform(grain.transforms.RandomMap):
    """Decoded tfds example -> {'image': uint8 RGB (crop_h, crop_w, 3), 'label': uint8 (crop_h, crop_w),
    'mask': bool (crop_h, crop_w), true on the image's own pixels (false on padding), 'index': int32 record
    index}."""

    def __init__(self, crop_size: Sequence[int], mode: str = "strong", scale_range: Sequence[float] = (0.5, 2.0),
                 photometric: bool = False, label_lut: np.ndarray | None = None):
        check_augment(mode, scale_range)
        lo, hi = scale_range
        self.crop_size = tuple(int(c) for c in crop_size)
        self.mode, self.scale_range, self.photometric, self.label_lut = mode, (lo, hi), photometric, label_lut

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image, label = _decoded(element, self.label_lut)
        strong = self.mode == "strong"
        if strong:
            image, label = rescale(image, label, rng.uniform(*self.scale_range))
        (h, w), (ch, cw) = label.shape, self.crop_size
        top, left = rng.integers(0, max(h, ch) - ch + 1), rng.integers(0, max(w, cw) - cw + 1)
        # Crop, then jitter only the image's own pixels, then pad (the mask tells the device what is padding).
        image, label = image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
        if strong and self.photometric:
            image = photometric_jitter(image, rng)
        mask = own_pixels(label.shape, self.crop_size)
        image, label = pad_to(image, label, self.crop_size)
        if rng.random() < 0.5:
            image, label, mask = image[:, ::-1], label[:, ::-1], mask[:, ::-1]
        return {"image": np.ascontiguousarray(image, dtype=np.uint8),
                "label": np.ascontiguousarray(label, dtype=np.uint8), "mask": np.ascontiguousarray(mask),
                "index": np.int32(element["index"])}


class EvalTransform(grain.transforms.Map):
    """Decoded tfds example -> the full-resolution image padded to ``pad_size``: {'image': uint8 RGB
    (pad_h, pad_w, 3), 'label': int32 (pad_h, pad_w), 'mask': bool, true on the image's own pixels and false on
    padding and on padding examples, 'index': record index, -1 for padding}."""

    def __init__(self, pad_size: Sequence[int], label_lut: np.ndarray | None = None):
        self.pad_size, self.label_lut = tuple(int(p) for p in pad_size), label_lut

    def map(self, element: dict) -> dict:
        image, label = _decoded(element, self.label_lut)
        h, w = label.shape
        if h > self.pad_size[0] or w > self.pad_size[1]:
            raise InputError(
                f"image {element['image_id']!r} is {h}x{w} (height x width), larger than the evaluation pad size "
                f"{self.pad_size[0]}x{self.pad_size[1]}; raise eval_pad_size"
            )
        image, label = pad_to(image, label, self.pad_size)
        mask = own_pixels((h, w), self.pad_size) & (element["index"] >= 0)
        return {"image": image.astype(np.uint8, copy=False), "label": label.astype(np.int32), "mask": mask,
                "index": np.int32(element["index"])}
