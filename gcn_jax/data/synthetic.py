"""`synthetic_shapes`: a generated segmentation set that needs no files, the default of a fresh machine.

Each image holds several objects of five classes told apart only by their *shape* (disc, square, triangle,
ring, cross). Colours and textures (flat, stripes, checkerboard, noise, gradient) are drawn at random for
every object and for the background, so colour says nothing about the class. Sizes run from a few pixels to
nearly the whole image, objects are rotated, may leave the frame, and overlap: they are painted largest
first, so smaller ones occlude parts of larger ones, and a ring's hole shows what lies beneath. Labelling a
large object right needs a view of its whole outline, the paper's argument for large kernels.

Every example is a pure function of (seed, split, index), so a config builds the same data on any machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from gcn_jax.data import common

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "cross")
NUM_CLASSES = len(CLASS_NAMES)
_SPLIT_IDS = {"train": 0, "validation": 1}
TEXTURES = ("flat", "stripes", "checkerboard", "noise", "gradient")


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
    """Sizes and counts of a synthetic_shapes variant. ``min_size``/``max_size``: object diameter as a fraction
    of the shorter image side, drawn log-uniformly between them. ``textures`` / ``background_textures``: the
    kinds (of `TEXTURES`) drawn for objects and for the background."""

    height: int = 128
    width: int = 128
    num_train: int = 2000
    num_validation: int = 200
    min_objects: int = 1
    max_objects: int = 4
    min_size: float = 0.08
    max_size: float = 0.95
    seed: int = 0
    textures: tuple[str, ...] = TEXTURES
    background_textures: tuple[str, ...] = TEXTURES


def _texture(rng: np.random.Generator, height: int, width: int, kinds: tuple[str, ...] = TEXTURES) -> np.ndarray:
    """A random (height, width, 3) uint8 texture of one of ``kinds``."""
    unknown = set(kinds) - set(TEXTURES)
    if unknown or not kinds:
        raise ValueError(f"textures {kinds}: expected a non-empty selection of {TEXTURES}")
    kind = TEXTURES.index(kinds[rng.integers(len(kinds))])
    c1, c2 = rng.integers(0, 256, size=(2, 3))
    if kind == 0:  # flat
        return np.broadcast_to(c1.astype(np.uint8), (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 1:  # stripes at a random angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        mix = (np.floor(t) % 2)[..., None]
    elif kind == 2:  # checkerboard
        period = rng.uniform(3, 12)
        mix = ((np.floor(xx / period) + np.floor(yy / period)) % 2)[..., None]
    elif kind == 3:  # noise around a colour
        noise = rng.normal(0, rng.uniform(15, 60), size=(height, width, 3))
        return np.clip(c1 + noise, 0, 255).astype(np.uint8)
    else:  # linear gradient between two colours
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx / max(width, 1) + np.sin(angle) * yy / max(height, 1)
        mix = ((t - t.min()) / max(float(np.ptp(t)), 1e-6))[..., None]
    return (c1 * (1 - mix) + c2 * mix).astype(np.uint8)


def _polygon(n: int, radius: float, cx: float, cy: float, angle: float, radii=None) -> list[tuple[float, float]]:
    radii = np.full(n, radius) if radii is None else np.asarray(radii) * radius
    t = angle + 2 * np.pi * np.arange(n) / n
    return list(zip(cx + radii * np.cos(t), cy + radii * np.sin(t)))


def _shape_mask(cls: int, height: int, width: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean (height, width) mask of one object of class ``cls`` with circumradius ``r``."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    box = (cx - r, cy - r, cx + r, cy + r)
    name = CLASS_NAMES[cls]
    if name == "disc":
        draw.ellipse(box, fill=1)
    elif name == "square":
        draw.polygon(_polygon(4, r, cx, cy, angle), fill=1)
    elif name == "triangle":
        draw.polygon(_polygon(3, r, cx, cy, angle), fill=1)
    elif name == "ring":
        draw.ellipse(box, fill=1)
        q = 0.55 * r
        draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    elif name == "cross":  # a plus sign with arms a third of its span wide: 12 corners
        a, b = r, r / 3.0
        corners = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b),
                   (-b, b), (-b, a)]
        c, s = np.cos(angle), np.sin(angle)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners], fill=1)
    else:
        raise ValueError(f"unknown class {cls}")
    return np.asarray(canvas, bool)


def render(config: SyntheticShapesConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Example ``index`` of ``split``: image (height, width, 3) uint8 and label (height, width) uint8."""
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])
    h, w = config.height, config.width
    image = _texture(rng, h, w, config.background_textures)
    label = np.zeros((h, w), np.uint8)
    n = rng.integers(config.min_objects, config.max_objects + 1)
    side = min(h, w)
    sizes = np.exp(rng.uniform(np.log(config.min_size), np.log(config.max_size), n)) * side
    for size in np.sort(sizes)[::-1]:  # largest first: smaller objects occlude larger ones
        cls = int(rng.integers(1, NUM_CLASSES))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        mask = _shape_mask(cls, h, w, cx, cy, size / 2, rng.uniform(0, 2 * np.pi))
        image[mask] = _texture(rng, h, w, config.textures)[mask]
        label[mask] = cls
    return image, label


class SyntheticShapes(common.ArrayRecordBuilder):
    """Shapes of random colour and texture; the class is the shape."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        SyntheticShapesConfig(name="default", description="128x128, 2,000 train / 200 validation images."),
        SyntheticShapesConfig(name="flat", height=96, width=96, textures=("flat",), background_textures=("flat",),
                              max_objects=3, min_size=0.15, max_size=0.8,
                              description="96x96, 2,000 / 200 images; one random colour per object and for the "
                                          "background, 1-3 objects of 15-80% of the side: the demo's set, "
                                          "learnable in minutes on a CPU."),
        SyntheticShapesConfig(name="large", textures=("flat",), background_textures=("flat",), max_objects=3,
                              min_size=0.3, max_size=0.9,
                              description="128x128, 2,000 / 200 images; flat colours, 1-3 objects of 30-90% of "
                                          "the side, so most are larger than a small backbone's valid receptive "
                                          "field: the ablation study's set (configs/study.py)."),
        SyntheticShapesConfig(name="large384", height=384, width=384, textures=("flat",),
                              background_textures=("flat",), max_objects=3, min_size=0.3, max_size=0.9,
                              description="384x384, 2,000 / 200 images: `large` at three times the side, where a "
                                          "stride-32 backbone's res-5 map is 12x12, so k = 3-15 spans the range "
                                          "up to the map's size as in the paper (configs/study_large.py)."),
        SyntheticShapesConfig(name="tiny", height=48, width=64, num_train=24, num_validation=10,
                              description="48x64, 24 / 10 images: for tests and quick checks."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=common.segmentation_features("png"))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {"train": self._generate_examples("train", cfg.num_train),
                "validation": self._generate_examples("validation", cfg.num_validation)}

    def _generate_examples(self, split, count):
        for i in range(count):
            image, label = render(self.builder_config, split, i)
            image_id = f"{split}_{i:06d}"
            yield image_id, {"image": Image.fromarray(image), "label": common.mask_image(label),
                             "image_id": image_id}
