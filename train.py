"""Train a GCN segmentation model; resumes from the newest checkpoint in --workdir.

    python train.py --config configs/synthetic.py --workdir runs/demo
    python train.py --config configs/voc.py --workdir runs/voc --config.model.pretrained=weights/resnet152.safetensors

Multi-host (Cloud TPU pods, GPU clusters): start the same command on every host; jax.distributed is started
when the environment names a cluster or with --distributed (see README).
"""

from gcn_jax import cli

cli.define_flags("Config file (configs/*.py).", distributed=True)


def main(argv):
    cli.start(argv)
    from gcn_jax.training.loop import train_and_evaluate

    train_and_evaluate(cli.FLAGS.config, cli.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
