"""The grain input pipeline over tfds array_record datasets (`tfds.data_source`; no TensorFlow at run time).

Both loaders take the config's `data` section and read what they need from it.

Training: one seeded, per-epoch shuffle of the whole split, repeated forever; process p of n takes elements
p, p + n, p + 2n, ... of it (grain's `ShardOptions`, given to the `DataLoader`). Random augmentation draws
come from grain's per-record generator, so 0 and 1 worker processes give the same batches; with 2 or more,
grain hands each worker whole batches in turn and the batches depend on `worker_count`. The iterator is
grain's checkpointable one: `it.get_state()` / `it.set_state(state)`.

Records are read with their image and label undecoded and decoded by the first transform, `DecodeRecord`, which
names the dataset, split and image id of a record it cannot decode.

Evaluation: each process reads a contiguous block of the split, padded with empty examples (mask all false)
to the same number of batches on every process, so every example is seen exactly once and no process waits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grain
import numpy as np
from absl import flags

from gcn_jax.data.datasets import components, dataset_spec, eval_dataset, load_source, source_repr
from gcn_jax.data.transforms import DecodeRecord, EvalTransform, TrainTransform
from gcn_jax.images import size_pair
from gcn_jax.labels import IGNORE_LABEL


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
        return f"_Records({source_repr(self.source)}, records={len(self.indices)}, length={self.length})"

    def __getitem__(self, i: int) -> dict:
        if i < len(self.indices):
            index = int(self.indices[i])
            return {**self.source[index], "index": index}
        return {"image": np.zeros((1, 1, 3), np.uint8), "label": np.full((1, 1, 1), IGNORE_LABEL, np.uint8),
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


def train_loader(data_config, crop_size, global_batch_size: int, *, source=None, process_index: int | None = None,
                 process_count: int | None = None) -> grain.DataLoader:
    """An endless, shuffled, augmented loader of this process's batches of ``data_config.train_split``:
    {'image': uint8 RGB (local_batch, crop_h, crop_w, 3), 'label': uint8 (local_batch, crop_h, crop_w), 'mask':
    bool (local_batch, crop_h, crop_w), false on padding, 'index': int32 (local_batch,) record indices}; the
    images are normalised on the device (`images.model_input`). ``source`` replaces the split's tfds source (tests)."""
    d = data_config
    _grain_flags_parsed()
    process_index, process_count = _process(process_index, process_count)
    batch = local_batch_size(global_batch_size, process_count)
    source = load_source(d.name, d.train_split, d.data_dir, decode=False) if source is None else source
    sampler = grain.samplers.IndexSampler(num_records=len(source), shuffle=True, seed=d.seed, num_epochs=None)
    transform = TrainTransform(size_pair(crop_size, "crop_size"), d.augment, d.scale_range, d.photometric,
                               dataset_spec(d.name).label_lut)
    return grain.DataLoader(
        data_source=_Records(source), sampler=sampler,
        operations=[DecodeRecord(*_train_part(d)), transform, grain.transforms.Batch(batch, drop_remainder=True)],
        shard_options=grain.sharding.ShardOptions(process_index, process_count, drop_remainder=False),
        worker_count=d.worker_count, worker_buffer_size=d.worker_buffer_size,
        read_options=grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=max(2 * batch, 8)),
    )


def _train_part(data_config) -> tuple[str, str]:
    """(dataset, split) that a record of the training source comes from, unless it names its part (a mix)."""
    dataset, split = components(data_config.name)[0]
    return dataset, split or data_config.train_split


def eval_shard(num_records: int, global_batch_size: int, process_index: int, process_count: int
               ) -> tuple[np.ndarray, int]:
    """This process's record indices (a contiguous block) and the number of batches every process runs."""
    batch = local_batch_size(global_batch_size, process_count)
    blocks = np.array_split(np.arange(num_records), process_count)
    num_batches = math.ceil(len(blocks[0]) / batch)  # the first block is the largest
    return blocks[process_index], num_batches


def eval_loader(data_config, global_batch_size: int, *, source=None, process_index: int | None = None,
                process_count: int | None = None) -> tuple[grain.DataLoader, int]:
    """One pass over ``data_config.eval_split``: (loader, number of batches). Batches hold full-resolution
    images padded to ``data_config.eval_pad_size``: {'image': uint8 RGB (b, pad_h, pad_w, 3), 'label': int32,
    'mask': bool (b, pad_h, pad_w), 'index': int32 (b,), -1 for padding examples}; only pixels where 'mask'
    is true count. ``source``: the split's tfds source read undecoded, if already open (or a test's)."""
    d = data_config
    _grain_flags_parsed()
    process_index, process_count = _process(process_index, process_count)
    batch = local_batch_size(global_batch_size, process_count)
    source = load_source(eval_dataset(d.name), d.eval_split, d.data_dir, decode=False) if source is None else source
    indices, num_batches = eval_shard(len(source), global_batch_size, process_index, process_count)
    records = _Records(source, indices, length=num_batches * batch)
    loader = grain.DataLoader(
        data_source=records,
        sampler=grain.samplers.IndexSampler(num_records=len(records), shuffle=False, num_epochs=1),
        operations=[DecodeRecord(eval_dataset(d.name), d.eval_split),
                    EvalTransform(size_pair(d.eval_pad_size, "eval_pad_size"), dataset_spec(d.name).label_lut),
                    grain.transforms.Batch(batch)],
        shard_options=grain.sharding.NoSharding(),
        worker_count=d.worker_count,
        read_options=grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=max(2 * batch, 4)),
    )
    return loader, num_batches


def eval_examples(data_config, source, indices: Sequence[int]) -> dict:
    """Records ``indices`` of ``source`` (the eval split read undecoded, as `eval_loader` reads it) prepared as
    `eval_loader` prepares them, stacked in the order given: {'image', 'label', 'mask', 'index'}; an index -1
    is a padding example."""
    d = data_config
    records, padding = _Records(source), _Records(source, [], length=1)
    decode = DecodeRecord(eval_dataset(d.name), d.eval_split)
    prepare = EvalTransform(size_pair(d.eval_pad_size, "eval_pad_size"), dataset_spec(d.name).label_lut)
    elements = [prepare.map(decode.map(records[int(i)] if i >= 0 else padding[0])) for i in indices]
    return {key: np.stack([e[key] for e in elements]) for key in ("image", "label", "mask", "index")}
