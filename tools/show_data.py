"""Writes a PNG grid of decoded, augmented examples with colour-coded masks, to check the pipeline by eye.

    python tools/show_data.py --config configs/voc.py --out voc_train.png
    python tools/show_data.py --config configs/voc.py --config.data.name=synthetic_shapes/default --num 12
    python tools/show_data.py --config configs/cityscapes.py --split validation --out cs_val.png
"""

import os
import sys

from absl import flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gcn_jax import cli  # noqa: E402
from gcn_jax.data import pipeline  # noqa: E402
from gcn_jax.data.visualize import example_grid  # noqa: E402

cli.define_config_flag("Config file (configs/*.py).")
flags.DEFINE_enum("split", "train", ["train", "validation"],
                  "train: augmented training crops; validation: full-resolution evaluation inputs (padded).")
flags.DEFINE_integer("num", 8, "How many examples.", lower_bound=1)
flags.DEFINE_integer("columns", 4, "Examples per row.", lower_bound=1)
flags.DEFINE_string("out", "data_examples.png", "Output PNG.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = FLAGS.config
    if FLAGS.split == "train":  # one batch of --num examples, from a single-process view
        loader = pipeline.train_loader(config.data, config.crop_size, FLAGS.num, process_index=0, process_count=1)
        batch = next(iter(loader))
        images, labels = batch["image"], batch["label"]
    else:
        loader, _ = pipeline.eval_loader(config.data, FLAGS.num, process_index=0, process_count=1)
        batch = next(iter(loader))
        keep = batch["index"] >= 0
        images, labels = batch["image"][keep], batch["label"][keep]
    Image.fromarray(example_grid(images, labels, FLAGS.columns)).save(FLAGS.out)
    print(f"wrote {FLAGS.out}: {len(labels)} {FLAGS.split} examples of {config.data.name}, "
          f"{images.shape[1]}x{images.shape[2]}")


if __name__ == "__main__":
    cli.run(main)
