"""Segmentation metrics from counts summed over a whole split (scenic-style).

The jitted eval step calls `batch_counts` on each (padded, masked) batch; the host sums the counts with
`add_counts` and turns the totals into metrics with `summarize`. mIoU is therefore computed from one confusion
matrix for the whole split, not as a mean of per-image IoUs; pixels labelled 255 are ignored and classes with
zero union are left out of the mean. Boundary and interior accuracy are those of Table 5 (boundary = within
7 px of a label edge, see `boundary_mask`).

Arrays are (batch, height, width). A pixel is *counted* when it is inside `valid` (the padding mask), its
label is in [0, num_classes) (so 255 is never counted) and its prediction is in [0, num_classes) (argmax always
is; the check only keeps a bad prediction from landing in another cell of the matrix).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gcn_jax.labels import IGNORE_LABEL


def _valid_or_all(labels: jnp.ndarray, valid: jnp.ndarray | None) -> jnp.ndarray:
    if valid is None:
        return jnp.ones(labels.shape, dtype=bool)
    if valid.shape != labels.shape:
        raise ValueError(f"valid has shape {valid.shape}, labels have shape {labels.shape}")
    return valid.astype(bool)


def counted_mask(labels, predictions, num_classes: int, valid=None) -> jnp.ndarray:
    """Bool (batch, height, width): the pixels that enter the metrics (see the module docstring)."""
    labels = jnp.asarray(labels).astype(jnp.int32)
    predictions = jnp.asarray(predictions).astype(jnp.int32)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions have shape {predictions.shape}, labels have shape {labels.shape}")
    return (
        _valid_or_all(labels, valid)
        & (labels != IGNORE_LABEL)
        & (labels >= 0)
        & (labels < num_classes)
        & (predictions >= 0)
        & (predictions < num_classes)
    )


def confusion_matrix(labels, predictions, num_classes: int, valid=None) -> jnp.ndarray:
    """int32 (num_classes, num_classes): entry [i, j] counts counted pixels of true class i predicted as j.

    `labels` and `predictions` are integer (batch, height, width); `valid` is an optional bool mask of the same
    shape (False on padding). One bincount over the flattened pairs label * C + prediction, with uncounted
    pixels given weight 0: O(pixels) memory, exact integer counts (int32, so up to 2^31 - 1 pixels a batch).
    """
    labels = jnp.asarray(labels).astype(jnp.int32)
    predictions = jnp.asarray(predictions).astype(jnp.int32)
    counted = counted_mask(labels, predictions, num_classes, valid)
    pair = jnp.where(counted, labels * num_classes + predictions, 0)
    counts = jnp.bincount(pair.ravel(), weights=counted.ravel().astype(jnp.int32), length=num_classes**2)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def _window_reduce(x: jnp.ndarray, init, op, radius: int) -> jnp.ndarray:
    """`op` over the (2 * radius + 1)^2 square around each pixel of (batch, height, width) `x`.

    Done as a column pass then a row pass (a square window is separable for max and min). Outside the image
    the window sees `init`, the identity of `op`.
    """
    size = 2 * radius + 1
    for window in ((1, size, 1), (1, 1, size)):
        x = jax.lax.reduce_window(x, init, op, window, (1, 1, 1), "SAME")
    return x


def boundary_mask(labels, width: int = 7, valid=None) -> jnp.ndarray:
    """Bool (batch, height, width): the "boundary" region of Table 5, pixels within `width` px of a label edge.

    A label *edge pixel* is a valid pixel whose 3x3 neighbourhood, taken only over pixels inside the image and
    inside `valid`, contains a label value different from its own. 255 counts as a value like any other, so
    the borders of VOC's void band are edges, while padding (valid False) never creates one. Both pixels on
    either side of a label change are edge pixels. The boundary region is every valid pixel whose Chebyshev
    (chessboard) distance to some edge pixel is at most `width`, i.e. the edge map dilated by a
    (2 * width + 1)^2 square. Interior pixels are the counted pixels outside it (see `batch_counts`).
    """
    if width < 0:
        raise ValueError(f"boundary width must be >= 0, got {width}")
    labels = jnp.asarray(labels).astype(jnp.int32)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (batch, height, width), got shape {labels.shape}")
    valid = _valid_or_all(labels, valid)
    lo, hi = jnp.iinfo(jnp.int32).min, jnp.iinfo(jnp.int32).max
    # Invalid neighbours get the identity of each reduction, so they act like pixels outside the image.
    nbr_max = _window_reduce(jnp.where(valid, labels, lo), lo, jax.lax.max, 1)
    nbr_min = _window_reduce(jnp.where(valid, labels, hi), hi, jax.lax.min, 1)
    edge = valid & ((nbr_max != labels) | (nbr_min != labels))
    near_edge = _window_reduce(edge.astype(jnp.int32), 0, jax.lax.max, width) > 0
    return near_edge & valid


def batch_counts(labels, predictions, num_classes: int, valid=None, boundary_width: int = 7) -> dict:
    """The per-batch counts that `summarize` needs, as jnp arrays (jit-able; shapes depend only on inputs).

    'confusion': (C, C) int32 (see `confusion_matrix`); 'boundary_correct', 'boundary_total',
    'interior_correct', 'interior_total': int32 scalars over the counted pixels inside / outside
    `boundary_mask(labels, boundary_width, valid)`, where correct means prediction == label.
    """
    labels = jnp.asarray(labels).astype(jnp.int32)
    predictions = jnp.asarray(predictions).astype(jnp.int32)
    counted = counted_mask(labels, predictions, num_classes, valid)
    boundary = boundary_mask(labels, boundary_width, valid)
    correct = predictions == labels

    def total(mask):
        return jnp.sum(mask, dtype=jnp.int32)

    return {
        "confusion": confusion_matrix(labels, predictions, num_classes, valid),
        "boundary_correct": total(counted & boundary & correct),
        "boundary_total": total(counted & boundary),
        "interior_correct": total(counted & ~boundary & correct),
        "interior_total": total(counted & ~boundary),
    }


def image_counts(labels, predictions, num_classes: int, valid=None) -> dict:
    """Per image of the batch, int32 (batch,): 'correct', the counted pixels predicted right, and 'counted', the
    counted pixels (`counted_mask`); their ratio is the image's pixel accuracy (jit-able)."""
    labels = jnp.asarray(labels).astype(jnp.int32)
    predictions = jnp.asarray(predictions).astype(jnp.int32)
    counted = counted_mask(labels, predictions, num_classes, valid)
    return {"correct": jnp.sum(counted & (predictions == labels), axis=(1, 2), dtype=jnp.int32),
            "counted": jnp.sum(counted, axis=(1, 2), dtype=jnp.int32)}


