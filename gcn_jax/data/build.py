"""Builds a dataset of this project from the raw files, without TensorFlow.

    python -m gcn_jax.data.build voc_sbd/aug --manual_dir ~/data/voc --data_dir ~/tensorflow_datasets
    python -m gcn_jax.data.build cityscapes_fine --manual_dir ~/data/cityscapes
    python -m gcn_jax.data.build synthetic_shapes/default

tfds's own `tfds build --imports gcn_jax.data.datasets voc_sbd/aug --manual_dir ...` does the same where
TensorFlow is installed; its command line imports TensorFlow at start-up (tfds 4.9), this one does not. An
existing, complete build is left as it is; tfds writes a new one to a temporary folder and renames it only when done,
so a failed build leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import os
import sys

import tensorflow_datasets as tfds

from gcn_jax.data.datasets import dataset_spec  # also registers the builders
from gcn_jax.errors import GcnError, InputError, NotFoundError, report


def build(name: str, manual_dir: str | None = None, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Prepares dataset ``name`` ('builder/config') and returns its builder."""
    spec = dataset_spec(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if not spec.generated:
        if not manual_dir:
            raise InputError(f"{name} is built from files you provide: pass --manual_dir\n"
                             f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if not os.path.isdir(manual_dir):
            raise NotFoundError(f"--manual_dir {manual_dir} is not a directory")
    config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=config)
    return builder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="voc_sbd/voc, voc_sbd/aug, cityscapes_fine, synthetic_shapes/default, ...")
    parser.add_argument("--manual_dir", help="folder with the raw files (not needed for synthetic_shapes)")
    parser.add_argument("--data_dir", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks, also for errors in the raw files")
    args = parser.parse_args(argv)
    try:
        builder = build(args.name, args.manual_dir, args.data_dir)
    except GcnError as e:  # a missing or unreadable raw file: the message names it
        sys.exit(report(e, args.verbose))
    sizes = ", ".join(f"{s}: {info.num_examples}" for s, info in sorted(builder.info.splits.items()))
    print(f"{args.name} is ready in {builder.data_path} ({sizes})")


if __name__ == "__main__":
    main()
