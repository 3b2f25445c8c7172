"""Label vocabulary shared by the data, evaluation and prediction code: the ignore label, the PASCAL colours and
the Cityscapes ids."""

from __future__ import annotations

import numpy as np
from PIL import Image

IGNORE_LABEL = 255  # VOC's void band, Cityscapes' unlabelled ids, and padding: never in the loss or the metrics

# Cityscapes label id (0-33, as in *_gtFine_labelIds.png and as its test server wants predictions) -> train id
# (the 19 evaluated classes the model predicts); every other label id is ignored in training.
CITYSCAPES_LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_TRAIN_TO_LABEL_ID = np.array(sorted(CITYSCAPES_LABEL_TO_TRAIN_ID, key=CITYSCAPES_LABEL_TO_TRAIN_ID.get),
                                        np.uint8)


def pascal_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, (n, 3) uint8: class i's colour is built from the bits of i."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


PASCAL_PALETTE = pascal_palette()


def palette_image(indices: np.ndarray) -> Image.Image:
    """A (height, width) uint8 index array as a PASCAL palette PNG image, VOC's own label format."""
    image = Image.fromarray(np.asarray(indices, np.uint8), mode="P")
    image.putpalette(PASCAL_PALETTE.ravel().tolist())
    return image


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class-index mask (height, width) -> RGB (height, width, 3); 255 (ignore) is drawn white."""
    palette = PASCAL_PALETTE if palette is None else palette
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette[:256]
    lut[IGNORE_LABEL] = (255, 255, 255)
    return lut[np.asarray(mask, np.uint8)]
