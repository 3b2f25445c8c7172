"""Predict segmentation masks for image files with a training run's checkpoint.

    python predict.py --config configs/synthetic.py --workdir runs/demo images/ more/photo.jpg
    python predict.py --config configs/voc.py --workdir runs/voc --checkpoint=best --output=out photos/

For every image: <output>/<name>_mask.png (a VOC-format palette PNG: pixel values are class indices, viewers
show the PASCAL colours) and <name>_overlay.png (the colours blended over the image). Inference follows
config.eval (e.g. --config.eval.flip=True).
"""

import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file the run was trained with.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/).")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' (highest validation mIoU) or a step number.")
flags.DEFINE_string("output", None, "Folder for the PNGs (default: <workdir>/predictions).")
flags.register_validator("checkpoint", lambda v: v in ("latest", "best") or v.isdigit(),
                         message="--checkpoint must be 'latest', 'best' or a step number")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("name the images: image files and/or folders after the flags")
    from gcn_jax.evaluation import prediction
    from gcn_jax.evaluation.restore import restore_variables
    from gcn_jax.training.logger import quiet_library_logs

    quiet_library_logs()
    paths = prediction.find_images(argv[1:])
    which = int(FLAGS.checkpoint) if FLAGS.checkpoint.isdigit() else FLAGS.checkpoint
    model, variables, step = restore_variables(FLAGS.config, FLAGS.workdir, which)
    output = FLAGS.output or os.path.join(FLAGS.workdir, "predictions")
    predict_fn = prediction.make_predict_fn(model, variables, FLAGS.config.eval)
    for image, mask, _ in prediction.predict_files(predict_fn, paths, output):
        print(f"{image} -> {mask}")
    print(f"{len(paths)} images, checkpoint step {step}; masks and overlays in {output}")


if __name__ == "__main__":
    app.run(main)
