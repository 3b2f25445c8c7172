"""Test-time inference modes: window placement, sliding-window fusion (the paper's four 1024x1024 crops on
Cityscapes), and multi-scale + flip averaging of probabilities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcn_jax.data import transforms
from gcn_jax.evaluation.inference import multi_scale, sliding_window, window_positions
from gcn_jax.models import GCNSegmentation
from gcn_jax.models.summary import abstract_variables

RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.normal(size=(2, 23, 30, 3)), jnp.float32)
W = jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32)


def per_pixel(images):
    """A 1x1 conv: every pixel's logits depend on that pixel only."""
    return images @ W


def box3x3(images):
    """A 3x3 box filter (zero padded) then a 1x1 conv: logits see the neighbours, so crop borders matter."""
    p = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = images.shape[1:3]
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) @ W


def cumsum_width(images):
    """Not mirror-symmetric: the logits accumulate from the left edge."""
    return jnp.cumsum(images @ W, axis=2)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def brute_force_windows(apply_fn, images, window, stride):
    """The window loop written out: crops on a stride grid plus one flush with the far border."""
    images = np.asarray(images)
    b, h, w, _ = images.shape
    starts = []
    for size, win, step in zip((h, w), window, stride):
        s = list(range(0, size - win + 1, step))
        if s[-1] + win < size:
            s.append(size - win)
        starts.append(s)
    total, count = None, np.zeros((h, w))
    for y in starts[0]:
        for x in starts[1]:
            out = np.asarray(apply_fn(jnp.asarray(images[:, y:y + window[0], x:x + window[1]])), np.float64)
            total = np.zeros((b, h, w, out.shape[-1])) if total is None else total
            total[:, y:y + window[0], x:x + window[1]] += out
            count[y:y + window[0], x:x + window[1]] += 1
    return total / count[None, :, :, None]


# --- window placement -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, window, stride, expected", [
    (2048, 1024, 342, [0, 342, 684, 1024]),  # Cityscapes width: the paper's four 1024-wide crops
    (1024, 1024, 512, [0]),                  # Cityscapes height: one crop
    (500, 512, 256, [0]),                    # image smaller than the window: one (shrunk) window
    (10, 4, 3, [0, 3, 6]),                   # 6 + 4 == 10: the last window ends at the border
    (11, 4, 3, [0, 3, 6, 7]),                # the last window is moved back to end at the border
    (2048, 1024, 1024, [0, 1024]),
])
def test_window_positions(size, window, stride, expected):
    assert window_positions(size, window, stride) == expected


@pytest.mark.parametrize("size", [1, 5, 17, 64, 97, 2048])
@pytest.mark.parametrize("window, stride", [(1, 1), (4, 3), (16, 16), (16, 5), (64, 63)])
def test_windows_cover_every_pixel_and_stay_inside(size, window, stride):
    starts = window_positions(size, window, stride)
    win = min(window, size)
    covered = np.zeros(size, int)
    for s in starts:
        assert 0 <= s and s + win <= size
        covered[s:s + win] += 1
    assert covered.min() >= 1
    assert starts[0] == 0 and starts[-1] == size - win
    assert len(starts) == (math.ceil((size - window) / stride) + 1 if size > window else 1)
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("window, stride", [(0, 1), (4, 0), (-2, 1), (4, 5)])
def test_bad_window_or_stride_is_refused(window, stride):
    with pytest.raises(ValueError):
        window_positions(100, window, stride)
    with pytest.raises(ValueError):
        sliding_window(per_pixel, IMAGES, (window, window), (stride, stride))


def test_stride_larger_than_window_is_refused_even_on_a_small_image():
    with pytest.raises(ValueError, match="stride"):
        sliding_window(per_pixel, IMAGES, (8, 64), (8, 65))


