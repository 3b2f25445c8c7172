"""Builds a dataset of this project from the raw files, without TensorFlow.

    python -m gcn_jax.data.build voc_sbd/aug --manual_dir ~/data/voc --data_dir ~/tensorflow_datasets
    python -m gcn_jax.data.build cityscapes_fine --manual_dir ~/data/cityscapes
    python -m gcn_jax.data.build coco_voc --manual_dir ~/data/coco
    python -m gcn_jax.data.build synthetic_shapes/default

tfds's own `tfds build --imports gcn_jax.data.datasets voc_sbd/aug --manual_dir ...` does the same where
TensorFlow is installed; its command line imports TensorFlow at start-up (tfds 4.9), this one does not. tfds writes
a new build to a temporary folder and renames it only when done, so a failed build leaves nothing half-written
behind. An existing, complete build is kept as it is (the command says so): raw files changed since are not read.
``--overwrite`` rebuilds it; the new build is made beside the old one, which it replaces only once complete (tfds's
own overwrite deletes the old build first, so a failed rebuild would leave none).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile

import tensorflow_datasets as tfds

from gcn_jax.data.datasets import dataset_spec  # also registers the builders
from gcn_jax.errors import GcnError, InputError, NotFoundError, report

REBUILD_PREFIX = ".rebuild-"  # the temporary folders of --overwrite, inside the data_dir


def existing_build(name: str, data_dir: str | None = None) -> str | None:
    """The folder of a complete build of dataset ``name`` in ``data_dir``, or None where there is none."""
    dataset_spec(name)  # an unknown name is an InputError, not tfds's error
    _put_back_interrupted_swaps(os.fspath(tfds.builder(name, data_dir=data_dir).data_dir_root))
    builder = tfds.builder(name, data_dir=data_dir)
    return os.fspath(builder.data_path) if builder.is_prepared() else None


def build(name: str, manual_dir: str | None = None, data_dir: str | None = None,
          overwrite: bool = False) -> tfds.core.DatasetBuilder:
    """Prepares dataset ``name`` ('builder/config') and returns its builder. A complete build already there is
    kept as it is, unless ``overwrite``: then it is rebuilt and replaced only once the new build is complete."""
    spec = dataset_spec(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if not spec.generated:
        if not manual_dir:
            raise InputError(f"{name} is built from files you provide: pass --manual_dir\n"
                             f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if not os.path.isdir(manual_dir):
            raise NotFoundError(f"--manual_dir {manual_dir} is not a directory")
    config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(manual_dir) if manual_dir else None)
    _put_back_interrupted_swaps(os.fspath(builder.data_dir_root))
    builder = tfds.builder(name, data_dir=data_dir)  # sees a build put back
    if overwrite and builder.is_prepared():
        _rebuild_beside(name, builder, config)
        return tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=config)
    return builder


def _rebuild_beside(name: str, builder: tfds.core.DatasetBuilder, config) -> None:
    """Builds ``name`` again in a temporary data_dir inside ``builder``'s (the same file system) and swaps it in
    for ``builder``'s complete build with two renames, only once it is complete: a failed rebuild leaves the old
    build as it was. The temporary folder, holding the old build after the swap, is then deleted."""
    final = os.fspath(builder.data_path)
    staging = tempfile.mkdtemp(prefix=REBUILD_PREFIX, dir=os.fspath(builder.data_dir_root))
    try:
        fresh = tfds.builder(name, data_dir=staging)
        fresh.download_and_prepare(download_config=config)
        previous = os.path.join(staging, "previous")
        with open(os.path.join(staging, "target"), "w") as f:  # where `previous` belongs, should we be killed
            f.write(final)
        os.rename(final, previous)
        try:
            os.rename(os.fspath(fresh.data_path), final)
        except OSError:
            os.rename(previous, final)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _put_back_interrupted_swaps(data_dir_root: str) -> None:
    """A rebuild killed between its two renames leaves the old build in ``.rebuild-*/previous`` and none in
    its place: put it back (and say so), so that no build is ever lost."""
    for staging in sorted(glob.glob(os.path.join(data_dir_root, REBUILD_PREFIX + "*"))):
        previous, target = os.path.join(staging, "previous"), os.path.join(staging, "target")
        if not (os.path.isdir(previous) and os.path.isfile(target)):
            continue
        with open(target) as f:
            final = f.read()
        if not os.path.exists(final):
            os.rename(previous, final)
            print(f"put back the build {final}, which an interrupted --overwrite had left in {previous}")
            shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="voc_sbd/voc, voc_sbd/aug, coco_voc, cityscapes_fine, cityscapes_coarse, "
                                     "synthetic_shapes/default, ...")
    parser.add_argument("--manual_dir", help="folder with the raw files (not needed for synthetic_shapes)")
    parser.add_argument("--data_dir", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild a complete build from the raw files as they are now; the old build is "
                             "replaced only once the new one is complete")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks, also for errors in the raw files")
    args = parser.parse_args(argv)
    # tfds draws its bars (examples written, rate) even into a log file; only a terminal gets them here. (Not
    # `progress.shown`: asking jax for the process index would start jax, which on a GPU reserves its memory.)
    (tfds.enable_progress_bar if sys.stderr.isatty() else tfds.disable_progress_bar)()
    try:
        kept = None if args.overwrite else existing_build(args.name, args.data_dir)
        builder = build(args.name, args.manual_dir, args.data_dir, overwrite=args.overwrite)
    except GcnError as e:  # a missing or unreadable raw file: the message names it
        sys.exit(report(e, args.verbose))
    sizes = ", ".join(f"{s}: {info.num_examples}" for s, info in sorted(builder.info.splits.items()))
    if kept:
        print(f"{args.name}: an existing build in {kept} was kept ({sizes}); nothing was rebuilt, and raw files "
              f"changed since it was built were not read. To rebuild from them, run this again with --overwrite "
              f"(the kept build is replaced only once the new one is complete), or delete {kept} first.")
    else:
        print(f"{args.name} is ready in {builder.data_path} ({sizes})")


if __name__ == "__main__":
    main()
