"""COCO 2017 images that show PASCAL VOC's 20 classes, with masks in VOC's class ids (`coco_voc`): the extra data
of the paper's first VOC training stage (Table 7, stage 1).

manual_dir holds COCO 2017 as it extracts:

    <manual_dir>/train2017/<file_name>              <manual_dir>/annotations/instances_train2017.json
    <manual_dir>/val2017/<file_name>                <manual_dir>/annotations/instances_val2017.json

Splits: train (from train2017) and validation (from val2017), each holding only the images with at least one
non-crowd instance of a VOC class. COCO categories map to VOC classes by name (airplane -> aeroplane, motorcycle
-> motorbike, couch -> sofa, dining table -> diningtable, potted plant -> pottedplant, tv -> tvmonitor, the other
14 alike); the other 60 categories are background. Masks are painted from the instance segmentations (polygons,
compressed or uncompressed RLE, decoded by pycocotools), in this order:

1. background 0 everywhere;
2. crowd regions (iscrowd=1) of VOC classes: 255 (ignore): they hold objects of a VOC class no one outlined;
   crowd regions of other categories stay background;
3. every non-crowd instance, VOC class or not, the largest (in pixels) first, so smaller instances lying on top
   of larger ones stay visible; ties in annotation-id order. Instances of other categories paint 0, so an object
   of no VOC class in front of a VOC object is background there, as in VOC's own masks.

Polygons of fewer than 3 points enclose no pixel and are skipped. The image id is the file stem ('000000000139').
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from gcn_jax.data import common, voc_sbd
from gcn_jax.errors import InputError
from gcn_jax.labels import IGNORE_LABEL

NUM_CLASSES = voc_sbd.NUM_CLASSES
CLASS_NAMES = voc_sbd.CLASS_NAMES
_RENAMED = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa", "dining table": "diningtable",
            "potted plant": "pottedplant", "tv": "tvmonitor"}
_SAME_NAME = ("bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog", "horse", "person",
              "sheep", "train")
# COCO category name -> VOC class id (1-20); every other category is background (0).
COCO_TO_VOC = {coco: CLASS_NAMES.index(_RENAMED.get(coco, coco)) for coco in (*_RENAMED, *_SAME_NAME)}
_SPLITS = {"train": "train2017", "validation": "val2017"}


@dataclasses.dataclass(frozen=True)
class Instance:
    """One COCO annotation, reduced to what the mask needs."""

    annotation_id: int
    voc_class: int  # 0 for a category that is not a VOC class
    iscrowd: bool
    segmentation: list | dict


@dataclasses.dataclass
class CocoImage:
    image_id: int
    file_name: str
    height: int
    width: int
    instances: list[Instance] = dataclasses.field(default_factory=list)


def _field(record, key: str, types: type | tuple, where: str):
    """``record[key]``, which must be of ``types``; an InputError naming ``where`` otherwise."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, types) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise InputError(f"{where}: expected a field {key!r} of type {names}, got {str(value)[:80]!r}")
    return value


