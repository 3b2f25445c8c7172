"""Pictures of batches, to check the input pipeline by eye."""

from __future__ import annotations

import math

import numpy as np

from gcn_jax.labels import colorize


def example_grid(images: np.ndarray, labels: np.ndarray, columns: int = 4, gap: int = 4) -> np.ndarray:
    """uint8 RGB images (n, h, w, 3) and labels (n, h, w) -> one uint8 RGB picture: each example as the image
    next to its colour-coded mask (PASCAL colours, ignore = white), ``columns`` examples per row."""
    n, h, w = labels.shape
    rows = math.ceil(n / columns)
    tile_w = 2 * w + gap
    grid = np.full((rows * (h + gap) - gap, min(n, columns) * (tile_w + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        y, x = (i // columns) * (h + gap), (i % columns) * (tile_w + gap)
        grid[y:y + h, x:x + w] = images[i]
        grid[y:y + h, x + w + gap:x + tile_w] = colorize(labels[i])
    return grid
