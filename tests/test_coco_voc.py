"""The coco_voc builder on a COCO 2017 fixture tree: which images it keeps, masks equal to an independent
rasterisation (polygons, both RLE forms, crowd regions, overlaps), and errors that name the file at fault."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gcn_jax.data import coco_voc, common
from gcn_jax.data.build import build
from gcn_jax.data.datasets import dataset_spec, load_source
from gcn_jax.errors import InputError
from tests import data_fixtures as fx

# COCO category id -> VOC class id, written out by hand from the two lists of names.
VOC_OF_COCO = {1: 15, 2: 2, 3: 7, 4: 14, 5: 1, 6: 6, 7: 19, 9: 4, 16: 3, 17: 8, 18: 12, 19: 13, 20: 17, 21: 10,
               44: 5, 62: 9, 63: 18, 64: 16, 67: 11, 72: 20}


def _polygon(xy: list, h: int, w: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (even-odd crossings of a ray to the left): exact for polygons
    with integer corners, whose edges pass through no pixel centre."""
    xs, ys = np.asarray(xy[0::2], float), np.asarray(xy[1::2], float)
    cy, cx = np.mgrid[0:h, 0:w] + 0.5
    inside = np.zeros((h, w), bool)
    for i in range(len(xs)):
        x0, y0, x1, y1 = xs[i], ys[i], xs[(i + 1) % len(xs)], ys[(i + 1) % len(xs)]
        if y0 != y1:
            inside ^= ((y0 > cy) != (y1 > cy)) & (cx < x0 + (cy - y0) * (x1 - x0) / (y1 - y0))
    return inside


def _runs(counts: list[int], h: int, w: int) -> np.ndarray:
    """Alternating runs of 0 and 1 down the columns."""
    return np.repeat(np.arange(len(counts)) % 2, counts).reshape(w, h).T.astype(bool)


def _string_counts(s: str) -> list[int]:
    counts = []
    for group in re.findall(r"[P-o]*[0-O]", s):  # characters 48-79 end a count, 80-111 continue it
        x = sum(((ord(c) - 48) & 0x1F) << (5 * k) for k, c in enumerate(group))
        if (ord(group[-1]) - 48) & 0x10:
            x -= 1 << (5 * len(group))
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


