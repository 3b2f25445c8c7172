"""The datasets this project knows: what the pipeline and the metrics need of each (`DatasetSpec`), and their
random-access tfds sources. Importing this module registers the builders with tfds."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from gcn_jax.data import cityscapes, coco_voc, synthetic, voc_sbd
from gcn_jax.errors import InputError, NotFoundError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline and the metrics need to know about a dataset's labels."""

    num_classes: int
    class_names: tuple[str, ...]
    label_lut: np.ndarray | None = None  # stored label value -> class index (255 = ignore), applied on read
    generated: bool = False  # built from nothing (no manual_dir): built on first use


DATASETS = {
    "voc_sbd": DatasetSpec(voc_sbd.NUM_CLASSES, voc_sbd.CLASS_NAMES),
    "coco_voc": DatasetSpec(coco_voc.NUM_CLASSES, coco_voc.CLASS_NAMES),
    "cityscapes_fine": DatasetSpec(cityscapes.NUM_CLASSES, cityscapes.CLASS_NAMES, cityscapes.TRAIN_ID_LUT),
    "cityscapes_coarse": DatasetSpec(cityscapes.NUM_CLASSES, cityscapes.CLASS_NAMES, cityscapes.TRAIN_ID_LUT),
    "synthetic_shapes": DatasetSpec(synthetic.NUM_CLASSES, synthetic.CLASS_NAMES, generated=True),
}


def dataset_spec(name: str) -> DatasetSpec:
    """Spec of a dataset given as 'builder' or 'builder/config' (e.g. 'voc_sbd/aug')."""
    base = name.split("/")[0].split(":")[0]
    if base not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)} (optionally '/config')")
    return DATASETS[base]


def load_source(name: str, split: str, data_dir: str | None = None, *, decode: bool = True):
    """The random-access tfds source of one split. The synthetic set is generated on first use; any other
    dataset that is not built yet is an error that says how to build it.

    ``decode=False`` leaves each record's image and label as their stored bytes: the input pipeline decodes them
    itself (`transforms.DecodeRecord`), so a record that cannot be decoded is reported with its dataset, split
    and image id rather than failing inside tfds."""
    spec = dataset_spec(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not spec.generated:
            raise NotFoundError(
                f"dataset {name} is not built in {builder.data_dir}. Build it once from the raw files with\n"
                f"  python -m gcn_jax.data.build {name} --manual_dir <dir with the raw files>"
                + (f" --data_dir {data_dir}" if data_dir else "")
            )
        builder.download_and_prepare()
    splits = builder.info.splits
    if split not in splits:
        raise InputError(f"dataset {name} has no split {split!r}; it has {sorted(splits)}")
    decoders = None if decode else {"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split=split, decoders=decoders)


def source_repr(source) -> str:
    """``repr(source)`` as grain's iterator state records it (a restored state must match it). A tfds source read
    with ``decode=False`` holds the same records in the same order as a decoded one, so it is named like one
    (decoders=None): iterator positions saved while the pipeline read decoded sources still restore."""
    info, decoders = getattr(source, "dataset_info", None), getattr(source, "decoders", None)
    if info is None or not decoders or not all(isinstance(d, tfds.decode.SkipDecoding) for d in decoders.values()):
        return repr(source)
    return f"{type(source).__name__}(name={info.name}, split={source.split!r}, decoders=None)"
