"""Evaluate a training run's checkpoint on the validation split: mIoU, per-class IoU, pixel accuracy and the
paper's boundary / interior accuracy (Table 5). Prints a table and writes <workdir>/eval_<step>.json, or, with
other options than a plain single-scale evaluation of the validation split, <workdir>/eval_<step>_<tag>.json
(`evaluate.results_name`); the file records the options.

    python eval.py --config configs/synthetic.py --workdir runs/demo
    python eval.py --config configs/voc.py --workdir runs/voc --checkpoint=best \\
        --config.eval.scales=0.5,0.75,1.0,1.25,1.5,1.75 --config.eval.flip=True
    python eval.py --config configs/cityscapes.py --workdir runs/cityscapes      # sliding 1024x1024 windows
"""

import json
import os
import time

from absl import flags

from gcn_jax import cli

cli.define_flags("Config file the run was trained with.", checkpoint=True, distributed=True)
flags.DEFINE_string("output", None, "JSON file for the results (default: <workdir>/eval_<step>.json, "
                    "eval_<step>_<tag>.json with other evaluation options).")
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv)
    import jax

    from gcn_jax import parallel
    from gcn_jax.evaluation import evaluate, metrics
    from gcn_jax.training.checkpoints import load_variables

    mesh = parallel.make_mesh()
    config = cli.checked_config(mesh, "eval")
    model, variables, step = load_variables(config, FLAGS.workdir, cli.checkpoint_choice(), mesh)
    options = evaluate.evaluation_options(config)
    output = FLAGS.output or os.path.join(FLAGS.workdir, evaluate.results_name(step, options))
    cli.check_writable(output)
    start = time.perf_counter()
    summary = evaluate.Evaluator(config, model, mesh)(variables, show_progress=True)
    seconds = time.perf_counter() - start
    if jax.process_index() == 0:
        print(f"checkpoint step {step} of {FLAGS.workdir}; {config.data.name} {config.data.eval_split}; "
              f"scales {options['scales']}, flip {options['flip']}, window {options['window']}; {seconds:.1f}s")
        print(metrics.format_table(summary))
        with open(output, "w") as f:
            json.dump({"step": step, "dataset": config.data.name, "split": config.data.eval_split,
                       "inference": evaluate.inference_options(config.eval), "options": options, **summary}, f,
                      indent=2)
        print(f"wrote {output}")


if __name__ == "__main__":
    cli.run(main)