def add_counts(total: Mapping[str, Any] | None, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Host-side running sum: `total` + `batch` as numpy int64 (`total` None starts the sum)."""
    batch = {k: np.asarray(jax.device_get(v), dtype=np.int64) for k, v in batch.items()}
    if total is None:
        return batch
    if set(total) != set(batch):
        raise ValueError(f"count keys differ: {sorted(total)} vs {sorted(batch)}")
    return {k: np.asarray(total[k], dtype=np.int64) + batch[k] for k in batch}


def _ratio(num, den) -> float | None:
    return float(num) / float(den) if den > 0 else None


def row_normalized(confusion) -> np.ndarray:
    """Confusion counts (rows: label, columns: prediction) -> each row divided by its sum (nan for an empty
    row): the share of a label's pixels predicted as each class, recall on the diagonal."""
    confusion = np.asarray(confusion, np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.full(confusion.shape, np.nan), where=totals > 0)


def summarize(counts: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics (plain Python, JSON-serialisable) from counts summed over a split.

    'miou': mean IoU = TP / (TP + FP + FN) over the classes with non-zero union (a class only predicted,
    never present, has IoU 0 and counts); 'per_class_iou': {name: IoU, or None for zero union};
    'pixel_accuracy': correct / counted pixels; 'mean_class_accuracy': mean of TP / ground-truth pixels over
    classes that have any; 'boundary_accuracy', 'interior_accuracy': Table 5's; 'num_pixels': counted pixels;
    'confusion_matrix': its 'counts' (rows: label, columns: prediction) and 'row_normalized' (each row over its
    label's pixels: recall on the diagonal). A ratio with nothing to average or divide by is None.
    """
    confusion = np.asarray(counts["confusion"], dtype=np.int64)
    n = len(class_names)
    if confusion.shape != (n, n):
        raise ValueError(
            f"confusion matrix has shape {confusion.shape} but {n} class names were given; "
            f"expected ({n}, {n})"
        )
    tp = np.diag(confusion)
    gt = confusion.sum(axis=1)
    pred = confusion.sum(axis=0)
    union = gt + pred - tp
    iou = [_ratio(tp[c], union[c]) for c in range(n)]
    present = [x for x in iou if x is not None]
    class_acc = [tp[c] / gt[c] for c in range(n) if gt[c] > 0]
    num_pixels = int(confusion.sum())

    def count(key):
        return int(counts.get(key, 0))

    return {
        "miou": float(np.mean(present)) if present else None,
        "per_class_iou": dict(zip(class_names, iou)),
        "pixel_accuracy": _ratio(tp.sum(), num_pixels),
        "mean_class_accuracy": float(np.mean(class_acc)) if class_acc else None,
        "boundary_accuracy": _ratio(count("boundary_correct"), count("boundary_total")),
        "interior_accuracy": _ratio(count("interior_correct"), count("interior_total")),
        "num_pixels": num_pixels,
        "confusion_matrix": {  # rows: the label, columns: the prediction, in class_names' order
            "counts": confusion.tolist(),
            "row_normalized": [[None if np.isnan(x) else float(x) for x in row] for row in row_normalized(confusion)],
        },
    }


def format_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width text table: IoU (%) per class ('—' for zero union), then the split-level metrics."""

    def pct(x):
        return "—" if x is None else f"{100 * x:.2f}"

    rows = [(name, pct(v)) for name, v in summary["per_class_iou"].items()]
    totals = [
        ("mIoU", pct(summary["miou"])),
        ("pixel acc", pct(summary["pixel_accuracy"])),
        ("mean class acc", pct(summary["mean_class_accuracy"])),
        ("boundary acc", pct(summary["boundary_accuracy"])),
        ("interior acc", pct(summary["interior_accuracy"])),
    ]
    name_w = max(len(name) for name, _ in [("class", ""), *rows, *totals])
    val_w = max(len(v) for _, v in [("", "IoU %"), *rows, *totals])
    rule = "-" * (name_w + 2 + val_w)
    lines = [f"{'class':<{name_w}}  {'IoU %':>{val_w}}", rule]
    lines += [f"{name:<{name_w}}  {v:>{val_w}}" for name, v in rows]
    lines.append(rule)
    lines += [f"{name:<{name_w}}  {v:>{val_w}}" for name, v in totals]
    lines.append(f"({summary['num_pixels']} pixels; accuracies in %)")
    return "\n".join(lines)
