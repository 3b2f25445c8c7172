"""Evaluate a training run's checkpoint on the validation split: mIoU, per-class IoU, pixel accuracy and the
paper's boundary / interior accuracy (Table 5). Prints a table and writes <workdir>/eval_<step>.json.

    python eval.py --config configs/synthetic.py --workdir runs/demo
    python eval.py --config configs/voc.py --workdir runs/voc --checkpoint=best \\
        --config.eval.scales=0.5,0.75,1.0,1.25,1.5,1.75 --config.eval.flip=True
    python eval.py --config configs/cityscapes.py --workdir runs/cityscapes      # sliding 1024x1024 windows
"""

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file the run was trained with.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/).")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' (highest validation mIoU) or a step number.")
flags.DEFINE_string("output", None, "JSON file for the results (default: <workdir>/eval_<step>.json).")
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when the environment names "
                  "a cluster).")
flags.register_validator("checkpoint", lambda v: v in ("latest", "best") or v.isdigit(),
                         message="--checkpoint must be 'latest', 'best' or a step number")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gcn_jax import parallel

    parallel.maybe_initialize_distributed(FLAGS.distributed)
    import jax

    from gcn_jax.config_checks import check_config
    from gcn_jax.evaluation import evaluate, metrics
    from gcn_jax.evaluation.restore import restore_variables
    from gcn_jax.training.logger import quiet_library_logs

    quiet_library_logs()

    config = FLAGS.config
    mesh = parallel.make_mesh()
    check_config(config, mesh.size, jax.process_count(), training=False)
    which = FLAGS.checkpoint if not FLAGS.checkpoint.isdigit() else int(FLAGS.checkpoint)
    model, variables, step = restore_variables(config, FLAGS.workdir, which, mesh)
    start = time.perf_counter()
    summary = evaluate.evaluate_config(config, model, variables, mesh)
    seconds = time.perf_counter() - start
    if jax.process_index() == 0:
        options = evaluate.inference_options(config.eval)
        print(f"checkpoint step {step} of {FLAGS.workdir}; {config.data.name} {config.data.eval_split}; "
              f"scales {options['scales']}, flip {options['flip']}, window {options['window']}; {seconds:.1f}s")
        print(metrics.format_table(summary))
        output = FLAGS.output or os.path.join(FLAGS.workdir, f"eval_{step}.json")
        with open(output, "w") as f:
            json.dump({"step": step, "dataset": config.data.name, "split": config.data.eval_split,
                       "inference": options, **summary}, f, indent=2)
        print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
