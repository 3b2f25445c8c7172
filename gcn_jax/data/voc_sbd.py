"""PASCAL VOC 2012 segmentation, alone (`voc_sbd/voc`) or with the SBD augmented set (`voc_sbd/aug`).

manual_dir holds the two archives as they extract:

    <manual_dir>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}
    <manual_dir>/benchmark_RELEASE/dataset/{img, cls, train.txt, val.txt}      (only for voc_sbd/aug)

Splits: `voc`: train 1,464, validation 1,449. `aug`: train = (VOC train ∪ SBD train ∪ SBD val) − VOC val
(10,582 images on the full data), validation = VOC val. Where an image has a VOC annotation (VOC train/val)
that one is used: it has the 255 boundary band of the validation labels; the rest come from SBD's
`GTcls.Segmentation` (0-20, no 255).
"""

from __future__ import annotations

import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from gcn_jax.data import common
from gcn_jax.errors import InputError
from gcn_jax.labels import IGNORE_LABEL

NUM_CLASSES = 21
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_LABELS = set(range(NUM_CLASSES)) | {IGNORE_LABEL}


class VocSbdConfig(tfds.core.BuilderConfig):
    def __init__(self, *, use_sbd: bool, **kwargs):
        super().__init__(version="1.0.0", **kwargs)
        self.use_sbd = use_sbd


def _load_mat(path: str) -> dict:
    """The variables of a MATLAB file; an InputError naming ``path`` if it cannot be parsed."""
    try:
        return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # a damaged file fails scipy's parser in many ways: MatReadError, OSError, IndexError, ...
        raise InputError(f"{path}: cannot read this MATLAB file ({type(e).__name__}: {e}); expected SBD's class "
                         "segmentation (a struct GTcls). It may be truncated or damaged: replace it from "
                         "benchmark.tgz and build again") from e


def read_sbd_mat(path: str) -> np.ndarray:
    """SBD's class segmentation (`GTcls.Segmentation`) as a (height, width) uint8 array."""
    variables = _load_mat(path)
    try:
        seg = np.asarray(variables["GTcls"].Segmentation)
    except (KeyError, AttributeError) as e:
        raise InputError(f"{path}: expected a MATLAB struct GTcls with a field Segmentation ({e!r})") from e
    if seg.ndim != 2:
        raise InputError(f"{path}: GTcls.Segmentation has shape {seg.shape}; expected (height, width)")
    return seg.astype(np.uint8)


def _read_list(path: str) -> list[str]:
    common.require_files([path], "image-list file", os.path.dirname(path))
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


class VocSbd(common.ArrayRecordBuilder):
    """PASCAL VOC 2012 semantic segmentation, optionally with the SBD training annotations."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        VocSbdConfig(name="voc", use_sbd=False, description="VOC 2012 train (1,464) / val (1,449)."),
        VocSbdConfig(name="aug", use_sbd=True, description="trainaug (10,582) = VOC train + SBD - VOC val; VOC val."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the extracted archives in manual_dir:
      VOCtrainval_11-May-2012.tar               -> <manual_dir>/VOCdevkit/VOC2012/
      SBD benchmark.tgz (only for voc_sbd/aug) -> <manual_dir>/benchmark_RELEASE/dataset/
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=common.segmentation_features(),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        voc = os.path.join(root, "VOCdevkit", "VOC2012")
        lists = os.path.join(voc, "ImageSets", "Segmentation")
        voc_train, voc_val = _read_list(os.path.join(lists, "train.txt")), _read_list(os.path.join(lists, "val.txt"))

        def voc_item(i):
            return i, os.path.join(voc, "JPEGImages", i + ".jpg"), os.path.join(voc, "SegmentationClass", i + ".png")

        train = [voc_item(i) for i in voc_train]
        if self.builder_config.use_sbd:
            sbd = os.path.join(root, "benchmark_RELEASE", "dataset")
            sbd_ids = set(_read_list(os.path.join(sbd, "train.txt"))) | set(_read_list(os.path.join(sbd, "val.txt")))
            extra = sorted(sbd_ids - set(voc_train) - set(voc_val))
            train += [(i, os.path.join(sbd, "img", i + ".jpg"), os.path.join(sbd, "cls", i + ".mat")) for i in extra]
            train.sort()
        val = [voc_item(i) for i in voc_val]
        for name, items in (("train", train), ("validation", val)):
            for kind, col in (("images", 1), ("label files", 2)):
                paths = [it[col] for it in items]
                where = ", ".join(sorted({os.path.dirname(p) for p in paths}))
                common.require_files(paths, f"{name} {kind}", where, hint=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {"train": self._generate_examples(train), "validation": self._generate_examples(val)}

    def _generate_examples(self, items):
        for image_id, image_path, label_path in items:
            if label_path.endswith(".mat"):
                mask = read_sbd_mat(label_path)
            else:
                mask = common.read_index_png(label_path, label_path)
            common.check_values(mask, _LABELS, label_path)
            with open(image_path, "rb") as f:
                image = f.read()
            height, width = common.image_size(image, image_path, "a JPEG image")
            if mask.shape != (height, width):
                raise InputError(f"{label_path}: label is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                                 f"{width}x{height} (width x height)")
            # The JPEG bytes are stored as they are; the mask as a single-channel PNG of its indices.
            yield image_id, {"image": image, "label": common.mask_image(mask), "image_id": image_id}
