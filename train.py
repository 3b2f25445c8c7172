"""Train a GCN segmentation model; resumes from the newest checkpoint in --workdir.

    python train.py --config configs/synthetic.py --workdir runs/demo
    python train.py --config configs/voc.py --workdir runs/voc --config.model.pretrained=weights/resnet152.safetensors

Multi-host (Cloud TPU pods, GPU clusters): start the same command on every host; jax.distributed is started
when the environment names a cluster or with --distributed (see README).
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard summaries.")
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when the environment names a "
                  "cluster, e.g. JAX_COORDINATOR_ADDRESS, Slurm, Open MPI or a Cloud TPU pod).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gcn_jax import parallel

    parallel.maybe_initialize_distributed(FLAGS.distributed)  # before any other JAX call
    from gcn_jax.training.logger import quiet_library_logs
    from gcn_jax.training.loop import train_and_evaluate

    quiet_library_logs()

    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
