"""The tfds builders on fixture files in the real formats: split rules, exact masks, ids, errors."""

import os
import re
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from gcn_jax import labels
from gcn_jax.data import cityscapes, common, synthetic
from gcn_jax.data.build import build, main
from gcn_jax.data.datasets import load_source
from gcn_jax.data.pipeline import eval_loader
from gcn_jax.errors import InputError
from tests import data_fixtures as fx


def _by_id(source) -> dict:
    return {ex["image_id"].decode(): ex for ex in (source[i] for i in range(len(source)))}


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("voc_raw"))
    return root, fx.write_voc_sbd(root)


@pytest.fixture(scope="module")
def voc_built(voc_root, tmp_path_factory):
    root, written = voc_root
    data_dir = str(tmp_path_factory.mktemp("voc_tfds"))
    for config in ("voc", "aug"):
        build(f"voc_sbd/{config}", manual_dir=root, data_dir=data_dir)
    return data_dir, written


def test_voc_splits_follow_the_lists(voc_built):
    data_dir, _ = voc_built
    src = tfds.builder("voc_sbd/voc", data_dir=data_dir).as_data_source()
    assert sorted(_by_id(src["train"])) == sorted(fx.VOC_TRAIN)
    assert sorted(_by_id(src["validation"])) == sorted(fx.VOC_VAL)


def test_aug_train_is_voc_train_plus_sbd_minus_voc_val(voc_built):
    data_dir, _ = voc_built
    src = tfds.builder("voc_sbd/aug", data_dir=data_dir).as_data_source()
    assert sorted(_by_id(src["train"])) == fx.AUG_TRAIN  # 6 of the 9 distinct ids; the VOC val ids are out
    assert sorted(_by_id(src["validation"])) == sorted(fx.VOC_VAL)


def test_masks_round_trip_exactly(voc_built):
    """Palette PNG indices (with 0, several classes and 255) and SBD .mat values come back unchanged; an image
    with a VOC annotation uses it, an SBD-only image its .mat."""
    data_dir, written = voc_built
    src = tfds.builder("voc_sbd/aug", data_dir=data_dir).as_data_source()
    seen_sources = set()
    for split in ("train", "validation"):
        for image_id, ex in _by_id(src[split]).items():
            if image_id in written["voc_masks"]:
                expected, seen_sources = written["voc_masks"][image_id], seen_sources | {"voc"}
                assert {0, 255} <= set(np.unique(expected).tolist()) and len(np.unique(expected)) >= 4
            else:
                expected, seen_sources = written["sbd_masks"][image_id], seen_sources | {"sbd"}
            assert ex["label"].dtype == np.uint8 and ex["label"].shape == expected.shape + (1,)
            np.testing.assert_array_equal(ex["label"][..., 0], expected, err_msg=image_id)
            image = ex["image"]
            assert image.shape == written["images"][image_id].shape and image.dtype == np.uint8
            # The JPEG bytes are stored as they are: decoders (OpenCV here, PIL in the fixture) agree within 1-2.
            np.testing.assert_allclose(image, written["images"][image_id], atol=2)
    assert seen_sources == {"voc", "sbd"}


