"""The grain input pipeline over tfds array_record datasets (`tfds.data_source`; no TensorFlow at run time).

Training: each process reads its own shard of the split (grain `ShardOptions`: contiguous blocks, sizes
differing by at most one), shuffles it with a seeded, per-epoch permutation, repeats forever and yields its
part of the global batch (`global_batch_size / process_count` examples). Random augmentation draws come
from grain's per-record generator, so a batch depends only on (seed, step), never on the number of worker
processes. The iterator is grain's checkpointable one: `it.get_state()` / `it.set_state(state)`.

Evaluation: each process reads a contiguous block of the split, padded with empty examples (mask all false)
to the same number of batches on every process, so every example is seen exactly once and no process waits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import grain
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from gcn_jax.data import cityscapes, common, synthetic, voc_sbd
from gcn_jax.data.transforms import EvalTransform, TrainTransform


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline and the metrics need to know about a dataset's labels."""

    num_classes: int
    class_names: tuple[str, ...]
    label_lut: np.ndarray | None = None  # stored label value -> class index (255 = ignore), applied on read
    generated: bool = False  # built from nothing (no manual_dir): built on first use


DATASETS = {
    "voc_sbd": DatasetSpec(voc_sbd.NUM_CLASSES, voc_sbd.CLASS_NAMES),
    "cityscapes_fine": DatasetSpec(cityscapes.NUM_CLASSES, cityscapes.CLASS_NAMES, cityscapes.TRAIN_ID_LUT),
    "synthetic_shapes": DatasetSpec(synthetic.NUM_CLASSES, synthetic.CLASS_NAMES, generated=True),
}


def dataset_spec(name: str) -> DatasetSpec:
    """Spec of a dataset given as 'builder' or 'builder/config' (e.g. 'voc_sbd/aug')."""
    base = name.split("/")[0].split(":")[0]
    if base not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)} (optionally '/config')")
    return DATASETS[base]


def load_source(name: str, split: str, data_dir: str | None = None):
    """The random-access tfds source of one split. The synthetic set is generated on first use; any other
    dataset that is not built yet is an error that says how to build it."""
    spec = dataset_spec(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not spec.generated:
            raise FileNotFoundError(
                f"dataset {name} is not built in {builder.data_dir}. Build it once from the raw files with\n"
                f"  python -m gcn_jax.data.build {name} --manual_dir <dir with the raw files>"
                + (f" --data_dir {data_dir}" if data_dir else "")
            )
        builder.download_and_prepare()
    splits = builder.info.splits
    if split not in splits:
        raise ValueError(f"dataset {name} has no split {split!r}; it has {sorted(splits)}")
    return builder.as_data_source(split=split)


class _Records:
    """Random-access source: records ``indices`` of ``source`` with their index attached, then ``length -
    len(indices)`` empty padding records (index -1)."""

    def __init__(self, source, indices: Sequence[int] | None = None, length: int | None = None):
        self.source = source
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
        self.length = len(self.indices) if length is None else length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:  # grain checks a restored iterator state against repr(data_source)
        return f"_Records({self.source!r}, records={len(self.indices)}, length={self.length})"

    def __getitem__(self, i: int) -> dict:
        if i < len(self.indices):
            index = int(self.indices[i])
            return {**self.source[index], "index": index}
        return {"image": np.zeros((1, 1, 3), np.uint8), "label": np.full((1, 1, 1), common.IGNORE_LABEL, np.uint8),
                "image_id": b"", "index": -1}


def _grain_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app (a notebook, pytest) use their defaults."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} does not split evenly over {process_count} processes")
    return global_batch_size // process_count


def _pair(size) -> tuple[int, int]:
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size {size}: expected a positive int or (height, width)")
    return int(size[0]), int(size[1])


