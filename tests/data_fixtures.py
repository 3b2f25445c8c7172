"""Tiny raw datasets in the real on-disk formats, written by the tests: a VOCdevkit + SBD tree and a pair of
Cityscapes zips. Each writer returns what it wrote, so tests compare the built dataset with the source."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import scipy.io
from PIL import Image

from gcn_jax.labels import palette_image

# VOC ids: a* in VOC train, v* in VOC val, s* only in SBD. SBD lists overlap VOC train and VOC val on purpose.
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000002"]
VOC_VAL = ["2007_000033", "2009_000001"]
SBD_TRAIN = ["2007_000032", "2008_000100", "2008_000101", "2007_000033"]  # one VOC train, one VOC val id
SBD_VAL = ["2008_000102", "2007_000039", "2009_000001"]  # one VOC train, one VOC val id
# The trainaug rule, (VOC train | SBD train | SBD val) - VOC val, worked out by hand:
AUG_TRAIN = ["2007_000032", "2007_000039", "2008_000002", "2008_000100", "2008_000101", "2008_000102"]


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # Smooth content (JPEG keeps it close), different per image.
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    return ((base + 40 * np.sin(xx / 3.0 + rng.uniform(0, 6))[..., None] + yy[..., None]) % 256).astype(np.uint8)


def _voc_mask(rng: np.random.Generator, h: int, w: int, with_ignore: bool) -> np.ndarray:
    """Background 0, a few rectangles of random VOC classes, and (VOC style) a 255 band around one of them."""
    mask = np.zeros((h, w), np.uint8)
    for cls in rng.choice(np.arange(1, 21), size=3, replace=False):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        mask[y:y + rng.integers(3, h - y + 1), x:x + rng.integers(3, w - x + 1)] = cls
    if with_ignore:
        mask[0, :] = 255
        mask[:, -1] = 255
    return mask


def write_voc_sbd(root: str, seed: int = 0) -> dict:
    """Writes <root>/VOCdevkit/VOC2012 and <root>/benchmark_RELEASE/dataset. Returns {'images': {id: array},
    'voc_masks': {id: mask}, 'sbd_masks': {id: mask}}; the images as PIL decodes the JPEG files written."""
    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    sbd = os.path.join(root, "benchmark_RELEASE", "dataset")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    for d in ("img", "cls"):
        os.makedirs(os.path.join(sbd, d), exist_ok=True)
    images, voc_masks, sbd_masks = {}, {}, {}
    all_ids = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    for i, image_id in enumerate(all_ids):
        h, w = 20 + 2 * i, 31 - i  # every image its own size, neither square nor even
        img = _image(rng, h, w)
        images[image_id] = np.asarray(Image.open(io.BytesIO(_jpeg(img))))
        if image_id in VOC_TRAIN + VOC_VAL:
            with open(os.path.join(voc, "JPEGImages", image_id + ".jpg"), "wb") as f:
                f.write(_jpeg(img))
            voc_masks[image_id] = m = _voc_mask(rng, h, w, with_ignore=True)
            palette_image(m).save(os.path.join(voc, "SegmentationClass", image_id + ".png"))
        if image_id in SBD_TRAIN + SBD_VAL:
            with open(os.path.join(sbd, "img", image_id + ".jpg"), "wb") as f:
                f.write(_jpeg(img))
            sbd_masks[image_id] = m = _voc_mask(rng, h, w, with_ignore=False)
            # SBD's layout: a struct GTcls with Segmentation, Boundaries and CategoriesPresent.
            boundaries = np.empty((20, 1), object)  # a cell array of per-class edge maps
            for c in range(20):
                boundaries[c, 0] = np.zeros((h, w), np.uint8)
            gt = {"Segmentation": m, "Boundaries": boundaries,
                  "CategoriesPresent": np.unique(m[m > 0]).astype(np.uint8)}
            scipy.io.savemat(os.path.join(sbd, "cls", image_id + ".mat"), {"GTcls": gt})
    for path, ids in ((os.path.join(voc, "ImageSets/Segmentation/train.txt"), VOC_TRAIN),
                      (os.path.join(voc, "ImageSets/Segmentation/val.txt"), VOC_VAL),
                      (os.path.join(sbd, "train.txt"), SBD_TRAIN), (os.path.join(sbd, "val.txt"), SBD_VAL)):
        with open(path, "w") as f:
            f.write("\n".join(ids) + "\n")
    return {"images": images, "voc_masks": voc_masks, "sbd_masks": sbd_masks}


CITYSCAPES_SPLITS = {"train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
                     "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
                     "test": ["berlin_000000_000019"]}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_cityscapes_zips(root: str, seed: int = 0) -> dict:
    """Writes leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip. Every train image's label holds all 34
    label ids (0-33). Returns {'images': {id: array}, 'label_ids': {id: mask}}. The zips also hold the other
    gtFine files (color, instanceIds, polygons) that a builder must skip."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    images, label_ids = {}, {}
    with zipfile.ZipFile(os.path.join(root, "leftImg8bit_trainvaltest.zip"), "w") as zi, \
            zipfile.ZipFile(os.path.join(root, "gtFine_trainvaltest.zip"), "w") as zl:
        zi.writestr("README", "fixture")
        zl.writestr("license.txt", "fixture")
        for split, ids in CITYSCAPES_SPLITS.items():
            for image_id in ids:
                city = image_id.split("_")[0]
                h, w = 12, 34 + len(images)
                images[image_id] = img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ids_mask = rng.integers(0, 34, (h, w), dtype=np.uint8)
                ids_mask[0, :34] = np.arange(34)  # every label id at least once
                label_ids[image_id] = ids_mask
                zi.writestr(f"leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png", _png(img))
                prefix = f"gtFine/{split}/{city}/{image_id}_gtFine"
                zl.writestr(prefix + "_labelIds.png", _png(ids_mask))
                zl.writestr(prefix + "_color.png", _png(img))
                zl.writestr(prefix + "_instanceIds.png", _png(ids_mask.astype(np.uint16) * 1000))
                zl.writestr(prefix + "_polygons.json", "{}")
    return {"images": images, "label_ids": label_ids}
