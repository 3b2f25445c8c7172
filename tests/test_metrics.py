"""Segmentation metrics: the confusion matrix over counted pixels (255, out-of-range labels and padding left
out), split-level mIoU with zero-union classes excluded, Table 5's boundary band, and the printed table.

Expected values come from brute-force loops and scipy, never from the code under test."""

import json
import math
from fractions import Fraction
from functools import partial

import jax
import numpy as np
import pytest
from scipy import ndimage

from gcn_jax.evaluation import metrics

IGNORE = 255


def random_batch(rng, shape, num_classes, block=1):
    """Labels with 255 and out-of-range values, predictions, and a random valid (padding) mask."""
    b, h, w = shape
    coarse = (b, math.ceil(h / block), math.ceil(w / block))
    labels = rng.choice([*range(num_classes), IGNORE, num_classes, num_classes + 3], size=coarse)
    labels = labels.repeat(block, axis=1).repeat(block, axis=2)[:, :h, :w]
    predictions = rng.integers(0, num_classes, size=shape)
    # Where correct, predictions copy the label, so accuracy is neither 0 nor chance.
    predictions = np.where(rng.random(shape) < 0.5, np.clip(labels, 0, num_classes - 1), predictions)
    valid = rng.random(shape) < 0.8
    return labels, predictions, valid


def brute_force_confusion(labels, predictions, num_classes, valid):
    counted = valid & (labels != IGNORE) & (labels >= 0) & (labels < num_classes)
    out = np.zeros((num_classes, num_classes), np.int64)
    for i in range(num_classes):
        for j in range(num_classes):
            out[i, j] = np.sum((labels == i) & (predictions == j) & counted)
    return out


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 9), (3, 16, 5)])
@pytest.mark.parametrize("dtype", [np.int32, np.uint8])
def test_confusion_matrix_counts_true_class_rows_predicted_columns(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    labels, predictions, valid = random_batch(rng, shape, num_classes=5)
    labels, predictions = labels.astype(dtype), predictions.astype(dtype)
    expected = brute_force_confusion(labels, predictions, 5, valid)
    got = metrics.confusion_matrix(labels, predictions, 5, valid=valid)
    assert got.dtype == np.int32 and got.shape == (5, 5)
    np.testing.assert_array_equal(got, expected)
    jitted = jax.jit(partial(metrics.confusion_matrix, num_classes=5))
    np.testing.assert_array_equal(jitted(labels, predictions, valid=valid), expected)


def test_confusion_matrix_without_mask_counts_every_labelled_pixel():
    labels = np.array([[[0, 1, 255], [2, 3, 1]]])  # 3 is out of range for 3 classes
    predictions = np.array([[[0, 2, 0], [2, 0, 1]]])
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, predictions, 3), [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def test_hand_worked_2x3_example():
    # counted pixels (label, prediction): (0,0) (0,1) (1,1) (1,1) (2,2); the 255 pixel predicted 2 is ignored.
    labels = np.array([[[0, 0, 1], [1, 255, 2]]])
    predictions = np.array([[[0, 1, 1], [1, 2, 2]]])
    counts = metrics.add_counts(None, metrics.batch_counts(labels, predictions, 4))
    s = metrics.summarize(counts, ["a", "b", "c", "d"])
    # a: TP 1, FN 1 -> 1/2.  b: TP 2, FP 1 -> 2/3.  c: TP 1 -> 1 (not 1/2: the ignored pixel is no FP).
    assert s["per_class_iou"] == pytest.approx({"a": 1 / 2, "b": 2 / 3, "c": 1.0, "d": None})
    assert s["miou"] == pytest.approx(float((Fraction(1, 2) + Fraction(2, 3) + 1) / 3))  # 13/18
    assert s["pixel_accuracy"] == pytest.approx(4 / 5)
    assert s["mean_class_accuracy"] == pytest.approx(float((Fraction(1, 2) + 1 + 1) / 3))  # 5/6
    assert s["num_pixels"] == 5
    assert counts["boundary_total"] + counts["interior_total"] == 5
    assert s["confusion_matrix"]["counts"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert s["confusion_matrix"]["row_normalized"] == [[0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                                                       [0.0, 0.0, 1.0, 0.0], [None, None, None, None]]
    json.dumps(s)  # eval.py writes it as it is


def test_miou_over_a_split_matches_independent_per_class_counts():
    c = 5  # class 3 is only ever predicted (IoU 0, counts), class 4 appears nowhere (excluded, None)
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2, IGNORE], size=(3, 12, 10))
    predictions = rng.choice([0, 1, 2, 3], size=labels.shape)
    valid = rng.random(labels.shape) < 0.9
    total = None
    for i in range(3):  # one image a batch: the split's counts are summed, not its per-image IoUs averaged
        total = metrics.add_counts(total, metrics.batch_counts(labels[i:i + 1], predictions[i:i + 1], c,
                                                               valid=valid[i:i + 1]))
    s = metrics.summarize(total, [f"k{k}" for k in range(c)])

    counted = valid & (labels != IGNORE)
    ious = []
    for k in range(3):
        tp = np.sum((labels == k) & (predictions == k) & counted)
        fp = np.sum((labels != k) & (predictions == k) & counted)
        fn = np.sum((labels == k) & (predictions != k) & counted)
        ious.append(tp / (tp + fp + fn))
        assert s["per_class_iou"][f"k{k}"] == pytest.approx(ious[-1])
    assert np.sum((predictions == 3) & counted) > 0
    assert s["per_class_iou"]["k3"] == 0.0
    assert s["per_class_iou"]["k4"] is None
    assert s["miou"] == pytest.approx((sum(ious) + 0.0) / 4)
    assert s["pixel_accuracy"] == pytest.approx(np.sum((labels == predictions) & counted) / np.sum(counted))
    assert s["num_pixels"] == np.sum(counted)


def test_summarize_rejects_class_names_that_do_not_match_the_matrix():
    counts = {"confusion": np.eye(3, dtype=np.int64)}
    with pytest.raises(ValueError, match=r"\(3, 3\).*2 class names"):
        metrics.summarize(counts, ["a", "b"])


def scipy_boundary(labels, width, valid):
    """Edge pixels by an explicit loop over 3x3 neighbourhoods, then a chessboard distance transform."""
    b, h, w = labels.shape
    edge = np.zeros(labels.shape, bool)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                if not valid[n, y, x]:
                    continue
                ys, xs = slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2)
                nbrs = labels[n, ys, xs][valid[n, ys, xs]]
                edge[n, y, x] = np.any(nbrs != labels[n, y, x])
    out = np.zeros(labels.shape, bool)
    for n in range(b):
        if edge[n].any():  # with no zero in its input, distance_transform_cdt returns -1 everywhere
            out[n] = ndimage.distance_transform_cdt(~edge[n], metric="chessboard") <= width
    return out & valid


