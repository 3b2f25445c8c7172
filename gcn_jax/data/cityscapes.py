"""Cityscapes with fine (`cityscapes_fine`) or coarse (`cityscapes_coarse`) annotations, read straight from the
official zips, without TensorFlow.

tfds's own `cityscapes` builder reads the same zips but lists and checks files with `tf.io.gfile`, so it cannot be
built where TensorFlow is not installed (and tfds's default tfrecord output needs TensorFlow to write). These
builders store the same content: the left 8-bit images and the **label ids** (0-33) of `*_labelIds.png`; the 19
train ids are applied in the input pipeline (`TRAIN_ID_LUT`), so the stored dataset stays the official one.

    <manual_dir>/leftImg8bit_trainvaltest.zip   leftImg8bit/{train,val,test}/<city>/<id>_leftImg8bit.png
    <manual_dir>/gtFine_trainvaltest.zip        gtFine/{train,val,test}/<city>/<id>_gtFine_labelIds.png
    <manual_dir>/leftImg8bit_trainextra.zip     leftImg8bit/train_extra/<city>/<id>_leftImg8bit.png
    <manual_dir>/gtCoarse.zip                   gtCoarse/{train,train_extra,val}/<city>/<id>_gtCoarse_labelIds.png

`cityscapes_fine` (the first two zips): train 2,975, validation 500, test 1,525 (test labels are not public; the
zip's test masks are placeholders). `cityscapes_coarse` (all but gtFine): train 2,975 (the fine train images with
their coarse labels), train_extra 19,998, validation 500 (coarse labels of the fine validation images). The
paper's first Cityscapes stage, 22,973 images, is coarse train_extra + fine train.
"""

from __future__ import annotations

import contextlib
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
EXTRA_IMAGES_ZIP = "leftImg8bit_trainextra.zip"
COARSE_LABELS_ZIP = "gtCoarse.zip"

# label id -> train id (the Cityscapes benchmark's 19 evaluated classes); every other id -> 255.
TRAIN_ID_LUT = np.full(256, IGNORE_LABEL, np.uint8)
for _label_id, _train_id in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
    TRAIN_ID_LUT[_label_id] = _train_id
NUM_CLASSES = 19
CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")

_IMAGE_RE = re.compile(r"^leftImg8bit/([^/]+)/([^/]+)/([^/]+)_leftImg8bit\.png$")
_DOWNLOADS = "https://www.cityscapes-dataset.com/downloads/"