def load_annotations(path: str) -> dict:
    """The parsed instances_*.json; an InputError naming ``path`` if it is not COCO's layout."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot parse this JSON file ({e}); expected COCO's instance annotations. It may "
                         "be truncated or damaged: extract it again from annotations_trainval2017.zip") from e
    for key in ("images", "annotations", "categories"):
        _field(data, key, list, f"{path}: top level")
    return data


def _category_classes(data: dict, path: str) -> dict[int, int]:
    """{COCO category id: VOC class id or 0}."""
    classes = {}
    for category in data["categories"]:
        where = f"{path}: category {category.get('id') if isinstance(category, dict) else category!r}"
        classes[_field(category, "id", int, where)] = COCO_TO_VOC.get(_field(category, "name", str, where), 0)
    return classes


def index_images(data: dict, path: str) -> list[CocoImage]:
    """The images of ``data`` with at least one non-crowd instance of a VOC class, with all their instances, sorted
    by file name. An annotation naming an unknown image or category is an InputError naming it and ``path``."""
    classes = _category_classes(data, path)
    images: dict[int, CocoImage] = {}
    for record in data["images"]:
        where = f"{path}: image {record.get('id') if isinstance(record, dict) else record!r}"
        image = CocoImage(_field(record, "id", int, where), _field(record, "file_name", str, where),
                          _field(record, "height", int, where), _field(record, "width", int, where))
        if image.image_id in images:
            raise InputError(f"{where}: this image id is listed twice")
        images[image.image_id] = image
    for record in data["annotations"]:
        where = f"{path}: annotation {record.get('id') if isinstance(record, dict) else record!r}"
        image_id, category_id = _field(record, "image_id", int, where), _field(record, "category_id", int, where)
        if image_id not in images:
            raise InputError(f"{where}: names image {image_id}, which is not in the file's images")
        if category_id not in classes:
            raise InputError(f"{where}: names category {category_id}, which is not in the file's categories")
        iscrowd = record.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise InputError(f"{where}: iscrowd is {iscrowd!r}; expected 0 or 1")
        segmentation = _field(record, "segmentation", (list, dict), where)
        images[image_id].instances.append(Instance(_field(record, "id", int, where), classes[category_id],
                                                   bool(iscrowd), segmentation))
    chosen = [im for im in images.values() if any(i.voc_class and not i.iscrowd for i in im.instances)]
    return sorted(chosen, key=lambda im: im.file_name)


def _compressed_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' 6-bit LEB128-like code, each count after the
    second stored as the difference to the one two before), or None where the string is not one. Only used to
    check the runs before pycocotools decodes them: it does not check them itself."""
    runs, p = [], 0
    while p < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if p == len(counts) or not 48 <= ord(counts[p]) < 112:
                return None
            c = ord(counts[p]) - 48
            value |= (c & 0x1F) << shift
            more, p, shift = bool(c & 0x20), p + 1, shift + 5
            if not more and c & 0x10:
                value -= 1 << shift  # a negative difference
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def _rle(segmentation: dict, height: int, width: int, where: str) -> dict:
    """A run-length segmentation (counts as a list or a compressed string) checked against the image's size."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if size != [height, width]:
        raise InputError(f"{where}: RLE size {size!r} is not the image's [height, width] [{height}, {width}]")
    if isinstance(counts, list):
        runs = counts if all(isinstance(c, int) and not isinstance(c, bool) for c in counts) else None
    else:
        runs = _compressed_counts(counts) if isinstance(counts, str) else None
    if runs is None or min(runs, default=0) < 0 or max(runs, default=0) >= 2**32 or sum(runs) != height * width:
        raise InputError(f"{where}: cannot decode this RLE segmentation: its counts must be non-negative run "
                         f"lengths (a list, or COCO's compressed string) summing to {height} x {width} = "
                         f"{height * width} pixels; got {str(counts)[:80]!r}")
    if isinstance(counts, list):
        return _mask_api().frPyObjects(segmentation, height, width)
    return {"size": size, "counts": counts.encode("ascii")}


def _mask_api():
    """pycocotools' mask module, imported when a COCO segmentation is first decoded: reading other datasets (every
    command imports the builders) does not need pycocotools."""
    from pycocotools import mask

    return mask


def _polygons_rle(polygons: list, height: int, width: int, where: str) -> dict | None:
    """The union of polygons [x1, y1, x2, y2, ...] (pixel corners at integers) as one RLE; None where none has
    3 points (no area)."""
    kept = []
    for polygon in polygons:
        xy = np.asarray(polygon, float) if isinstance(polygon, list) else np.zeros(1)
        if xy.ndim != 1 or xy.size % 2 or not np.all(np.isfinite(xy)):
            raise InputError(f"{where}: cannot decode this polygon segmentation: expected lists of x, y "
                             f"coordinates, got {str(polygon)[:80]!r}")
        if xy.size >= 6:  # fewer than 3 points enclose no pixel (and pycocotools reads 4 numbers as a box)
            kept.append(xy.tolist())
    return _mask_api().merge(_mask_api().frPyObjects(kept, height, width)) if kept else None


def instance_mask(segmentation: list | dict, height: int, width: int, where: str) -> np.ndarray:
    """A COCO segmentation (polygons or RLE) as a (height, width) bool array."""
    to_rle = _polygons_rle if isinstance(segmentation, list) else _rle
    try:
        rle = to_rle(segmentation, height, width, where)
        return np.zeros((height, width), bool) if rle is None else _mask_api().decode(rle).astype(bool)
    except InputError:
        raise
    except (ValueError, TypeError, OverflowError) as e:  # what pycocotools raises on input the checks let through
        raise InputError(f"{where}: cannot decode this segmentation ({e})") from e


def label_mask(image: CocoImage, where: str) -> np.ndarray:
    """The (height, width) uint8 VOC mask of ``image``, painted as the module docstring says."""
    mask = np.zeros((image.height, image.width), np.uint8)
    painted = []
    for instance in image.instances:
        region = instance_mask(instance.segmentation, image.height, image.width,
                               f"{where}: annotation {instance.annotation_id} (image {image.image_id})")
        if instance.iscrowd:
            if instance.voc_class:
                mask[region] = IGNORE_LABEL
        else:
            painted.append((-int(region.sum()), instance.annotation_id, instance.voc_class, region))
    for _, _, voc_class, region in sorted(painted, key=lambda p: p[:2]):
        mask[region] = voc_class
    return mask


class CocoVoc(common.ArrayRecordBuilder):
    """COCO 2017 images with VOC classes, masks in VOC's 21 class ids (255 = crowd regions of VOC classes)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    From https://cocodataset.org/#download extract train2017.zip, val2017.zip and annotations_trainval2017.zip
    into manual_dir: <manual_dir>/{train2017, val2017, annotations/instances_{train,val}2017.json}.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=common.segmentation_features(),
                                              homepage="https://cocodataset.org")

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        json_paths = {s: os.path.join(root, "annotations", f"instances_{f}.json") for s, f in _SPLITS.items()}
        common.require_files(list(json_paths.values()), "COCO annotation files", os.path.join(root, "annotations"),
                             hint=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        common.require_files([os.path.join(root, f) for f in _SPLITS.values()], "COCO image folders", root,
                             hint=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        # Each split reads its JSON file when it is generated, so only one is in memory at a time.
        return {s: self._generate_examples(json_paths[s], os.path.join(root, f)) for s, f in _SPLITS.items()}

    def _generate_examples(self, json_path, image_dir):
        images = index_images(load_annotations(json_path), json_path)
        paths = [os.path.join(image_dir, image.file_name) for image in images]
        common.require_files(paths, f"images of {os.path.basename(json_path)}", image_dir,
                             hint=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        for image, path in zip(images, paths):
            with open(path, "rb") as f:
                data = f.read()
            size = common.image_size(data, path, "a JPEG image")
            if size != (image.height, image.width):
                raise InputError(f"{path}: image is {size} but {json_path} gives image {image.image_id} "
                                 f"({image.height}, {image.width}) (height, width)")
            image_id = os.path.splitext(os.path.basename(image.file_name))[0]
            mask = label_mask(image, json_path)
            yield image_id, {"image": data, "label": common.mask_image(mask), "image_id": image_id}
