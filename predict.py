"""Predict segmentation masks for image files with a training run's checkpoint.

    python predict.py --config configs/synthetic.py --workdir runs/demo images/ more/photo.jpg
    python predict.py --config configs/voc.py --workdir runs/voc --checkpoint=best --output=out photos/

For every image: <output>/<name>_mask.png (a VOC-format palette PNG: pixel values are class indices, viewers
show the PASCAL colours) and <name>_overlay.png (the colours blended over the image). Inference follows
config.eval (e.g. --config.eval.flip=True; --config.eval.crf=True adds the dense CRF, README "Evaluation"). For
the benchmarks' test servers, --format=voc writes <output>/results/VOC2012/Segmentation/comp6_test_cls/<name>.png
and --format=cityscapes <output>/<name>.png of Cityscapes label ids (gcn_jax/evaluation/prediction.py).
"""

import os

from absl import app, flags

from gcn_jax import cli, errors

cli.define_flags("Config file the run was trained with.", checkpoint=True)
flags.DEFINE_string("output", None, "Folder for the PNGs (default: <workdir>/predictions).")
flags.DEFINE_enum("format", "default", ["default", "voc", "cityscapes"],
                  "default: masks and overlays; voc / cityscapes: the files each benchmark's test server takes.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("name the images: image files and/or folders after the flags", exitcode=errors.EXIT_ERROR)
    cli.start(argv, takes_paths=True)
    from gcn_jax import parallel
    from gcn_jax.evaluation import prediction
    from gcn_jax.training.checkpoints import load_variables

    paths = prediction.find_images(argv[1:])
    mesh = parallel.make_mesh()
    config = cli.checked_config(mesh, "predict")
    prediction.check_format(FLAGS.format, config.model.num_classes)
    model, variables, step = load_variables(config, FLAGS.workdir, cli.checkpoint_choice(), mesh)
    output = FLAGS.output or os.path.join(FLAGS.workdir, "predictions")
    predict_fn = prediction.make_predict_fn(model, variables, config.eval)
    written, failed = prediction.predict_files(predict_fn, paths, output, FLAGS.format)
    for image, first, *_ in written:
        print(f"{image} -> {first}")
    what = "masks and overlays" if FLAGS.format == "default" else f"{FLAGS.format} server files"
    print(f"{len(written)} images, checkpoint step {step}; {what} in {output}")
    if failed:
        raise errors.InputError(f"{len(failed)} of {len(paths)} images could not be read:\n  "
                                + "\n  ".join(reason for _, reason in failed))


if __name__ == "__main__":
    cli.run(main)