def _image_members(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """{folder: [(image_id, member name), ...]} for the left images in a zip (folders: train, val, test,
    train_extra), sorted by id."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        m = _IMAGE_RE.match(name)
        if m:
            found.setdefault(m.group(1), []).append((m.group(3), name))
    return {folder: sorted(v) for folder, v in found.items()}


def _labelled_splits(splits: dict[str, tuple[str, str]], labels_zip: str, kind: str) -> dict[str, list[tuple]]:
    """{split: [(image_id, images zip, image member, label member), ...]} for ``splits`` = {split: (images zip,
    folder)}; ``kind`` is gtFine or gtCoarse. A split whose folder holds no image is left out; an image without its
    label file, or an images zip without any of its folders, is a MissingFilesError."""
    with _open_zip(labels_zip) as zl:
        labels = set(zl.namelist())
    members = {}
    for images_zip in dict.fromkeys(z for z, _ in splits.values()):
        with _open_zip(images_zip) as zi:
            members[images_zip] = _image_members(zi.namelist())
        folders = sorted({f for z, f in splits.values() if z == images_zip})
        if not any(members[images_zip].get(f) for f in folders):
            raise common.MissingFilesError(f"{images_zip} has no leftImg8bit/<{'|'.join(folders)}>/<city>/"
                                           "*_leftImg8bit.png files")
    found = {}
    for split, (images_zip, folder) in splits.items():
        items = [(image_id, images_zip, member,
                  f"{kind}/{folder}/{member.split('/')[2]}/{image_id}_{kind}_labelIds.png")
                 for image_id, member in members[images_zip].get(folder, [])]
        missing = [item[3] for item in items if item[3] not in labels]
        if missing:
            raise common.MissingFilesError(f"{len(missing)} label files of the {split} split are missing from "
                                           f"{labels_zip}, e.g. " + ", ".join(missing[:5]))
        if items:
            found[split] = items
    return found


def _examples(labels_zip: str, items: list[tuple]):
    """(key, example) of each (image_id, images zip, image member, label member), every image and label decoded."""
    with contextlib.ExitStack() as stack:
        zl = stack.enter_context(_open_zip(labels_zip))
        image_zips = {z: stack.enter_context(_open_zip(z)) for z in dict.fromkeys(item[1] for item in items)}
        for image_id, images_zip, image_member, label_member in items:
            name = f"{labels_zip}:{label_member}"
            mask = common.read_index_png(_read_member(zl, labels_zip, label_member), name)
            image_name = f"{images_zip}:{image_member}"
            image = _read_member(image_zips[images_zip], images_zip, image_member)
            size = common.image_size(image, image_name, "a PNG image")
            if mask.shape != size:
                raise InputError(f"{name}: label is {mask.shape} but {image_name} is {size} (height, width)")
            yield image_id, {"image": image, "label": common.mask_image(mask), "image_id": image_id}


class _CityscapesZips(common.ArrayRecordBuilder):
    """What the two builders share: the features, and examples read from the zips (abstract: not registered)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=common.segmentation_features("png"), homepage="https://www.cityscapes-dataset.com"
        )

    def _generate_examples(self, labels_zip, items):
        return _examples(labels_zip, items)

    def _zips(self, dl_manager, *names: str) -> list[str]:
        """The paths of the zips ``names`` in manual_dir; a MissingFilesError naming those that are not there."""
        root = os.fspath(dl_manager.manual_dir)
        paths = [os.path.join(root, name) for name in names]
        common.require_files(paths, "Cityscapes zip files", root, hint=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return paths


class CityscapesFine(_CityscapesZips):
    """Cityscapes left images with their fine label-id masks (values 0-33)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download {IMAGES_ZIP} and {LABELS_ZIP} from {_DOWNLOADS}
    (registration needed) and put both zips, unextracted, in manual_dir.
    """

    def _split_generators(self, dl_manager):
        images, labels = self._zips(dl_manager, IMAGES_ZIP, LABELS_ZIP)
        splits = _labelled_splits({"train": (images, "train"), "validation": (images, "val"),
                                   "test": (images, "test")}, labels, "gtFine")
        return {split: self._generate_examples(labels, items) for split, items in splits.items()}


class CityscapesCoarse(_CityscapesZips):
    """Cityscapes left images with their coarse label-id masks (values 0-33), including the 19,998 train_extra
    images, which have only coarse labels."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download {COARSE_LABELS_ZIP}, {EXTRA_IMAGES_ZIP} and {IMAGES_ZIP} from {_DOWNLOADS}
    (registration needed) and put the three zips, unextracted, in manual_dir.
    """

    def _split_generators(self, dl_manager):
        images, extra, labels = self._zips(dl_manager, IMAGES_ZIP, EXTRA_IMAGES_ZIP, COARSE_LABELS_ZIP)
        splits = _labelled_splits({"train": (images, "train"), "train_extra": (extra, "train_extra"),
                                   "validation": (images, "val")}, labels, "gtCoarse")
        return {split: self._generate_examples(labels, items) for split, items in splits.items()}


def _open_zip(path: str) -> zipfile.ZipFile:
    """``path`` opened as a zip file; an InputError naming it if it is not one (e.g. a truncated download, whose
    table of contents, at the end, is missing)."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise InputError(f"{path} is not a readable zip file ({e}); is it a truncated or damaged download? "
                         f"Download it again from {_DOWNLOADS}") from e


def _read_member(archive: zipfile.ZipFile, path: str, member: str) -> bytes:
    """The bytes of ``member``; an InputError naming the zip file and member if they are damaged."""
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InputError(f"{path}:{member}: cannot be read from the zip file ({e}); the zip is damaged: download "
                         f"it again from {_DOWNLOADS}") from e
