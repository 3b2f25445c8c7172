"""Cityscapes fine annotations (`cityscapes_fine`), read straight from the two official zips, without TensorFlow.

tfds's own `cityscapes/semantic_segmentation` builder reads the same zips but lists and checks files with
`tf.io.gfile`, so it cannot be built where TensorFlow is not installed (and tfds's default tfrecord output
needs TensorFlow to write). This builder stores the same content: the left 8-bit images and the **label ids**
(0-33) of `*_gtFine_labelIds.png`; the 19 train ids are applied in the input pipeline (`TRAIN_ID_LUT`), so
the stored dataset stays the official one.

    <manual_dir>/leftImg8bit_trainvaltest.zip   leftImg8bit/{train,val,test}/<city>/<id>_leftImg8bit.png
    <manual_dir>/gtFine_trainvaltest.zip        gtFine/{train,val,test}/<city>/<id>_gtFine_labelIds.png

Splits: train 2,975, validation 500, test 1,525 (test labels are not public; the zip's test masks are
placeholders).
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib

import numpy as np
import tensorflow_datasets as tfds

from gcn_jax.data import common
from gcn_jax.errors import InputError
from gcn_jax.labels import CITYSCAPES_LABEL_TO_TRAIN_ID, IGNORE_LABEL

IMAGES_ZIP = "leftImg8bit_trainvaltest.zip"
LABELS_ZIP = "gtFine_trainvaltest.zip"

# label id -> train id (the Cityscapes benchmark's 19 evaluated classes); every other id -> 255.
TRAIN_ID_LUT = np.full(256, IGNORE_LABEL, np.uint8)
for _label_id, _train_id in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
    TRAIN_ID_LUT[_label_id] = _train_id
NUM_CLASSES = 19
CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")

_IMAGE_RE = re.compile(r"^leftImg8bit/(train|val|test)/([^/]+)/([^/]+)_leftImg8bit\.png$")
_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def _image_members(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """{split: [(image_id, member name), ...]} for the left images in the zip, sorted by id."""
    found: dict[str, list[tuple[str, str]]] = {s: [] for s in _SPLITS.values()}
    for name in names:
        m = _IMAGE_RE.match(name)
        if m:
            found[m.group(1)].append((m.group(3), name))
    return {s: sorted(v) for s, v in found.items()}


class CityscapesFine(common.ArrayRecordBuilder):
    """Cityscapes left images with their fine label-id masks (values 0-33)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download {IMAGES_ZIP} and {LABELS_ZIP} from https://www.cityscapes-dataset.com/downloads/
    (registration needed) and put both zips, unextracted, in manual_dir.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=common.segmentation_features("png"), homepage="https://www.cityscapes-dataset.com"
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        zips = [os.path.join(root, IMAGES_ZIP), os.path.join(root, LABELS_ZIP)]
        common.require_files(zips, "Cityscapes zip files", root, hint=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        with _open_zip(zips[0]) as zi, _open_zip(zips[1]) as zl:
            images = _image_members(zi.namelist())
            labels = set(zl.namelist())
        if not any(images.values()):
            raise common.MissingFilesError(f"{zips[0]} has no leftImg8bit/<split>/<city>/*_leftImg8bit.png files")
        splits = {}
        for split, folder in _SPLITS.items():
            items = [(image_id, member, f"gtFine/{folder}/{member.split('/')[2]}/{image_id}_gtFine_labelIds.png")
                     for image_id, member in images[folder]]
            missing = [lab for _, _, lab in items if lab not in labels]
            if missing:
                raise common.MissingFilesError(
                    f"{len(missing)} label files of the {split} split are missing from {zips[1]}, e.g. "
                    + ", ".join(missing[:5])
                )
            if items:
                splits[split] = self._generate_examples(zips[0], zips[1], items)
        return splits

    def _generate_examples(self, images_zip, labels_zip, items):
        with _open_zip(images_zip) as zi, _open_zip(labels_zip) as zl:
            for image_id, image_member, label_member in items:
                name = f"{labels_zip}:{label_member}"
                mask = common.read_index_png(_read_member(zl, labels_zip, label_member), name)
                image_name = f"{images_zip}:{image_member}"
                image = _read_member(zi, images_zip, image_member)
                size = common.image_size(image, image_name, "a PNG image")
                if mask.shape != size:
                    raise InputError(f"{name}: label is {mask.shape} but {image_name} is {size} (height, width)")
                yield image_id, {"image": image, "label": common.mask_image(mask), "image_id": image_id}


def _open_zip(path: str) -> zipfile.ZipFile:
    """``path`` opened as a zip file; an InputError naming it if it is not one (e.g. a truncated download, whose
    table of contents, at the end, is missing)."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise InputError(f"{path} is not a readable zip file ({e}); is it a truncated or damaged download? "
                         f"Download it again from https://www.cityscapes-dataset.com/downloads/") from e


def _read_member(archive: zipfile.ZipFile, path: str, member: str) -> bytes:
    """The bytes of ``member``; an InputError naming the zip file and member if they are damaged."""
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InputError(f"{path}:{member}: cannot be read from the zip file ({e}); the zip is damaged: download "
                         "it again from https://www.cityscapes-dataset.com/downloads/") from e