def _region(segmentation, h: int, w: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return np.any([_polygon(p, h, w) for p in segmentation if len(p) >= 6] or [np.zeros((h, w), bool)], axis=0)
    counts = segmentation["counts"]
    return _runs(counts if isinstance(counts, list) else _string_counts(counts), h, w)


def _expected(data: dict, image: dict) -> np.ndarray:
    """VOC mask by the documented rule: crowd regions of VOC classes 255, then instances, largest first."""
    h, w = image["height"], image["width"]
    mask = np.zeros((h, w), np.uint8)
    annotations = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    for a in annotations:
        if a["iscrowd"] and a["category_id"] in VOC_OF_COCO:
            mask[_region(a["segmentation"], h, w)] = 255
    instances = [(a, _region(a["segmentation"], h, w)) for a in annotations if not a["iscrowd"]]
    for a, region in sorted(instances, key=lambda ar: (-ar[1].sum(), ar[0]["id"])):
        mask[region] = VOC_OF_COCO.get(a["category_id"], 0)
    return mask


def _by_id(source) -> dict:
    return {ex["image_id"].decode(): ex for ex in (source[i] for i in range(len(source)))}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco_raw"))
    return root, fx.write_coco(root)


@pytest.fixture(scope="module")
def coco_built(coco_root, tmp_path_factory):
    root, written = coco_root
    data_dir = str(tmp_path_factory.mktemp("coco_tfds"))
    build("coco_voc", manual_dir=root, data_dir=data_dir)
    return data_dir, written


def test_category_names_map_to_voc_classes():
    assert coco_voc.COCO_TO_VOC == {fx.COCO_CATEGORIES[c]: v for c, v in VOC_OF_COCO.items()}
    assert dataset_spec("coco_voc").num_classes == 21 and dataset_spec("coco_voc").class_names[20] == "tvmonitor"


def test_only_images_with_a_non_crowd_voc_instance_are_kept(coco_built):
    data_dir, _ = coco_built
    src = tfds.builder("coco_voc", data_dir=data_dir).as_data_source()
    # Left out: 30 (a bed and a crowd of people), 34 (no annotation), 285 (a laptop).
    assert sorted(_by_id(src["train"])) == ["000000000009", "000000000025", "000000000036"]
    assert sorted(_by_id(src["validation"])) == ["000000000139"]
    assert len(load_source("coco_voc", "train", data_dir)) == 3


def test_masks_equal_an_independent_rasterisation(coco_built):
    data_dir, written = coco_built
    src = tfds.builder("coco_voc", data_dir=data_dir).as_data_source()
    for split, folder in (("train", "train2017"), ("validation", "val2017")):
        data = written["json"][folder]
        for image_id, ex in _by_id(src[split]).items():
            (image,) = [im for im in data["images"] if im["file_name"] == image_id + ".jpg"]
            np.testing.assert_array_equal(ex["label"][..., 0], _expected(data, image), err_msg=image_id)
            np.testing.assert_allclose(ex["image"], written["images"][image_id], atol=2)


def test_overlaps_and_crowd_regions_follow_the_documented_rule(coco_built):
    data_dir, _ = coco_built
    train = _by_id(tfds.builder("coco_voc", data_dir=data_dir).as_data_source()["train"])
    table_scene = train["000000000009"]["label"][..., 0]  # (row, column) below
    assert table_scene[8, 12] == 15  # the person, smaller, on the dining table
    assert table_scene[8, 22] == 0  # the laptop (no VOC class) on the table
    assert table_scene[6, 5] == 11 and table_scene[13, 4] == 11  # the table, also where the crowd overlaps it
    assert table_scene[18, 4] == 255 and table_scene[16, 11] == 15  # the crowd of people; a person inside it
    assert table_scene[1, 1] == 2 and table_scene[22, 30] == 2  # both parts of the bicycle
    assert np.sum(table_scene == 2) == 3 * 2 + 3 * 3  # and nothing of the two-point polygon
    discs = train["000000000025"]["label"][..., 0]
    assert discs[9, 10] == 7 and discs[10, 18] == 1  # the car (compressed RLE) on the larger aeroplane
    assert discs[16, 24] == 20 and discs[2, 24] == 0  # the tv; a crowd of books is background, not ignored
    grid = train["000000000036"]["label"][..., 0]
    assert [grid[2 + 7 * (i // 5), 2 + 8 * (i % 5)] for i in range(20)] == [
        VOC_OF_COCO[c] for c in fx.COCO_VOC_CATEGORY_IDS]
    assert sorted(np.unique(grid)) == list(range(21))


def _broken_copy(root: str, tmp_path) -> str:
    broken = str(tmp_path / "raw")
    shutil.copytree(root, broken)
    return broken


def _edit_val_json(root: str, edit) -> str:
    path = os.path.join(root, "annotations", "instances_val2017.json")
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _set(key, value, index=0):
    return lambda data: data["annotations"][index].update({key: value})


@pytest.mark.parametrize("edit, expected", [
    (_set("image_id", 4242), ": names image 4242, which is not in the file's images"),
    (_set("category_id", 999), ": names category 999, which is not in the file's categories"),
    (_set("segmentation", [[1, 2, 3, 4, 5, 6, 7]]), " \\(image 139\\): cannot decode this polygon segmentation"),
    (_set("segmentation", {"counts": [10, 20], "size": [22, 26]}),
     " \\(image 139\\): cannot decode this RLE segmentation.*summing to 22 x 26 = 572 pixels"),
    (_set("segmentation", {"counts": "0a", "size": [22, 26]}),  # the second count's continuation is cut off
     " \\(image 139\\): cannot decode this RLE segmentation"),
    (_set("segmentation", {"counts": [572], "size": [26, 22]}),
     " \\(image 139\\): RLE size \\[26, 22\\] is not the image's \\[height, width\\] \\[22, 26\\]"),
    (_set("segmentation", "3 4"), ": expected a field 'segmentation' of type list or dict, got '3 4'"),
])
def test_malformed_annotation_is_named_with_its_file_and_id(coco_root, tmp_path, edit, expected):
    root, written = coco_root
    first = written["json"]["val2017"]["annotations"][0]  # of image 139, 22 x 26
    broken = _broken_copy(root, tmp_path)
    path = _edit_val_json(broken, edit)
    with pytest.raises(InputError, match=f"^{re.escape(path)}: annotation {first['id']}{expected}"):
        build("coco_voc", manual_dir=broken, data_dir=str(tmp_path / "out"))
    assert not tfds.builder("coco_voc", data_dir=str(tmp_path / "out")).is_prepared()


def test_missing_or_unparsable_annotation_file_is_named(coco_root, tmp_path):
    broken = _broken_copy(coco_root[0], tmp_path)
    path = os.path.join(broken, "annotations", "instances_val2017.json")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"^{re.escape(path)}: cannot parse this JSON file"):
        build("coco_voc", manual_dir=broken, data_dir=str(tmp_path / "out"))
    os.remove(path)
    with pytest.raises(common.MissingFilesError, match=f"1 of 2 COCO annotation files missing.*\n  {re.escape(path)}"):
        build("coco_voc", manual_dir=broken, data_dir=str(tmp_path / "out"))


def test_missing_damaged_or_resized_image_is_named(coco_root, tmp_path):
    broken = _broken_copy(coco_root[0], tmp_path)
    jpeg = os.path.join(broken, "train2017", "000000000025.jpg")
    with open(jpeg, "rb") as f:
        data = f.read()
    with open(jpeg, "wb") as f:
        f.write(data[: len(data) * 9 // 10])
    with pytest.raises(InputError, match=f"^{re.escape(jpeg)}: cannot decode this file.*a JPEG image"):
        build("coco_voc", manual_dir=broken, data_dir=str(tmp_path / "out"))
    os.remove(jpeg)
    with pytest.raises(common.MissingFilesError, match=f"(?s)1 of 3 images of instances_train2017.json missing.*"
                                                       f"{re.escape(jpeg)}"):
        build("coco_voc", manual_dir=broken, data_dir=str(tmp_path / "out"))
    shutil.copy(os.path.join(broken, "train2017", "000000000009.jpg"), jpeg)  # 24 x 32, not 20 x 28
    with pytest.raises(InputError, match=f"^{re.escape(jpeg)}: image is \\(24, 32\\) but .*instances_train2017"
                                         r"\.json gives image 25 \(20, 28\)"):
        build("coco_voc", manual_dir=broken, data_dir=str(tmp_path / "out"))