# --- sliding window ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gcn():
    """A small GCN (resnet18, k=3) with random weights, its apply_fn, an input and its jitted plain logits.

    The variables are drawn from the abstract variable tree: `model.init` alone takes ~20 s on a slow CPU.
    """
    model = GCNSegmentation(num_classes=5, backbone="resnet18", kernel_size=3)
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("var", "scale"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("mean", "bias"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        std = 1 / math.sqrt(math.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(0, std, leaf.shape), leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, abstract_variables(model, (1, 32, 32, 3)))

    def apply_fn(images):
        return model.apply(variables, images)

    x = jnp.asarray(rng.normal(size=(2, 64, 96, 3)), jnp.float32)
    return apply_fn, x, jax.jit(apply_fn)(x)


@pytest.mark.parametrize("window", [(64, 96), (100, 200)])
def test_one_window_over_the_whole_image_is_plain_inference(gcn, window):
    apply_fn, x, plain = gcn
    out = jax.jit(lambda im: sliding_window(apply_fn, im, window, (32, 32)))(x)
    np.testing.assert_array_equal(out, plain)


def test_overlapping_windows_on_the_gcn_match_the_window_loop(gcn):
    apply_fn, x, plain = gcn
    out = np.asarray(jax.jit(lambda im: sliding_window(apply_fn, im, (64, 64), (64, 32)))(x))
    expected = brute_force_windows(jax.jit(apply_fn), x, (64, 64), (64, 32))  # crops at x = 0, 32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(out - np.asarray(plain)).max() > 1e-2  # really cropped: the GCN sees less context


def test_overlapping_windows_on_a_per_pixel_model_are_plain_inference():
    # Windows at y = 0, 7, 13 and x = 0, 5, 10, 15, 18: the strides do not divide the image.
    out = jax.jit(lambda im: sliding_window(per_pixel, im, (10, 12), (7, 5)))(IMAGES)
    np.testing.assert_allclose(out, per_pixel(IMAGES), rtol=1e-6, atol=1e-6)


def test_overlapping_windows_average_the_logits_of_each_crop():
    out = np.asarray(jax.jit(lambda im: sliding_window(box3x3, im, (10, 12), (7, 5)))(IMAGES))
    np.testing.assert_allclose(out, brute_force_windows(box3x3, IMAGES, (10, 12), (7, 5)), rtol=1e-5, atol=1e-5)
    assert np.abs(out - np.asarray(box3x3(IMAGES))).max() > 0.1


def test_window_shrinks_along_the_axis_where_the_image_is_smaller():
    shapes = []

    def recording(images):
        shapes.append(images.shape[1:3])
        return box3x3(images)

    out = sliding_window(recording, IMAGES, (64, 12), (64, 9))  # height 23 < 64: full height, x = 0, 9, 18
    assert shapes == [(23, 12)] * 3
    np.testing.assert_allclose(out, brute_force_windows(box3x3, IMAGES, (23, 12), (23, 9)), rtol=1e-5, atol=1e-5)


# --- multi-scale and flip ---------------------------------------------------------------------------------------

def test_plain_multi_scale_is_bit_identical_logits(gcn):
    apply_fn, x, plain = gcn
    np.testing.assert_array_equal(jax.jit(lambda im: multi_scale(apply_fn, im))(x), plain)
    windowed = sliding_window(box3x3, IMAGES, (10, 12), (7, 5))
    np.testing.assert_array_equal(multi_scale(box3x3, IMAGES, window=(10, 12), stride=(7, 5)), windowed)


def test_flip_on_a_mirror_symmetric_model_changes_nothing():
    out = jax.jit(lambda im: multi_scale(per_pixel, im, flip=True))(IMAGES)
    np.testing.assert_allclose(out, softmax(np.asarray(per_pixel(IMAGES))), rtol=1e-6, atol=1e-7)


def test_flip_averages_the_probabilities_of_the_image_and_its_mirror():
    x = np.asarray(IMAGES)
    straight = softmax(np.asarray(cumsum_width(x)))
    mirrored = softmax(np.asarray(cumsum_width(x[:, :, ::-1]))[:, :, ::-1])
    assert np.abs(straight - mirrored).max() > 0.1  # the model is really asymmetric
    out = jax.jit(lambda im: multi_scale(cumsum_width, im, flip=True))(IMAGES)
    np.testing.assert_allclose(out, (straight + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_scales_give_probabilities_at_the_input_resolution():
    out = jax.jit(lambda im: multi_scale(box3x3, im, scales=(0.5, 1.0), flip=True))(IMAGES)
    assert out.shape == (2, 23, 30, 4) and out.dtype == jnp.float32
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    assert out.min() >= 0


def test_scaled_sizes_are_rounded_and_at_least_one_pixel():
    shapes = []

    def recording(images):
        shapes.append(images.shape[1:3])
        return per_pixel(images)

    multi_scale(recording, IMAGES[:, :20], scales=(0.5, 0.68, 1.3, 0.01), flip=True)  # 20 x 30 images
    assert shapes == [(10, 15)] * 2 + [(14, 20)] * 2 + [(26, 39)] * 2 + [(1, 1)] * 2  # 13.6 -> 14, 20.4 -> 20


def test_images_are_rescaled_as_in_training():
    # Test-time rescaling samples like the training augmentation (OpenCV bilinear, no antialiasing).
    seen = []

    def recording(images):
        seen.append(np.asarray(images))
        return per_pixel(images)

    multi_scale(recording, IMAGES[:, :20], scales=(0.5, 0.68, 1.3))
    label = np.zeros((20, 30), np.uint8)
    for scale, scaled in zip((0.5, 0.68, 1.3), seen):
        for image, got in zip(np.asarray(IMAGES[:, :20]), scaled):
            np.testing.assert_allclose(got, transforms.rescale(image, label, scale)[0], rtol=1e-5, atol=1e-5)


def test_every_scale_is_averaged_with_equal_weight():
    # Constant images survive any resize unchanged, so every scale predicts softmax(per_pixel(x)).
    x = jnp.broadcast_to(jnp.asarray(RNG.normal(size=(2, 1, 1, 3)), jnp.float32), (2, 20, 30, 3))
    out = multi_scale(per_pixel, x, scales=(0.5, 0.75, 1.0, 1.5), flip=True)
    np.testing.assert_allclose(out, softmax(np.asarray(per_pixel(x))), rtol=1e-5, atol=1e-6)


def test_the_window_applies_at_every_scale():
    shapes = []

    def recording(images):
        shapes.append(images.shape[1:3])
        return per_pixel(images)

    out = multi_scale(recording, IMAGES[:, :20], scales=(1.0, 2.0), window=(16, 16), stride=(16, 16))
    assert set(shapes) == {(16, 16)}
    assert len(shapes) == 2 * 2 + 3 * 4  # 20 x 30: y = 0, 4 and x = 0, 14; 40 x 60: y = 0, 16, 24; x = 0, 16, 32, 44
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(scales=()), dict(scales=(1.0, 0.0)), dict(window=(8, 8)),
                                    dict(stride=(8, 8))])
def test_bad_multi_scale_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        multi_scale(per_pixel, IMAGES, **kwargs)
