"""The grain pipeline: batch shapes, augmentation that keeps image and label aligned, multi-process sharding,
evaluation coverage, and iterator state restore."""

import io
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import default
from gcn_jax import labels
from gcn_jax.data import datasets, pipeline, synthetic
from gcn_jax.data.build import build
from gcn_jax.data.transforms import DecodeRecord, EvalTransform, TrainTransform, pad_to
from gcn_jax.errors import InputError
from gcn_jax.images import model_input, normalize


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    """A tfds data_dir holding synthetic_shapes/tiny: 24 train, 10 validation images of 48x64."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    build("synthetic_shapes/tiny", data_dir=data_dir)
    return data_dir


@pytest.fixture(scope="module")
def tiny(tiny_data_dir):
    """synthetic_shapes/tiny's train and validation sources, decoded."""
    return (datasets.load_source("synthetic_shapes/tiny", "train", tiny_data_dir),
            datasets.load_source("synthetic_shapes/tiny", "validation", tiny_data_dir))


def _data_config(**overrides):
    """configs/default.py's data section for synthetic_shapes/tiny, read in this process, with overrides."""
    data = default.get_config().data
    data.update({"name": "synthetic_shapes/tiny", "seed": 7, "worker_count": 0, **overrides})
    return data


def _train(source, crop_size=(40, 56), global_batch_size=4, process_index=0, process_count=1, **data):
    return pipeline.train_loader(_data_config(**data), crop_size, global_batch_size, source=source,
                                 process_index=process_index, process_count=process_count)


def test_train_batches_have_the_configured_shapes_and_label_values(tiny):
    train, _ = tiny
    padded = 0
    for batch in itertools.islice(iter(_train(train, photometric=True)), 6):
        # uint8 to the device (a quarter of float32's bytes), with a mask of the images' own pixels.
        assert batch["image"].shape == (4, 40, 56, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].shape == (4, 40, 56) and batch["label"].dtype == np.uint8
        assert batch["mask"].shape == (4, 40, 56) and batch["mask"].dtype == bool
        assert batch["index"].shape == (4,)
        values = set(np.unique(batch["label"]).tolist())
        assert values <= set(range(synthetic.NUM_CLASSES)) | {255}
        # Padding: black, ignored, outside the mask; normalised on the device to exactly 0, the mean colour.
        padding = ~batch["mask"]
        assert np.all(batch["image"][padding] == 0) and np.all(batch["label"][padding] == 255)
        normalized = np.asarray(model_input(jnp.asarray(batch["image"]), jnp.asarray(batch["mask"])))
        assert np.all(normalized[padding] == 0) and np.abs(normalized).max() < 3.0
        np.testing.assert_allclose(normalized[~padding], normalize(batch["image"][~padding]), atol=1e-6)
        padded += padding.any()
    assert padded  # the 0.5-2x scaling leaves some crops smaller than the crop size


