"""Tiny raw datasets in the real on-disk formats, written by the tests: a VOCdevkit + SBD tree and a pair of
Cityscapes zips. Each writer returns what it wrote, so tests compare the built dataset with the source."""

from __future__ import annotations

import io
import json
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


CITYSCAPES_EXTRA = ["augsburg_000000_000000", "augsburg_000000_000001", "konstanz_000000_000022"]


def write_cityscapes_coarse_zips(root: str, seed: int = 0) -> dict:
    """Writes the zips of `write_cityscapes_zips`, leftImg8bit_trainextra.zip and gtCoarse.zip (coarse labels of the
    train, val and train_extra images, each holding all 34 label ids, none equal to the fine ones). Returns
    {'images': {id: array}, 'label_ids': {id: coarse mask}, 'fine_label_ids': {id: fine mask}}."""
    fine = write_cityscapes_zips(root, seed)
    rng = np.random.default_rng(seed + 1)
    images, label_ids = dict(fine["images"]), {}
    with zipfile.ZipFile(os.path.join(root, "leftImg8bit_trainextra.zip"), "w") as ze, \
            zipfile.ZipFile(os.path.join(root, "gtCoarse.zip"), "w") as zl:
        ze.writestr("README", "fixture")
        for split, ids in (("train", CITYSCAPES_SPLITS["train"]), ("val", CITYSCAPES_SPLITS["val"]),
                           ("train_extra", CITYSCAPES_EXTRA)):
            for image_id in ids:
                city = image_id.split("_")[0]
                if split == "train_extra":
                    images[image_id] = img = rng.integers(0, 256, (10, 36 + len(label_ids), 3), dtype=np.uint8)
                    ze.writestr(f"leftImg8bit/train_extra/{city}/{image_id}_leftImg8bit.png", _png(img))
                h, w = images[image_id].shape[:2]
                ids_mask = rng.integers(0, 34, (h, w), dtype=np.uint8)
                ids_mask[0, :34] = np.arange(34)[::-1]  # every label id at least once, not where the fine ones are
                label_ids[image_id] = ids_mask
                prefix = f"gtCoarse/{split}/{city}/{image_id}_gtCoarse"
                zl.writestr(prefix + "_labelIds.png", _png(ids_mask))
                zl.writestr(prefix + "_color.png", _png(images[image_id]))
                zl.writestr(prefix + "_polygons.json", "{}")
    return {"images": images, "label_ids": label_ids, "fine_label_ids": fine["label_ids"]}


# COCO 2017: category ids and names as in instances_*2017.json (the 20 that are VOC classes and four that are not).
COCO_CATEGORIES = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
                   9: "boat", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 44: "bottle",
                   62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 72: "tv",
                   73: "laptop", 84: "book", 90: "toothbrush"}
COCO_VOC_CATEGORY_IDS = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a bool mask: run lengths down the columns (Fortran order), zeros first."""
    flat = np.asarray(mask, np.int8).flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0] + counts if flat[0] else counts


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string: 5 bits a character (+48), a continuation bit, each count after the second
    written as the difference to the count two before."""
    out = []
    for i, count in enumerate(counts):
        x, more = count - counts[i - 2] if i > 2 else count, True
        while more:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def _coco_train_images() -> list[tuple[int, int, int, list[dict]]]:
    """(image id, height, width, annotations without ids) of the train2017 fixture."""
    crowd = np.zeros((24, 32), bool)
    crowd[12:24, 0:13] = True  # over the table's lower left, the person's left edge and bare background
    many = [{"category_id": c, "segmentation": [_rect(1 + 8 * (i % 5), 1 + 7 * (i // 5), 4 + 8 * (i % 5),
                                                       4 + 7 * (i // 5))]} for i, c in enumerate(COCO_VOC_CATEGORY_IDS)]
    return [
        (9, 24, 32, [
            # An L-shaped dining table (344 px) under a person (160 px) and a laptop (24 px): both stay on top.
            {"category_id": 67, "segmentation": [[2, 4, 28, 4, 28, 20, 14, 20, 14, 14, 2, 14]]},
            {"category_id": 1, "segmentation": [_rect(10, 2, 18, 22)]},
            {"category_id": 73, "segmentation": [_rect(20, 6, 26, 10)]},
            {"category_id": 1, "iscrowd": 1, "segmentation": {"counts": rle_counts(crowd), "size": [24, 32]}},
            # A two-point polygon (no area; pycocotools would read its 4 numbers as a box) and two parts.
            {"category_id": 2, "segmentation": [[5, 5, 9, 9], _rect(0, 0, 3, 2), _rect(29, 21, 32, 24)]},
        ]),
        (25, 20, 28, [
            {"category_id": 3, "segmentation": {"counts": rle_string(rle_counts(_disc(20, 28, 9, 10, 5))),
                                                "size": [20, 28]}},
            {"category_id": 5, "segmentation": {"counts": rle_counts(_disc(20, 28, 10, 12, 8)), "size": [20, 28]}},
            {"category_id": 84, "iscrowd": 1, "segmentation": [_rect(22, 0, 28, 6)]},  # not VOC: background
            {"category_id": 72, "segmentation": {"counts": rle_string(rle_counts(_disc(20, 28, 16, 24, 4.5))),
                                                 "size": [20, 28]}},
        ]),
        (30, 16, 18, [  # a bed and a crowd of people, no single VOC instance: left out
            {"category_id": 65, "segmentation": [_rect(0, 0, 10, 10)]},
            {"category_id": 1, "iscrowd": 1, "segmentation": {"counts": [100, 50, 138], "size": [16, 18]}},
        ]),
        (34, 18, 16, []),  # no annotation at all: left out
        (36, 30, 40, many),  # each of the 20 VOC categories once
    ]


def _coco_val_images() -> list[tuple[int, int, int, list[dict]]]:
    return [
        (139, 22, 26, [
            {"category_id": 63, "segmentation": [_rect(1, 8, 25, 21)]},
            {"category_id": 4, "segmentation": [[3, 3, 12, 3, 12, 12, 8, 12, 8, 18, 3, 18]]},
            {"category_id": 64, "segmentation": [_rect(18, 2, 24, 14)]},
        ]),
        (285, 14, 15, [{"category_id": 73, "segmentation": [_rect(2, 2, 9, 9)]}]),  # a laptop only: left out
    ]


def write_coco(root: str, seed: int = 0) -> dict:
    """Writes <root>/{train2017, val2017, annotations/instances_{train,val}2017.json} as COCO 2017 lays them out.
    Returns {'images': {file stem: array as PIL decodes the JPEG}, 'json': {'train2017': dict, 'val2017': dict}}."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, written, next_id = {}, {}, 1000
    for folder, entries in (("train2017", _coco_train_images()), ("val2017", _coco_val_images())):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        data = {"info": {"description": "fixture"}, "licenses": [], "images": [], "annotations": [],
                "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in COCO_CATEGORIES.items()]}
        for image_id, h, w, records in entries:
            file_name = f"{image_id:012d}.jpg"
            jpeg = _jpeg(_image(rng, h, w))
            with open(os.path.join(root, folder, file_name), "wb") as f:
                f.write(jpeg)
            images[file_name[:-4]] = np.asarray(Image.open(io.BytesIO(jpeg)))
            data["images"].append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            for annotation in records:
                next_id += 1
                data["annotations"].append({"id": next_id, "image_id": image_id, "iscrowd": 0, **annotation})
        with open(os.path.join(root, "annotations", f"instances_{folder}.json"), "w") as f:
            json.dump(data, f)
        written[folder] = data
    return {"images": images, "json": written}
