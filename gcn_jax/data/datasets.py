"""The datasets this project knows: what the pipeline and the metrics need of each (`DatasetSpec`), and their
random-access tfds sources. Importing this module registers the builders with tfds."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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


MIX = "+"  # 'coco_voc+voc_sbd/aug': several datasets read as one training source


def components(name: str) -> list[tuple[str, str | None]]:
    """The (dataset, split or None) parts of a dataset name: 'voc_sbd/aug' -> [('voc_sbd/aug', None)];
    'cityscapes_coarse:train_extra+cityscapes_fine' -> [('cityscapes_coarse', 'train_extra'),
    ('cityscapes_fine', None)]. A split given with ':' replaces the config's training split for that part."""
    parts = []
    for part in name.split(MIX):
        dataset, _, split = part.strip().partition(":")
        if not dataset or (":" in part and not split):
            raise InputError(f"dataset name {name!r}: expected 'builder[/config][:split]' parts joined by '{MIX}'")
        parts.append((dataset, split or None))
    return parts


def eval_dataset(name: str) -> str:
    """The dataset a run evaluates on: the last part of a mix (the target, e.g. voc_sbd/aug of
    'coco_voc+voc_sbd/aug'), or the dataset itself."""
    return components(name)[-1][0]


def dataset_spec(name: str) -> DatasetSpec:
    """Spec of a dataset given as 'builder' or 'builder/config' (e.g. 'voc_sbd/aug'), or of a mix of such, whose
    parts must agree on the classes and on how stored labels map to them."""
    specs = {}
    for dataset, _ in components(name):
        base = dataset.split("/")[0]
        if base not in DATASETS:
            raise InputError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)} (optionally "
                             "'/config')")
        specs[dataset] = DATASETS[base]
    first, spec = next(iter(specs.items()))
    for dataset, other in specs.items():
        if other.class_names != spec.class_names or not _same_lut(other.label_lut, spec.label_lut):
            raise InputError(f"the datasets of {name!r} disagree on their classes: {first} has {spec.num_classes} "
                             f"({', '.join(spec.class_names)}), {dataset} has {other.num_classes} "
                             f"({', '.join(other.class_names)})" + ("" if other.class_names != spec.class_names
                                                                    else " with another label table"))
    return spec


def _same_lut(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


class MixedSource:
    """Several random-access sources read as one: records 0 .. len(first) - 1 are the first's, and so on; each
    record names the part it came from under 'dataset' ('coco_voc:train') and its index there under 'part_index'
    (`transforms.DecodeRecord` reports a damaged record by them and drops both). Shuffling the whole gives every
    part its share in proportion to its size (a part named twice, twice its share)."""

    def __init__(self, parts: Sequence[tuple[str, object]]):
        self.names, self.sources = [name for name, _ in parts], [source for _, source in parts]
        self.ends = np.cumsum([len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: int) -> dict:
        part = int(np.searchsorted(self.ends, index, side="right"))
        start = 0 if part == 0 else int(self.ends[part - 1])
        return {**self.sources[part][index - start], "dataset": self.names[part], "part_index": index - start}

    def __repr__(self) -> str:
        return f"MixedSource({', '.join(f'{n}={source_repr(s)}' for n, s in zip(self.names, self.sources))})"


def load_source(name: str, split: str, data_dir: str | None = None, *, decode: bool = True):
    """The random-access tfds source of one split. The synthetic set is generated on first use; any other
    dataset that is not built yet is an error that says how to build it.

    ``decode=False`` leaves each record's image and label as their stored bytes: the input pipeline decodes them
    itself (`transforms.DecodeRecord`), so a record that cannot be decoded is reported with its dataset, split
    and image id rather than failing inside tfds.

    A mix ('coco_voc+voc_sbd/aug', see `components`) is a `MixedSource` of each part's ``split`` (or the split
    the part names)."""
    parts = components(name)
    if len(parts) > 1:
        dataset_spec(name)  # the parts agree on their classes
        return MixedSource([(f"{dataset}:{own or split}", load_source(dataset, own or split, data_dir, decode=decode))
                            for dataset, own in parts])
    name, split = parts[0][0], parts[0][1] or split
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
