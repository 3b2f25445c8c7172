"""Image files as `predict.py` reads and writes them: every common mode comes out as the RGB a viewer shows, one
unreadable file does not stop the others, and the test-server formats hold what each server expects."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from gcn_jax.errors import InputError
from gcn_jax.evaluation.prediction import check_format, predict_files, read_image

RAMP = np.arange(12 * 16, dtype=np.float64).reshape(12, 16) / (12 * 16 - 1)  # 0 .. 1, row-major


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(str(path))
    assert image.dtype == np.uint8 and image.shape == (12, 16, 3)
    np.testing.assert_allclose(image[..., 0], RAMP * 255, atol=0.51)
    assert np.all(image[..., 0] == image[..., 2])


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_grayscale_palette_and_alpha_images_give_their_rgb(tmp_path, mode):
    rgb = np.stack([np.round(RAMP * 255), np.round(255 - RAMP * 255), np.full_like(RAMP, 40)], -1).astype(np.uint8)
    source = Image.fromarray(rgb)
    if mode in ("RGBA", "LA"):
        converted = source.convert(mode)
        converted.putalpha(Image.fromarray(np.full((12, 16), 7, np.uint8)))  # nearly transparent
    else:
        converted = source.convert(mode)
    path = tmp_path / "image.png"
    converted.save(path)
    # What a viewer shows, computed from the stored values, not through PIL's own conversion.
    stored = np.asarray(Image.open(path))
    if mode == "P":
        expected = np.asarray(Image.open(path).getpalette(), np.uint8).reshape(-1, 3)[stored]
    elif mode == "RGBA":  # transparency does not darken the colours
        expected = rgb
    else:  # L, LA (gray + alpha), 1 (bilevel: False/True)
        gray = stored[..., 0] if mode == "LA" else stored
        expected = np.repeat((gray.astype(np.uint8) * (255 if mode == "1" else 1))[..., None], 3, axis=-1)
    np.testing.assert_array_equal(read_image(str(path)), expected)


def test_cmyk_jpeg_comes_out_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("RGB", (16, 12), (200, 30, 60)).convert("CMYK").save(path, quality=95)
    image = read_image(str(path))
    assert image.shape == (12, 16, 3)
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), (200, 30, 60), atol=6)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((12, 16, 3), np.uint8)
    pixels[:4, :4] = (255, 0, 0)  # a red top-left corner
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=100)
    shown = read_image(str(path))
    assert shown.shape == (16, 12, 3)
    assert shown[1, -2, 0] > 200 and shown[1, 1, 0] < 60  # the corner is now top right


def test_float_images_are_refused_by_name(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(RAMP.astype(np.float32)).save(path)
    with pytest.raises(InputError, match=r"depth.tif: a floating-point image \(mode F\)"):
        read_image(str(path))


def test_one_unreadable_file_does_not_stop_the_others(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 12), (10, 20, 30)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    later = tmp_path / "later.png"
    Image.new("RGB", (8, 8)).save(later)
    written, failed = predict_files(lambda image: np.zeros(image.shape[:2], np.uint8),
                                    [str(good), str(broken), str(later)], str(tmp_path / "out"))
    assert [w[0] for w in written] == [str(good), str(later)]
    assert [f[0] for f in failed] == [str(broken)] and "broken.jpg: not a readable image" in failed[0][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good_mask.png", "good_overlay.png", "later_mask.png", "later_overlay.png"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_predicting_a_folder_shows_progress_on_a_terminal_only(tmp_path, monkeypatch, terminal):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (8, 8)).save(paths[-1])
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    predict_files(lambda image: np.zeros(image.shape[:2], np.uint8), paths, str(tmp_path / "out"))
    if terminal:  # the bar (count of total, rate, ETA) drawn, then cleared when done
        assert "predicting:   0%|" in stderr.getvalue() and "0/3 [00:00<?, ?image/s]" in stderr.getvalue()
    else:
        assert stderr.getvalue() == ""


# The Cityscapes label ids of the 19 evaluated classes, in train-id order (cityscapesscripts' labels table:
# road 7, sidewalk 8, building 11, wall 12, fence 13, pole 17, traffic light 19, traffic sign 20, vegetation 21,
# terrain 22, sky 23, person 24, rider 25, car 26, truck 27, bus 28, train 31, motorcycle 32, bicycle 33).
_CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_cityscapes_format_writes_label_ids_under_the_image_name(tmp_path):
    image = tmp_path / "berlin_000000_000019_leftImg8bit.png"
    Image.new("RGB", (19, 4)).save(image)
    train_ids = np.tile(np.arange(19, dtype=np.uint8), (4, 1))
    written, failed = predict_files(lambda x: train_ids, [str(image)], str(tmp_path / "out"), "cityscapes")
    assert not failed and written == [(str(image), str(tmp_path / "out" / "berlin_000000_000019_leftImg8bit.png"))]
    with Image.open(written[0][1]) as saved:
        assert saved.mode == "L"
        np.testing.assert_array_equal(np.asarray(saved), np.tile(np.array(_CITYSCAPES_LABEL_IDS, np.uint8), (4, 1)))


def test_voc_format_writes_palette_pngs_where_the_server_looks(tmp_path):
    image = tmp_path / "2008_000001.jpg"
    Image.new("RGB", (21, 3)).save(image)
    classes = np.tile(np.arange(21, dtype=np.uint8), (3, 1))
    written, _ = predict_files(lambda x: classes, [str(image)], str(tmp_path / "out"), "voc")
    expected = tmp_path / "out" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls" / "2008_000001.png"
    assert written == [(str(image), str(expected))]
    with Image.open(expected) as saved:
        assert saved.mode == "P"
        np.testing.assert_array_equal(np.asarray(saved), classes)
        # VOC's colour map (the devkit's VOClabelcolormap): background, aeroplane, bicycle, bird, boat, ...
        assert saved.getpalette()[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
        assert saved.getpalette()[20 * 3:21 * 3] == [0, 64, 128]  # tvmonitor


def test_a_server_format_for_another_class_count_is_refused():
    check_format("cityscapes", 19)
    check_format("default", 6)
    with pytest.raises(InputError, match=r"--format=voc writes the 21 classes of its benchmark; this model predicts "
                                         r"6 \(config.model.num_classes\)"):
        check_format("voc", 6)
    with pytest.raises(InputError, match=r"--format=kitti: expected one of default, voc, cityscapes"):
        check_format("kitti", 19)
