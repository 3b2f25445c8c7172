"""Export a training run's checkpoint as a `jax.export` artifact: inference (uint8 RGB images in, logits and
class map out) as StableHLO with the weights inside, which jax alone loads and runs, on cpu, cuda or tpu.

    python export.py --workdir runs/demo                        # -> runs/demo/export/
    python export.py --workdir runs/voc --checkpoint=best --output=voc_export

Writes <output>/model.jax_exported (`jax.export.Exported.serialize()` bytes) and <output>/metadata.json (class
names, palette, input and output conventions, checkpoint step, config); batch, height and width are symbolic.
The format is described in gcn_jax/evaluation/export.py. Only the plain forward pass is exported: a config
with multi-scale, flip or sliding-window inference (config.eval) is refused, since those need a static image
size or average probabilities instead of logits.
"""

import os

from absl import flags

from gcn_jax import cli, errors

cli.define_flags("Config file the run was trained with.", checkpoint=True)
flags.DEFINE_string("output", None, "Folder for model.jax_exported and metadata.json (default: <workdir>/export).")
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv)
    from gcn_jax import parallel
    from gcn_jax.data.datasets import dataset_spec
    from gcn_jax.evaluation import export
    from gcn_jax.training.checkpoints import load_variables

    mesh = parallel.make_mesh()
    config = cli.checked_config(mesh, "predict")
    export.check_options(config.eval)
    model, variables, step = load_variables(config, FLAGS.workdir, cli.checkpoint_choice(), mesh)
    output = FLAGS.output or os.path.join(FLAGS.workdir, "export")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as e:
        raise errors.InputError(f"cannot create the --output folder {output}: {e.strerror or e}") from e
    cli.check_writable(os.path.join(output, export.METADATA))
    exported = export.export_inference(model, variables)
    meta = export.metadata(config, step, exported, dataset_spec(config.data.name).class_names)
    for path in export.write(output, exported, meta):
        print(f"wrote {path}")
    print(f"checkpoint step {step}; images uint8 (batch, height, width, 3) -> logits, classes; "
          f"lowered for {', '.join(exported.platforms)}")


if __name__ == "__main__":
    cli.run(main)