def train_loader(source, spec: DatasetSpec, *, crop_size, global_batch_size: int, seed: int, augment: str = "strong",
                 scale_range: Sequence[float] = (0.5, 2.0), photometric: bool = False, worker_count: int = 0,
                 worker_buffer_size: int = 2, read_threads: int = 4, process_index: int | None = None,
                 process_count: int | None = None) -> grain.DataLoader:
    """An endless, shuffled, augmented loader of this process's batches: {'image': float32 (local_batch, crop_h,
    crop_w, 3), 'label': int32 (local_batch, crop_h, crop_w), 'index': int32 (local_batch,)}."""
    _grain_flags_parsed()
    process_index, process_count = _process(process_index, process_count)
    batch = local_batch_size(global_batch_size, process_count)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shuffle=True, seed=seed, num_epochs=None,
        shard_options=grain.sharding.ShardOptions(process_index, process_count, drop_remainder=False),
    )
    transform = TrainTransform(_pair(crop_size), augment, scale_range, photometric, spec.label_lut)
    return grain.DataLoader(
        data_source=_Records(source), sampler=sampler,
        operations=[transform, grain.transforms.Batch(batch, drop_remainder=True)],
        worker_count=worker_count, worker_buffer_size=worker_buffer_size,
        read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch, 8)),
    )


def eval_shard(num_records: int, global_batch_size: int, process_index: int, process_count: int
               ) -> tuple[np.ndarray, int]:
    """This process's record indices (a contiguous block) and the number of batches every process runs."""
    batch = local_batch_size(global_batch_size, process_count)
    blocks = np.array_split(np.arange(num_records), process_count)
    num_batches = math.ceil(len(blocks[0]) / batch)  # the first block is the largest
    return blocks[process_index], num_batches


def eval_loader(source, spec: DatasetSpec, *, pad_size, global_batch_size: int, worker_count: int = 0,
                read_threads: int = 4, process_index: int | None = None, process_count: int | None = None
                ) -> tuple[grain.DataLoader, int]:
    """One pass over the split: (loader, number of batches). Batches hold full-resolution images padded to
    ``pad_size``: {'image': float32 (b, pad_h, pad_w, 3), 'label': int32, 'mask': bool (b, pad_h, pad_w),
    'height', 'width', 'index': int32 (b,)}; only pixels where 'mask' is true count."""
    _grain_flags_parsed()
    process_index, process_count = _process(process_index, process_count)
    batch = local_batch_size(global_batch_size, process_count)
    indices, num_batches = eval_shard(len(source), global_batch_size, process_index, process_count)
    records = _Records(source, indices, length=num_batches * batch)
    loader = grain.DataLoader(
        data_source=records,
        sampler=grain.samplers.IndexSampler(num_records=len(records), shuffle=False, num_epochs=1),
        operations=[EvalTransform(_pair(pad_size), spec.label_lut), grain.transforms.Batch(batch)],
        worker_count=worker_count,
        read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch, 4)),
    )
    return loader, num_batches


def train_loader_from_config(config, *, process_index: int | None = None, process_count: int | None = None):
    """`train_loader` for ``config.data`` / ``config.crop_size`` / ``config.global_batch_size``."""
    d = config.data
    source = load_source(d.name, d.train_split, d.data_dir)
    return train_loader(source, dataset_spec(d.name), crop_size=config.crop_size,
                        global_batch_size=config.global_batch_size, seed=d.seed, augment=d.augment,
                        scale_range=d.scale_range, photometric=d.photometric, worker_count=d.worker_count,
                        worker_buffer_size=d.worker_buffer_size, read_threads=d.read_threads,
                        process_index=process_index, process_count=process_count)


def eval_loader_from_config(config, *, process_index: int | None = None, process_count: int | None = None):
    """`eval_loader` for ``config.data`` / ``config.eval_batch_size``: (loader, number of batches)."""
    d = config.data
    source = load_source(d.name, d.eval_split, d.data_dir)
    return eval_loader(source, dataset_spec(d.name), pad_size=d.eval_pad_size,
                       global_batch_size=config.eval_batch_size, worker_count=d.worker_count,
                       read_threads=d.read_threads, process_index=process_index, process_count=process_count)