def test_palette_png_is_read_as_indices_not_colours(tmp_path):
    mask = np.array([[0, 1, 15], [255, 20, 7]], np.uint8)
    labels.palette_image(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(common.read_index_png(str(tmp_path / "m.png"), "m.png"), mask)
    Image.fromarray(labels.colorize(mask)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png.*mode 'RGB'"):
        common.read_index_png(str(tmp_path / "rgb.png"), "rgb.png")


def test_missing_files_are_named_with_their_place(voc_root, tmp_path):
    root, _ = voc_root
    broken = str(tmp_path / "raw")
    shutil.copytree(root, broken)
    sbd_cls = os.path.join(broken, "benchmark_RELEASE", "dataset", "cls")
    os.remove(os.path.join(sbd_cls, "2008_000101.mat"))
    with pytest.raises(common.MissingFilesError, match=r"1 of 6 train label files missing.*" + sbd_cls):
        build("voc_sbd/aug", manual_dir=broken, data_dir=str(tmp_path / "out"))
    build("voc_sbd/voc", manual_dir=broken, data_dir=str(tmp_path / "out"))  # does not need SBD
    os.remove(os.path.join(broken, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "val.txt"))
    with pytest.raises(common.MissingFilesError, match=r"val\.txt"):
        build("voc_sbd/voc", manual_dir=broken, data_dir=str(tmp_path / "out2"))
    # The dataset built before the failures is still complete and readable.
    assert len(tfds.builder("voc_sbd/voc", data_dir=str(tmp_path / "out")).as_data_source()["train"]) == 3


def test_label_value_outside_the_classes_is_an_error(voc_root, tmp_path):
    root, written = voc_root
    broken = str(tmp_path / "raw")
    shutil.copytree(root, broken)
    image_id = fx.VOC_VAL[0]
    bad = written["voc_masks"][image_id].copy()
    bad[1, 1] = 37
    path = os.path.join(broken, "VOCdevkit", "VOC2012", "SegmentationClass", image_id + ".png")
    labels.palette_image(bad).save(path)
    with pytest.raises(ValueError, match=rf"{path}: label values \[37\]"):
        build("voc_sbd/voc", manual_dir=broken, data_dir=str(tmp_path / "out"))


def _damage(path: str, how: str) -> None:
    """Cuts the file at ``path`` short by a tenth (its header intact, as an interrupted download leaves it),
    replaces it with bytes of no known format, or empties it."""
    with open(path, "rb") as f:
        data = f.read()
    damaged = {"truncated": data[: len(data) * 9 // 10], "garbage": b"not an image or a MATLAB file " * 20,
               "empty": b""}
    with open(path, "wb") as f:
        f.write(damaged[how])


_SBD_ONLY = "2008_000101"  # in SBD train only: voc_sbd/aug reads its image and .mat


@pytest.mark.parametrize("config, file, how, expected", [
    ("voc", f"VOCdevkit/VOC2012/JPEGImages/{fx.VOC_VAL[0]}.jpg", "truncated", "cannot decode this file.*a JPEG image"),
    ("voc", f"VOCdevkit/VOC2012/JPEGImages/{fx.VOC_TRAIN[1]}.jpg", "empty", "cannot decode this file.*a JPEG image"),
    ("voc", f"VOCdevkit/VOC2012/SegmentationClass/{fx.VOC_TRAIN[0]}.png", "truncated",
     "cannot decode this label file.*a PNG of class indices"),
    ("voc", f"VOCdevkit/VOC2012/SegmentationClass/{fx.VOC_VAL[1]}.png", "garbage",
     "cannot decode this label file \\(not a PNG file\\)"),
    ("aug", f"benchmark_RELEASE/dataset/img/{_SBD_ONLY}.jpg", "truncated", "cannot decode this file.*a JPEG image"),
    ("aug", f"benchmark_RELEASE/dataset/cls/{_SBD_ONLY}.mat", "truncated", "cannot read this MATLAB file.*GTcls"),
    ("aug", f"benchmark_RELEASE/dataset/cls/{_SBD_ONLY}.mat", "garbage", "cannot read this MATLAB file.*GTcls"),
])
def test_damaged_voc_and_sbd_files_fail_the_build_naming_the_file(voc_root, tmp_path, config, file, how, expected):
    """Every image and label is decoded in full when the dataset is built: a truncated, empty or foreign file is
    refused then, naming it, and not when training first reads its record."""
    root, _ = voc_root
    broken = str(tmp_path / "raw")
    shutil.copytree(root, broken)
    path = os.path.join(broken, *file.split("/"))
    _damage(path, how)
    with pytest.raises(InputError, match=f"^{re.escape(path)}: {expected}"):
        build(f"voc_sbd/{config}", manual_dir=broken, data_dir=str(tmp_path / "out"))
    assert not tfds.builder(f"voc_sbd/{config}", data_dir=str(tmp_path / "out")).is_prepared()


def _changed_raw_copy(root: str, tmp_path, written: dict) -> tuple[str, str, np.ndarray]:
    """A copy of the raw files in which one VOC validation mask has other (valid) classes: (copy, that image's
    id, the new mask)."""
    raw = str(tmp_path / "raw")
    shutil.copytree(root, raw)
    image_id = fx.VOC_VAL[0]
    changed = written["voc_masks"][image_id].copy()
    changed[changed == 0] = 5
    labels.palette_image(changed).save(os.path.join(raw, "VOCdevkit", "VOC2012", "SegmentationClass",
                                                    image_id + ".png"))
    return raw, image_id, changed


def _stored_mask(data_dir: str, image_id: str) -> np.ndarray:
    validation = tfds.builder("voc_sbd/voc", data_dir=data_dir).as_data_source()["validation"]
    return _by_id(validation)[image_id]["label"][..., 0]


def test_a_second_build_says_that_nothing_was_rebuilt(voc_root, tmp_path, capsys):
    root, written = voc_root
    data_dir = str(tmp_path / "out")
    main(["voc_sbd/voc", "--manual_dir", root, "--data_dir", data_dir])
    built = capsys.readouterr()
    assert "voc_sbd/voc is ready" in built.out
    assert "examples/s" not in built.err  # no progress bars where stderr is not a terminal
    raw, image_id, _ = _changed_raw_copy(root, tmp_path, written)
    main(["voc_sbd/voc", "--manual_dir", raw, "--data_dir", data_dir])
    out = capsys.readouterr().out
    path = os.path.join(data_dir, "voc_sbd", "voc", "1.0.0")
    assert f"voc_sbd/voc: an existing build in {path} was kept (train: 3, validation: 2); nothing was rebuilt" in out
    assert "--overwrite" in out and f"delete {path}" in out and "is ready" not in out
    np.testing.assert_array_equal(_stored_mask(data_dir, image_id), written["voc_masks"][image_id])


def test_overwrite_replaces_a_build_only_once_the_new_one_is_complete(voc_root, tmp_path, capsys):
    root, written = voc_root
    data_dir = str(tmp_path / "out")
    build("voc_sbd/voc", manual_dir=root, data_dir=data_dir)
    raw, image_id, changed = _changed_raw_copy(root, tmp_path, written)
    jpeg = os.path.join(raw, "VOCdevkit", "VOC2012", "JPEGImages", fx.VOC_TRAIN[0] + ".jpg")
    shutil.copy(jpeg, str(tmp_path / "good.jpg"))
    _damage(jpeg, "truncated")
    with pytest.raises(SystemExit) as exited:
        main(["voc_sbd/voc", "--manual_dir", raw, "--data_dir", data_dir, "--overwrite"])
    assert exited.value.code == 2 and f"error: {jpeg}: cannot decode this file" in capsys.readouterr().err
    # The failed rebuild left the old build whole and readable, and no temporary folder behind.
    np.testing.assert_array_equal(_stored_mask(data_dir, image_id), written["voc_masks"][image_id])
    assert len(tfds.builder("voc_sbd/voc", data_dir=data_dir).as_data_source()["train"]) == 3
    assert not [n for n in os.listdir(data_dir) if n.startswith(".rebuild")]
    shutil.copy(str(tmp_path / "good.jpg"), jpeg)
    main(["voc_sbd/voc", "--manual_dir", raw, "--data_dir", data_dir, "--overwrite"])
    assert "voc_sbd/voc is ready" in capsys.readouterr().out
    np.testing.assert_array_equal(_stored_mask(data_dir, image_id), changed)
    assert not [n for n in os.listdir(data_dir) if n.startswith(".rebuild")]


def test_a_rebuild_killed_between_its_renames_loses_no_build(voc_root, tmp_path, capsys):
    root, written = voc_root
    data_dir = str(tmp_path / "out")
    build("voc_sbd/voc", manual_dir=root, data_dir=data_dir)
    final = os.path.join(data_dir, "voc_sbd", "voc", "1.0.0")
    staging = os.path.join(data_dir, ".rebuild-killed")  # as --overwrite leaves it, killed after its first rename
    os.makedirs(staging)
    with open(os.path.join(staging, "target"), "w") as f:
        f.write(final)
    os.rename(final, os.path.join(staging, "previous"))
    main(["voc_sbd/voc", "--manual_dir", root, "--data_dir", data_dir])
    out = capsys.readouterr().out
    assert f"put back the build {final}, which an interrupted --overwrite had left in {staging}/previous" in out
    assert "an existing build in" in out and "was kept" in out  # not built again
    image_id = fx.VOC_VAL[0]
    np.testing.assert_array_equal(_stored_mask(data_dir, image_id), written["voc_masks"][image_id])
    assert not os.path.exists(staging)


def test_build_without_manual_dir_says_what_to_bring(tmp_path):
    with pytest.raises(ValueError, match="(?s)pass --manual_dir.*VOCdevkit"):
        build("voc_sbd/aug", data_dir=str(tmp_path))


# Cityscapes: label id -> train id, from the Cityscapes benchmark's table (written out here independently).
_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
              27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture(scope="module")
def cityscapes_built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cs_raw"))
    written = fx.write_cityscapes_zips(root)
    data_dir = str(tmp_path_factory.mktemp("cs_tfds"))
    build("cityscapes_fine", manual_dir=root, data_dir=data_dir)
    return data_dir, written


def test_cityscapes_builds_from_the_zips(cityscapes_built):
    data_dir, written = cityscapes_built
    src = tfds.builder("cityscapes_fine", data_dir=data_dir).as_data_source()
    for split, folder in (("train", "train"), ("validation", "val"), ("test", "test")):
        got = _by_id(src[split])
        assert sorted(got) == sorted(fx.CITYSCAPES_SPLITS[folder])
        for image_id, ex in got.items():
            np.testing.assert_array_equal(ex["image"], written["images"][image_id])  # PNG: lossless
            np.testing.assert_array_equal(ex["label"][..., 0], written["label_ids"][image_id])  # label ids kept


def _assert_pipeline_maps_label_ids_to_train_ids(name: str, src, label_ids: dict) -> None:
    """The evaluation loader of dataset ``name`` turns every label id of ``src``'s masks into its train id."""
    data = default.get_config().data
    data.update(name=name, eval_pad_size=(16, 48), worker_count=0)
    loader, _ = eval_loader(data, len(src), source=src, process_index=0, process_count=1)
    (batch,) = list(loader)
    checked = set()
    for row, index in enumerate(batch["index"]):
        ids = label_ids[src[int(index)]["image_id"].decode()]
        h, w = ids.shape
        got = batch["label"][row, :h, :w]
        for label_id in range(34):
            expected = _TRAIN_IDS.get(label_id, 255)
            assert np.all(got[ids == label_id] == expected), f"label id {label_id}"
            checked.add(label_id)
    assert checked == set(range(34))


def test_cityscapes_pipeline_maps_every_label_id_to_its_train_id(cityscapes_built):
    data_dir, written = cityscapes_built
    src = tfds.builder("cityscapes_fine", data_dir=data_dir).as_data_source()["train"]
    _assert_pipeline_maps_label_ids_to_train_ids("cityscapes_fine", src, written["label_ids"])


@pytest.mark.parametrize("zip_name", [cityscapes.IMAGES_ZIP, cityscapes.LABELS_ZIP])
def test_truncated_cityscapes_zip_is_named(tmp_path, zip_name):
    root = str(tmp_path / "raw")
    fx.write_cityscapes_zips(root)
    path = os.path.join(root, zip_name)
    _damage(path, "truncated")
    with pytest.raises(InputError, match=f"^{re.escape(path)} is not a readable zip file.*truncated or damaged"):
        build("cityscapes_fine", manual_dir=root, data_dir=str(tmp_path / "out"))


def _replace_member(zip_path: str, member: str, data: bytes) -> None:
    """Rewrites ``zip_path`` with ``member``'s bytes replaced by ``data``."""
    with zipfile.ZipFile(zip_path) as z:
        contents = {name: z.read(name) for name in z.namelist()}
    contents[member] = data
    with zipfile.ZipFile(zip_path, "w") as z:
        for name, content in contents.items():
            z.writestr(name, content)


_CS_ID = fx.CITYSCAPES_SPLITS["val"][1]
_CS_CITY = _CS_ID.split("_")[0]


@pytest.mark.parametrize("zip_name, member, expected", [
    (cityscapes.IMAGES_ZIP, f"leftImg8bit/val/{_CS_CITY}/{_CS_ID}_leftImg8bit.png",
     "cannot decode this file.*expected a PNG image"),
    (cityscapes.LABELS_ZIP, f"gtFine/val/{_CS_CITY}/{_CS_ID}_gtFine_labelIds.png",
     "cannot decode this label file.*a PNG of class indices"),
])
def test_truncated_cityscapes_member_is_named_with_its_zip(tmp_path, zip_name, member, expected):
    root = str(tmp_path / "raw")
    fx.write_cityscapes_zips(root)
    path = os.path.join(root, zip_name)
    with zipfile.ZipFile(path) as z:
        data = z.read(member)
    _replace_member(path, member, data[: len(data) * 9 // 10])
    with pytest.raises(InputError, match=f"^{re.escape(path)}:{re.escape(member)}: {expected}"):
        build("cityscapes_fine", manual_dir=root, data_dir=str(tmp_path / "out"))


def test_cityscapes_member_with_damaged_bytes_is_named_with_its_zip(tmp_path):
    """A zip whose table of contents is intact but whose member data is damaged (its CRC does not match)."""
    root = str(tmp_path / "raw")
    fx.write_cityscapes_zips(root)
    path = os.path.join(root, cityscapes.IMAGES_ZIP)
    member = f"leftImg8bit/train/aachen/{fx.CITYSCAPES_SPLITS['train'][0]}_leftImg8bit.png"
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    assert info.compress_type == zipfile.ZIP_STORED  # the fixture stores members as they are
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(InputError, match=f"^{re.escape(path)}:{re.escape(member)}: cannot be read.*CRC"):
        build("cityscapes_fine", manual_dir=root, data_dir=str(tmp_path / "out"))


@pytest.fixture(scope="module")
def cityscapes_coarse_built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cs_coarse_raw"))
    written = fx.write_cityscapes_coarse_zips(root)
    data_dir = str(tmp_path_factory.mktemp("cs_coarse_tfds"))
    build("cityscapes_coarse", manual_dir=root, data_dir=data_dir)
    return root, data_dir, written


def test_cityscapes_coarse_builds_from_the_zips(cityscapes_coarse_built):
    """train and validation: the fine images with their coarse labels; train_extra: the extra zip's images."""
    _, data_dir, written = cityscapes_coarse_built
    src = tfds.builder("cityscapes_coarse", data_dir=data_dir).as_data_source()
    assert sorted(src) == ["train", "train_extra", "validation"]
    for split, ids in (("train", fx.CITYSCAPES_SPLITS["train"]), ("validation", fx.CITYSCAPES_SPLITS["val"]),
                       ("train_extra", fx.CITYSCAPES_EXTRA)):
        got = _by_id(src[split])
        assert sorted(got) == sorted(ids)
        for image_id, ex in got.items():
            np.testing.assert_array_equal(ex["image"], written["images"][image_id])
            np.testing.assert_array_equal(ex["label"][..., 0], written["label_ids"][image_id])  # the coarse ids
            if image_id in written["fine_label_ids"]:
                assert not np.array_equal(written["label_ids"][image_id], written["fine_label_ids"][image_id])


def test_cityscapes_coarse_pipeline_maps_every_label_id_to_its_train_id(cityscapes_coarse_built):
    _, data_dir, written = cityscapes_coarse_built
    src = tfds.builder("cityscapes_coarse", data_dir=data_dir).as_data_source()["train_extra"]
    _assert_pipeline_maps_label_ids_to_train_ids("cityscapes_coarse", src, written["label_ids"])


def test_cityscapes_coarse_missing_zip_or_label_is_named(cityscapes_coarse_built, tmp_path):
    root = str(tmp_path / "raw")
    shutil.copytree(cityscapes_coarse_built[0], root)
    coarse = os.path.join(root, cityscapes.COARSE_LABELS_ZIP)
    member = f"gtCoarse/train_extra/konstanz/{fx.CITYSCAPES_EXTRA[2]}_gtCoarse_labelIds.png"
    with zipfile.ZipFile(coarse) as z:
        contents = {name: z.read(name) for name in z.namelist() if name != member}
    with zipfile.ZipFile(coarse, "w") as z:
        for name, content in contents.items():
            z.writestr(name, content)
    with pytest.raises(common.MissingFilesError, match=f"^1 label files of the train_extra split are missing from "
                                                       f"{re.escape(coarse)}, e.g. {re.escape(member)}$"):
        build("cityscapes_coarse", manual_dir=root, data_dir=str(tmp_path / "out"))
    extra = os.path.join(root, cityscapes.EXTRA_IMAGES_ZIP)
    os.remove(extra)
    missing_zip = f"^1 of 3 Cityscapes zip files missing.*:\n  {re.escape(extra)}"
    with pytest.raises(common.MissingFilesError, match=missing_zip):
        build("cityscapes_coarse", manual_dir=root, data_dir=str(tmp_path / "out"))


def test_synthetic_is_deterministic_per_seed_and_differs_across_seeds():
    cfg = synthetic.SyntheticShapes.BUILDER_CONFIGS[0]
    other = synthetic.SyntheticShapesConfig(name="s1", seed=1)
    for i in range(3):
        a, b = synthetic.render(cfg, "train", i), synthetic.render(cfg, "train", i)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[0], synthetic.render(other, "train", i)[0])
    assert not np.array_equal(synthetic.render(cfg, "train", 0)[1], synthetic.render(cfg, "validation", 0)[1])


def test_synthetic_builds_identically_twice(tmp_path):
    a = _by_id(build("synthetic_shapes/tiny", data_dir=str(tmp_path / "a")).as_data_source()["train"])
    b = _by_id(build("synthetic_shapes/tiny", data_dir=str(tmp_path / "b")).as_data_source()["train"])
    assert len(a) == 24 and a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k]["image"], b[k]["image"])
        np.testing.assert_array_equal(a[k]["label"], b[k]["label"])
        tiny = synthetic.SyntheticShapes.builder_configs["tiny"]
        expected = synthetic.render(tiny, "train", int(k.split("_")[1]))
        np.testing.assert_array_equal(a[k]["label"][..., 0], expected[1])


def test_synthetic_is_a_shape_task():
    """All five shapes occur; sizes range from small to nearly image-filling; images hold several objects; the
    colour of an object's pixels does not tell its class."""
    cfg = synthetic.SyntheticShapes.BUILDER_CONFIGS[0]
    labels, mean_colour = [], {c: [] for c in range(1, synthetic.NUM_CLASSES)}
    for i in range(60):
        image, label = synthetic.render(cfg, "train", i)
        labels.append(label)
        for c in np.unique(label[label > 0]):
            mean_colour[int(c)].append(image[label == c].mean(axis=0))
    classes_per_image = [len(np.unique(lab[lab > 0])) for lab in labels]
    assert set(np.unique(np.stack(labels))) == set(range(synthetic.NUM_CLASSES))
    assert max(classes_per_image) >= 3
    fg = [np.mean(lab > 0) for lab in labels]
    assert min(fg) < 0.02 and max(fg) > 0.5
    # Per-class mean colours spread over most of the RGB range: colour is not a class cue.
    for c, colours in mean_colour.items():
        assert np.ptp(np.array(colours), axis=0).min() > 100, synthetic.CLASS_NAMES[c]


def test_synthetic_sizes_and_counts_are_configurable(tmp_path):
    """A custom config builds with its sizes and counts and is then read by name, like the registered ones."""
    from gcn_jax.data.synthetic import SyntheticShapesConfig

    cfg = SyntheticShapesConfig(name="wide", height=24, width=40, num_train=5, num_validation=3, max_objects=2)
    tfds.builder("synthetic_shapes", config=cfg, data_dir=str(tmp_path)).download_and_prepare()
    train = load_source("synthetic_shapes/wide", "train", str(tmp_path))
    assert len(train) == 5 and len(load_source("synthetic_shapes/wide", "validation", str(tmp_path))) == 3
    assert train[0]["image"].shape == (24, 40, 3) and train[0]["label"].shape == (24, 40, 1)


def test_large384_is_the_large_set_at_three_times_the_side():
    """The second study's set (configs/study_large.py) draws the same scenes as `large`, three times as large:
    only the sampling of the outlines differs."""
    configs = synthetic.SyntheticShapes.builder_configs
    for i in range(4):
        small, big = synthetic.render(configs["large"], "train", i), synthetic.render(configs["large384"], "train", i)
        assert big[0].shape == (384, 384, 3) and big[1].shape == (384, 384)
        assert np.mean(big[1][1::3, 1::3] == small[1]) > 0.98  # the pixel at the centre of each 3x3 cell
        assert set(np.unique(big[1])) == set(np.unique(small[1]))


@pytest.mark.parametrize("name", ["synthetic_shapes/tiny", "voc_sbd/voc", "coco_voc", "cityscapes_fine"])
def test_a_builder_of_a_dataset_not_built_leaves_no_temporary_folder(name, tmp_path, monkeypatch):
    # tfds looks for a dataset not built yet in its cloud bucket (never ours), through a temporary folder it made
    # and then left behind: one more empty /tmp/tmp*tfds each time, hundreds per test run.
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    builder = tfds.builder(name, data_dir=str(tmp_path / "data"))
    assert not builder.is_prepared()
    assert os.listdir(temp) == []
