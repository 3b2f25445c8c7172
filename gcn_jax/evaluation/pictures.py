"""Pictures of an evaluation: the confusion matrix as a heat map, and a grid of examples (image, label,
prediction, errors), with the examples chosen reproducibly: some at random, some the worst by pixel accuracy.
numpy, PIL and matplotlib only (matplotlib imported when a heat map is drawn, with its Agg canvas: no window,
no global backend change). The functions return arrays; the callers write them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gcn_jax.evaluation import metrics
from gcn_jax.labels import IGNORE_LABEL, colorize

EXAMPLES_SEED = 0  # the random examples: the same records for every checkpoint of a run
HEATMAP_COLORMAP = "Blues"
NO_PIXELS_GREY = 0.85  # a label row without pixels (nothing to normalise by)
ANNOTATE_UP_TO = 25  # classes; above that the cells are too small for their percentages
ERROR_RED = (230, 25, 25)
IGNORED_GREY = (110, 110, 110)
PANELS = ("image", "label", "prediction", "errors")


def check_example_count(count) -> None:
    """A number of examples to draw: a whole number >= 0 (0: none)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{count!r}: expected a whole number of examples >= 0 (0: none)")


# --- Which examples -------------------------------------------------------------------------------------------

def choose_examples(per_image: Mapping[str, np.ndarray], num_random: int, num_worst: int,
                    seed: int = EXAMPLES_SEED) -> dict:
    """Records to draw from an evaluation's per-image counts ({'index', 'correct', 'counted'}, one entry per
    image, in any order): ``num_random`` drawn with ``seed`` from the record indices alone (so the same records
    whatever the batch order, process count or checkpoint), then the ``num_worst`` others with the lowest pixel
    accuracy (ties: the lower index; images without counted pixels are never worst). Returns {'index': int64
    (k,), 'kind': ['random' | 'worst'] * k, 'accuracy': float64 (k,), nan for no counted pixels}: the random
    ones by index, then the worst from the lowest accuracy up."""
    check_example_count(num_random)
    check_example_count(num_worst)
    order = np.argsort(np.asarray(per_image["index"]), kind="stable")
    index = np.asarray(per_image["index"], np.int64)[order]
    if len(np.unique(index)) != len(index) or (len(index) and index[0] < 0):
        raise ValueError("per-image counts must hold each record index (>= 0) once")
    correct = np.asarray(per_image["correct"], np.float64)[order]
    counted = np.asarray(per_image["counted"], np.float64)[order]
    accuracy = np.divide(correct, counted, out=np.full(len(index), np.nan), where=counted > 0)

    rng = np.random.default_rng(seed)
    random = np.sort(rng.permutation(len(index))[:num_random])
    candidates = np.setdiff1d(np.flatnonzero(counted > 0), random)
    worst = candidates[np.lexsort((index[candidates], accuracy[candidates]))][:num_worst]
    chosen = np.concatenate([random, worst]).astype(np.int64)
    return {"index": index[chosen], "kind": ["random"] * len(random) + ["worst"] * len(worst),
            "accuracy": accuracy[chosen]}


# --- The confusion matrix ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConfusionPicture:
    image: np.ndarray  # uint8 RGB (height, width, 3)
    normalized: np.ndarray  # float64 (classes, classes): each row over its label's pixels; nan for none
    cells: np.ndarray  # int (classes, classes, 4): cell [i, j]'s (left, top, right, bottom) in `image`, pixels


def confusion_heatmap(counts, class_names: Sequence[str], title: str = "") -> ConfusionPicture:
    """The row-normalised confusion matrix as a heat map (0 to 1, `HEATMAP_COLORMAP`, with a colour bar),
    class names on both axes, each cell's percentage written in it for up to `ANNOTATE_UP_TO` classes."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    normalized = metrics.row_normalized(counts)
    n = len(class_names)
    if normalized.shape != (n, n):
        raise ValueError(f"confusion counts have shape {normalized.shape}, expected ({n}, {n}) for the class names")
    side = 2.5 + 0.4 * n
    figure = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    cmap = colormaps[HEATMAP_COLORMAP].with_extremes(bad=str(NO_PIXELS_GREY))
    shown = axes.imshow(np.ma.masked_invalid(normalized), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="share of the label's pixels")
    axes.set_xticks(range(n), class_names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n), class_names)
    axes.set_xlabel("prediction")
    axes.set_ylabel("label")
    axes.set_title(title, fontsize=10)
    if n <= ANNOTATE_UP_TO:
        for (i, j), value in np.ndenumerate(normalized):
            text = "—" if math.isnan(value) else f"{100 * value:.0f}"
            axes.text(j, i, text, ha="center", va="center", fontsize=8,
                      color="white" if value > 0.55 else "black")
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return ConfusionPicture(image, normalized, _cell_boxes(axes, n, image.shape[0]))


def _cell_boxes(axes, n: int, height: int) -> np.ndarray:
    """Each cell's pixel box in the drawn image (display coordinates count up from the bottom)."""
    boxes = np.zeros((n, n, 4), np.int64)
    for i in range(n):
        for j in range(n):
            (x0, y0), (x1, y1) = axes.transData.transform([(j - 0.5, i - 0.5), (j + 0.5, i + 0.5)])
            top, bottom = sorted((height - y0, height - y1))
            boxes[i, j] = np.round([min(x0, x1), top, max(x0, x1), bottom])
    return boxes