@pytest.mark.parametrize("width", [0, 1, 3])
@pytest.mark.parametrize("mask", ["random", "padding"])
def test_boundary_mask_matches_scipy_chessboard_distance(width, mask):
    rng = np.random.default_rng(width)
    labels, _, valid = random_batch(rng, (3, 30, 37), num_classes=3, block=10)
    if mask == "padding":  # valid top-left rectangle, as in padded eval batches
        valid = np.zeros_like(valid)
        for n, (h, w) in enumerate([(30, 37), (17, 37), (23, 14)]):
            valid[n, :h, :w] = True
    expected = scipy_boundary(labels, width, valid)
    got = metrics.boundary_mask(labels, width=width, valid=valid)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.sum() < valid.sum()  # the case is not trivial


def test_boundary_of_a_vertical_edge_is_the_band_of_columns_within_7px():
    labels = np.zeros((1, 20, 30), np.int32)
    labels[:, :, 12:] = 1  # edge pixels: columns 11 and 12
    band = np.zeros(30, bool)
    band[11 - 7:12 + 7 + 1] = True  # columns 4..19
    got = np.asarray(metrics.boundary_mask(labels, width=7))
    np.testing.assert_array_equal(got, np.broadcast_to(band, (1, 20, 30)))


def test_padding_is_not_an_edge_but_a_void_band_is():
    labels = np.full((2, 20, 30), 3, np.int32)
    valid = np.ones(labels.shape, bool)
    labels[0, :, 20:] = IGNORE  # padding: labelled 255 but outside the valid mask
    valid[0, :, 20:] = False
    labels[1, :, 20:22] = IGNORE  # VOC's void band between objects: a real label value
    got = np.asarray(metrics.boundary_mask(labels, width=2, valid=valid))
    assert not got[0].any()
    band = np.zeros(30, bool)
    band[19 - 2:22 + 2 + 1] = True  # edge columns 19..22
    np.testing.assert_array_equal(got[1], np.broadcast_to(band, (20, 30)))


def test_boundary_and_interior_split_the_counted_pixels():
    rng = np.random.default_rng(3)
    labels, predictions, valid = random_batch(rng, (2, 24, 20), num_classes=4, block=5)
    counts = jax.jit(partial(metrics.batch_counts, num_classes=4, boundary_width=2))(labels, predictions,
                                                                                      valid=valid)
    counts = metrics.add_counts(None, counts)
    counted = valid & (labels < 4)
    boundary = scipy_boundary(labels, 2, valid)
    assert counts["boundary_total"] == np.sum(counted & boundary) > 0
    assert counts["interior_total"] == np.sum(counted & ~boundary) > 0
    assert counts["boundary_correct"] == np.sum(counted & boundary & (labels == predictions))
    assert counts["boundary_total"] + counts["interior_total"] == counts["confusion"].sum() == np.sum(counted)
    s = metrics.summarize(counts, list("abcd"))
    correct = counts["boundary_correct"] + counts["interior_correct"]
    assert s["pixel_accuracy"] == pytest.approx(correct / (counts["boundary_total"] + counts["interior_total"]))
    assert s["boundary_accuracy"] == pytest.approx(counts["boundary_correct"] / counts["boundary_total"])


def test_add_counts_sums_in_int64():
    batch = {"confusion": np.full((2, 2), 2**30, np.int32), "boundary_total": np.int32(2**30)}
    total = metrics.add_counts(metrics.add_counts(metrics.add_counts(None, batch), batch), batch)
    assert total["confusion"].dtype == np.int64 and total["confusion"][0, 0] == 3 * 2**30
    assert total["boundary_total"] == 3 * 2**30


def test_format_table_lists_every_class_and_the_miou():
    labels = np.array([[[0, 0, 1], [1, 255, 2]]])
    predictions = np.array([[[0, 1, 1], [1, 2, 2]]])
    names = ["background", "aeroplane", "bicycle", "bird"]
    s = metrics.summarize(metrics.add_counts(None, metrics.batch_counts(labels, predictions, 4)), names)
    table = metrics.format_table(s)
    for name in names:
        assert name in table
    assert "72.22" in table  # mIoU 13/18
    assert "66.67" in table  # aeroplane 2/3
    bird = next(line for line in table.splitlines() if line.startswith("bird"))
    assert bird.split()[-1] == "—"
    assert len({len(line) for line in table.splitlines()[:-1]}) == 1  # fixed width