def _constructed_example(h=30, w=44):
    """A label of distinct, asymmetric class regions and an image whose colour at each pixel is the colour of
    its class, so alignment can be read off every output pixel."""
    label = np.zeros((h, w), np.uint8)
    label[3:12, 5:30] = 1
    label[15:28, 2:9] = 2
    label[18:26, 25:41] = 3
    label[0:5, 36:44] = 255
    colours = np.array([[10, 200, 30], [250, 20, 20], [20, 20, 250], [240, 240, 0]], np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[:4] = colours
    lut[255] = (128, 128, 128)
    return {"image": lut[label], "label": label[..., None], "image_id": b"x", "index": 0}, lut


@pytest.mark.parametrize("mode", ["strong", "paper"])
def test_flip_crop_and_scale_keep_image_and_label_aligned(mode):
    element, lut = _constructed_example()
    t = TrainTransform((24, 40), mode=mode, scale_range=(0.6, 1.7))
    flips, offsets = set(), set()
    for seed in range(40):
        out = t.random_map(element, np.random.default_rng(seed))
        image, label = out["image"], out["label"]
        assert np.all(label[~out["mask"]] == 255)
        pad = label == 255
        # Interior pixels (label constant over the 3x3 neighbourhood) carry exactly their class colour.
        lab = np.pad(label, 1, constant_values=255)  # pixels at the crop border are not interior
        same = np.all([lab[1 + dy:lab.shape[0] - 1 + dy, 1 + dx:lab.shape[1] - 1 + dx] == label
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        interior = same & (label != 255)
        assert interior.sum() > 100
        np.testing.assert_allclose(image[interior], lut[label[interior]], atol=1)
        assert np.all(out["image"][pad & same & ~np.isin(image, lut[255]).all(-1)] == 0)
        # Which way the class-2 block (left side of the source) ended up tells whether the crop was flipped.
        cols = np.nonzero((label == 2).any(0))[0]
        if cols.size:
            flips.add(cols.mean() > label.shape[1] / 2)
        offsets.add(tuple(np.argwhere(label == 1).min(0)) if (label == 1).any() else None)
    assert flips == {False, True}
    assert len(offsets) > 5


def test_paper_mode_pads_without_scaling():
    element, _ = _constructed_example(30, 44)
    out = TrainTransform((48, 64), mode="paper").random_map(element, np.random.default_rng(0))
    label = out["label"]
    src = element["label"][..., 0]
    flipped = not np.array_equal(label[:30, :44], src)
    if flipped:  # the flip mirrors the whole padded crop: the image then sits at the right edge
        np.testing.assert_array_equal(label[:30, 20:], src[:, ::-1])
    else:
        np.testing.assert_array_equal(label[:30, :44], src)
    assert (label == 255).sum() == 48 * 64 - 30 * 44 + (src == 255).sum()
    padding = np.ones((48, 64), bool)
    if flipped:
        padding[:30, 20:] = False
    else:
        padding[:30, :44] = False
    np.testing.assert_array_equal(out["image"][padding], 0)
    np.testing.assert_array_equal(out["mask"], ~padding)


def test_pad_to_pads_bottom_right_with_ignore():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) + 1
    label = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    img, lab = pad_to(image[1:, 1:], label[1:, 1:], (3, 3))
    np.testing.assert_array_equal(lab, [[5, 6, 255], [255, 255, 255], [255, 255, 255]])
    np.testing.assert_array_equal(img[0, :2], image[1, 1:])
    assert np.all(img[1:] == 0) and np.all(img[0, 2] == 0)


def test_normalize_uses_imagenet_statistics():
    pixel = np.array([[[0.485 * 255, 0.456 * 255, 0.406 * 255]]], np.float32)
    np.testing.assert_allclose(normalize(pixel), 0, atol=1e-6)
    np.testing.assert_allclose(normalize(pixel + [[[0.229 * 255, 0.224 * 255, 0.225 * 255]]]), 1, atol=1e-6)


def test_the_device_normalises_uint8_images_as_the_host_did_and_zeroes_padding():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    mask = np.ones((2, 5, 7), bool)
    mask[1, 3:, :] = False
    out = np.asarray(jax.jit(model_input)(jnp.asarray(images), jnp.asarray(mask)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[mask], normalize(images[mask]), atol=1e-6)
    assert np.all(out[~mask] == 0)
    np.testing.assert_allclose(np.asarray(model_input(jnp.asarray(images))), normalize(images), atol=1e-6)
    floats = jnp.asarray(normalize(images))  # float input is taken as normalised already
    assert model_input(floats, jnp.asarray(mask)) is floats


def test_two_processes_read_disjoint_shards_that_cover_the_split(tiny):
    train, _ = tiny
    seen = []
    for p in range(2):
        it = iter(_train(train, global_batch_size=4, process_index=p, process_count=2))
        epoch = [next(it) for _ in range(len(train) // 4)]  # one epoch of this process's 12 records, 2 at a time
        assert all(b["image"].shape[0] == 2 for b in epoch)
        idx = np.concatenate([b["index"] for b in epoch])
        assert len(set(idx.tolist())) == len(idx) == len(train) // 2
        seen.append(set(idx.tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(len(train)))


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_covers_every_example_exactly_once(tiny, process_count):
    _, val = tiny  # 10 records: with 3 processes blocks of 4, 3, 3
    counts, batches = np.zeros(len(val), int), []
    for p in range(process_count):
        loader, num_batches = pipeline.eval_loader(_data_config(eval_pad_size=(56, 72)), 2 * process_count,
                                                   source=val, process_index=p, process_count=process_count)
        got = list(loader)
        batches.append(len(got))
        assert len(got) == num_batches
        for b in got:
            assert b["image"].shape == (2, 56, 72, 3) and b["mask"].shape == (2, 56, 72)
            for row, index in enumerate(b["index"]):
                if index < 0:  # padding example: nothing counts
                    assert not b["mask"][row].any() and np.all(b["label"][row] == 255)
                    continue
                counts[index] += 1
                ex = val[int(index)]
                h, w = ex["label"].shape[:2]
                assert b["mask"][row].sum() == h * w and b["mask"][row, :h, :w].all()
                np.testing.assert_array_equal(b["label"][row, :h, :w], ex["label"][..., 0])
                np.testing.assert_array_equal(b["image"][row, :h, :w], ex["image"])
    np.testing.assert_array_equal(counts, 1)
    assert len(set(batches)) == 1  # every process runs the same number of batches


def test_restored_iterator_state_gives_the_same_following_batches(tiny):
    train, _ = tiny
    it = iter(_train(train))
    for _ in range(4):  # mid-epoch: 16 of 24 records
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]  # runs into the second epoch
    resumed = iter(_train(train))
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(5)]):
        for key in ("image", "label", "index"):
            np.testing.assert_array_equal(a[key], b[key])


def test_batches_do_not_depend_on_the_worker_count(tiny):
    train, _ = tiny
    in_process = list(itertools.islice(iter(_train(train, worker_count=0)), 3))
    with_worker = list(itertools.islice(iter(_train(train, worker_count=1)), 3))
    for a, b in zip(in_process, with_worker):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_bad_settings_are_clear_errors(tiny, tmp_path):
    train, val = tiny
    with pytest.raises(ValueError, match="global batch size 6 does not split evenly over 4 processes"):
        _train(train, global_batch_size=6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="augment mode 'heavy'"):
        _train(train, augment="heavy")
    with pytest.raises(ValueError, match="unknown dataset 'voc2012'"):
        datasets.dataset_spec("voc2012")
    with pytest.raises(FileNotFoundError, match="(?s)voc_sbd/aug is not built.*gcn_jax.data.build voc_sbd/aug"):
        datasets.load_source("voc_sbd/aug", "train", str(tmp_path))
    with pytest.raises(ValueError, match="has no split 'val'"):
        datasets.load_source("synthetic_shapes/tiny", "val", str(tmp_path))
    element = {"image": np.zeros((48, 64, 3), np.uint8), "label": np.zeros((48, 64, 1), np.uint8),
               "image_id": b"validation_000003", "index": 3}
    with pytest.raises(ValueError, match="validation_000003.*48x64.*larger than the evaluation pad size 40x80"):
        EvalTransform((40, 80)).map(element)


def test_a_record_that_cannot_be_decoded_is_named_by_dataset_split_and_image_id(tiny_data_dir):
    """A damaged record in a built dataset (here: its image bytes cut short) stops the loader with an InputError
    that names the dataset, split and image id, not an error about None inside a later transform."""
    raw = datasets.load_source("synthetic_shapes/tiny", "validation", tiny_data_dir, decode=False)
    records = [raw[i] for i in range(len(raw))]
    assert isinstance(records[3]["image"], bytes)
    records[3]["image"] = records[3]["image"][:60]
    image_id = records[3]["image_id"].decode()
    loader, _ = pipeline.eval_loader(_data_config(eval_pad_size=(48, 64)), 5, source=records, process_index=0,
                                     process_count=1)
    with pytest.raises(InputError) as raised:
        list(loader)
    assert str(raised.value).startswith(f"dataset synthetic_shapes/tiny, split validation, record 3 (image id "
                                        f"'{image_id}'): the stored image (60 bytes) cannot be decoded")


@pytest.mark.parametrize("label, expected", [
    (b"\x89PNG\r\n\x1a\n garbage", r"the stored label \(16 bytes\) cannot be decoded; expected a single-channel"),
    (Image.fromarray(np.zeros((5, 7), np.uint8)), r"the image is 3x4 but the label is 5x7"),
])
def test_decode_record_names_a_bad_label(label, expected):
    def png(image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    label = label if isinstance(label, bytes) else png(label)
    record = {"image": png(Image.fromarray(np.zeros((3, 4, 3), np.uint8))), "label": label,
              "image_id": b"2008_000101", "index": 17}
    with pytest.raises(InputError, match=r"^dataset voc_sbd/aug, split train, record 17 \(image id '2008_000101'\): "
                                         + expected):
        DecodeRecord("voc_sbd/aug", "train").map(record)


def test_loaders_read_undecoded_records_as_decoded_ones(tiny, tiny_data_dir):
    """The loaders read the split undecoded (source=None) and give the batches and the iterator state of a decoded
    source, so iterator positions saved while the pipeline read decoded records still restore."""
    train, val = tiny
    data = _data_config(data_dir=tiny_data_dir, eval_pad_size=(48, 64))
    own, _ = pipeline.eval_loader(data, 10, process_index=0, process_count=1)
    given, _ = pipeline.eval_loader(data, 10, source=val, process_index=0, process_count=1)
    for a, b in zip(own, given, strict=True):
        for key in ("image", "label", "mask", "index"):
            np.testing.assert_array_equal(a[key], b[key])
    own_it = iter(pipeline.train_loader(data, (40, 56), 4, process_index=0, process_count=1))
    given_it = iter(_train(train))
    for _ in range(2):
        np.testing.assert_array_equal(next(own_it)["image"], next(given_it)["image"])
    assert own_it.get_state() == given_it.get_state()


def test_colorize_draws_classes_and_ignore():
    rgb = labels.colorize(np.array([[0, 1, 255]], np.uint8))
    np.testing.assert_array_equal(rgb[0], [[0, 0, 0], [128, 0, 0], [255, 255, 255]])


def test_show_data_writes_a_grid_of_examples_and_masks(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    out = tmp_path / "grid.png"
    cmd = [sys.executable, "tools/show_data.py", "--config", "configs/voc.py", "--num", "4", "--columns", "2",
           "--out", str(out), "--config.data.name=synthetic_shapes/tiny", f"--config.data.data_dir={tmp_path}",
           "--config.crop_size=40,40", "--config.data.worker_count=0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stdout and "4 train examples of synthetic_shapes/tiny, 40x40" in result.stdout
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 40 + 4, 2 * (2 * 40 + 4) + 4, 3)
    mask_tile = grid[:40, 44:84].reshape(-1, 3)  # first example's mask: PASCAL colours of 0-5 or white (ignore)
    allowed = {tuple(c) for c in labels.PASCAL_PALETTE[: synthetic.NUM_CLASSES]} | {(255, 255, 255)}
    assert {tuple(c) for c in mask_tile} <= allowed


def test_build_command_prints_the_split_sizes(tmp_path, capsys):
    from gcn_jax.data.build import main

    main(["synthetic_shapes/tiny", "--data_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "synthetic_shapes/tiny is ready" in out and "(train: 24, validation: 10)" in out


# --- Several datasets as one training source ---------------------------------------------------------------------

def test_a_mix_names_its_parts_and_evaluates_on_the_last():
    assert datasets.components("voc_sbd/aug") == [("voc_sbd/aug", None)]
    assert datasets.components("cityscapes_fine:train+synthetic_shapes/tiny") == [
        ("cityscapes_fine", "train"), ("synthetic_shapes/tiny", None)]
    assert datasets.eval_dataset("cityscapes_fine:train+voc_sbd/aug") == "voc_sbd/aug"
    assert datasets.dataset_spec("voc_sbd/voc+voc_sbd/aug").num_classes == 21
    with pytest.raises(InputError, match=r"the datasets of 'synthetic_shapes/tiny\+voc_sbd/aug' disagree on their "
                                         r"classes: synthetic_shapes/tiny has 6 \(background, disc, .*voc_sbd/aug "
                                         r"has 21 \(background, aeroplane"):
        datasets.dataset_spec("synthetic_shapes/tiny+voc_sbd/aug")
    with pytest.raises(InputError, match=r"unknown dataset 'coco'"):
        datasets.dataset_spec("voc_sbd/aug+coco")
    with pytest.raises(InputError, match=r"expected 'builder\[/config\]\[:split\]' parts joined by '\+'"):
        datasets.components("voc_sbd/aug+")


def test_a_mix_draws_every_record_of_its_parts_once_per_epoch(tiny_data_dir):
    """A mix is one shuffled source: each part's share of the draws is its share of the records, exactly so
    over every epoch (here 24 train + 10 validation records, each drawn once in the first 34)."""
    mix = "synthetic_shapes/tiny:train+synthetic_shapes/tiny:validation"
    source = datasets.load_source(mix, "ignored", tiny_data_dir, decode=False)
    assert len(source) == 34 and source[30]["dataset"] == "synthetic_shapes/tiny:validation"
    assert source[30]["image_id"] == datasets.load_source("synthetic_shapes/tiny", "validation",
                                                          tiny_data_dir)[6]["image_id"]
    loader = pipeline.train_loader(_data_config(name=mix, data_dir=tiny_data_dir), (40, 56), 2,
                                   process_index=0, process_count=1)
    drawn = np.concatenate([batch["index"] for batch in itertools.islice(loader, 17)])
    assert sorted(drawn) == list(range(34))
    assert set(drawn[:17] >= 24) == {True, False}


def test_a_bad_record_of_a_mix_is_named_by_its_part():
    record = {"image": b"\xff\xd8 cut", "label": b"", "image_id": b"000000139", "index": 40,
              "dataset": "coco_voc:train", "part_index": 7}
    with pytest.raises(InputError, match=r"^dataset coco_voc, split train, record 7 \(image id '000000139'\): .* "
                                         r"python -m gcn_jax.data.build coco_voc --overwrite"):
        DecodeRecord("coco_voc+voc_sbd/aug", "train").map(record)