# --- Examples -------------------------------------------------------------------------------------------------

def pixel_accuracy(label: np.ndarray, prediction: np.ndarray, num_classes: int) -> float:
    """Share of the counted pixels (label in [0, num_classes)) predicted right; nan if none is counted."""
    counted = (label >= 0) & (label < num_classes) & (label != IGNORE_LABEL)
    return float(np.mean(prediction[counted] == label[counted])) if counted.any() else math.nan


def error_panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 RGB (height, width, 3): wrongly predicted pixels red over the image in washed-out grey, ignored
    pixels (label 255) dark grey."""
    counted = (label >= 0) & (label < num_classes) & (label != IGNORE_LABEL)
    luminance = np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    panel = np.repeat(np.round(0.3 * luminance + 170).astype(np.uint8)[..., None], 3, axis=-1)
    panel[~counted] = IGNORED_GREY
    panel[counted & (prediction != label)] = ERROR_RED
    return panel


def example_row(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, num_classes: int, scale: int = 1,
                gap: int = 4, panel_size: tuple[int, int] | None = None) -> np.ndarray:
    """One example as `PANELS` side by side, uint8 RGB (scale * height, 4 * scale * width + 3 * gap, 3), white
    gaps: the image (uint8 RGB), the label and the prediction in PASCAL colours (ignore white), `error_panel`.
    Each pixel becomes a ``scale`` x ``scale`` block; ``panel_size`` (height, width), at least the image's, sets
    each panel's space (the picture in its top left), so that rows of different image sizes line up."""
    panels = [image, colorize(label), colorize(prediction), error_panel(image, label, prediction, num_classes)]
    h, w = label.shape
    space_h, space_w = (h, w) if panel_size is None else panel_size
    row = np.full((space_h * scale, 4 * space_w * scale + 3 * gap, 3), 255, np.uint8)
    for k, panel in enumerate(panels):
        x = k * (space_w * scale + gap)
        row[:h * scale, x:x + w * scale] = np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1)
    return row


def _valid_extent(mask: np.ndarray) -> tuple[int, int]:
    """(height, width) of the image inside its padding (the evaluation pads at the bottom and right)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (int(rows[-1]) + 1, int(cols[-1]) + 1) if len(rows) else (0, 0)


def example_grid(examples: Mapping[str, np.ndarray], captions: Sequence[str], num_classes: int,
                 max_width: int | None = None, min_side: int = 192, gap: int = 4) -> np.ndarray:
    """Evaluation examples ({'image' uint8 RGB (n, h, w, 3), 'label', 'prediction', 'mask' (n, h, w)},
    padding cropped off by 'mask') -> one uint8 RGB picture: a header naming `PANELS`, then per example its
    caption with the pixel accuracy of the prediction drawn and its `example_row`. Small images are enlarged by
    a whole factor to ``min_side`` px on their longer side; a grid wider than ``max_width`` is shrunk to it."""
    sizes = [_valid_extent(m) for m in examples["mask"]]
    space = (max([h for h, _ in sizes] + [1]), max([w for _, w in sizes] + [1]))
    scale = max(1, -(-min_side // max(space)))
    font = ImageFont.load_default(size=13)
    line = 20
    rows = []
    for k, (h, w) in enumerate(sizes):
        image = examples["image"][k][:h, :w]
        label, prediction = examples["label"][k][:h, :w], examples["prediction"][k][:h, :w]
        accuracy = pixel_accuracy(label, prediction, num_classes)
        rows.append((f"{captions[k]}: pixel accuracy " + ("—" if math.isnan(accuracy) else f"{accuracy:.1%}"),
                     example_row(image, label, prediction, num_classes, scale, gap, space)))
    width = 4 * space[1] * scale + 3 * gap
    height = line + sum(line + row.shape[0] + gap for _, row in rows)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for k, name in enumerate(PANELS):
        draw.text((k * (space[1] * scale + gap) + 2, 3), name, fill="black", font=font)
    y = line
    for caption, row in rows:
        draw.text((2, y + 3), caption, fill="black", font=font)
        grid.paste(Image.fromarray(row), (0, y + line))
        y += line + row.shape[0] + gap
    if max_width is not None and width > max_width:
        grid = grid.resize((max_width, max(1, round(height * max_width / width))), Image.Resampling.BOX)
    return np.asarray(grid)
