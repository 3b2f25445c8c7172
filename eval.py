"""Evaluate a training run's checkpoint on the validation split: mIoU, per-class IoU, pixel accuracy and the
paper's boundary / interior accuracy (Table 5). Prints a table and writes <workdir>/eval_<step>.json, or, with
other options than a plain single-scale evaluation of the validation split, <workdir>/eval_<step>_<tag>.json
(`evaluate.results_name`); the file records the options. Beside it, <name>_confusion.png (the confusion matrix as
a heat map) and <name>_examples.png (config.eval.examples_random random and examples_worst worst examples:
image, label, prediction, errors).

    python eval.py --config configs/synthetic.py --workdir runs/demo
    python eval.py --config configs/voc.py --workdir runs/voc --checkpoint=best \\
        --config.eval.scales=0.5,0.75,1.0,1.25,1.5,1.75 --config.eval.flip=True
    python eval.py --workdir runs/voc --config.eval.crf=True    # + dense CRF (pip install -r requirements-crf.txt)
    python eval.py --config configs/cityscapes.py --workdir runs/cityscapes      # sliding 1024x1024 windows
"""

import json
import os
import time

from absl import flags

from gcn_jax import cli

cli.define_flags("Config file the run was trained with.", checkpoint=True, distributed=True)
flags.DEFINE_string("output", None, "JSON file for the results (default: <workdir>/eval_<step>.json, "
                    "eval_<step>_<tag>.json with other evaluation options); the pictures go beside it as "
                    "<name>_confusion.png and <name>_examples.png.")
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv)
    import jax

    from gcn_jax import parallel
    from gcn_jax.data.datasets import eval_dataset
    from gcn_jax.evaluation import evaluate, metrics
    from gcn_jax.training.checkpoints import load_variables

    mesh = parallel.make_mesh()
    config = cli.checked_config(mesh, "eval")
    model, variables, step = load_variables(config, FLAGS.workdir, cli.checkpoint_choice(), mesh)
    options = evaluate.evaluation_options(config)
    output = FLAGS.output or os.path.join(FLAGS.workdir, evaluate.results_name(step, options))
    cli.check_writable(output)
    start = time.perf_counter()
    evaluator = evaluate.Evaluator(config, model, mesh)
    summary, per_image = evaluator.evaluate(variables, show_progress=True)
    seconds = time.perf_counter() - start
    # On every process: predicted on the whole mesh. At most 3072 px wide (a row of four Cityscapes images is 8192).
    examples = evaluator.example_picture(variables, per_image, max_width=3072)
    dataset = eval_dataset(config.data.name)  # of a mix, the last part
    if jax.process_index() == 0:
        print(f"checkpoint step {step} of {FLAGS.workdir}; {dataset} {config.data.eval_split}; "
              f"scales {options['scales']}, flip {options['flip']}, window {options['window']}, "
              f"CRF {'on' if options['crf'] else 'off'}; {seconds:.1f}s")
        print(metrics.format_table(summary))
        with open(output, "w") as f:
            json.dump({"step": step, "dataset": dataset, "split": config.data.eval_split,
                       "inference": evaluate.inference_options(config.eval), "options": options, **summary}, f,
                      indent=2)
        print(f"wrote {output}")
        for path in write_pictures(output, summary, examples, f"{dataset} {config.data.eval_split}", step):
            print(f"wrote {path}")


def write_pictures(output: str, summary: dict, examples, dataset: str, step: int) -> list[str]:
    """<stem>_confusion.png (the row-normalised confusion matrix) and, if drawn, <stem>_examples.png, next to
    the JSON ``output``."""
    from PIL import Image

    from gcn_jax.evaluation import pictures

    stem = os.path.splitext(output)[0]
    miou = "—" if summary["miou"] is None else f"{100 * summary['miou']:.2f}%"
    heatmap = pictures.confusion_heatmap(summary["confusion_matrix"]["counts"], list(summary["per_class_iou"]),
                                         f"{dataset}, step {step}: mIoU {miou}")
    written = [f"{stem}_confusion.png"]
    Image.fromarray(heatmap.image).save(written[0])
    if examples is not None:
        written.append(f"{stem}_examples.png")
        Image.fromarray(examples).save(written[1])
    return written


if __name__ == "__main__":
    cli.run(main)
