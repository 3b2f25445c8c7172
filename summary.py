"""Parameter / FLOP summary of a config's model, and one forward pass as a smoke check.

    python summary.py --config configs/voc.py
    python summary.py --config configs/voc.py --config.model.head=conv --config.model.kernel_size=7
    python summary.py --config configs/voc.py --config.model.backbone=resnet50_gcn --imagenet
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from gcn_jax import cli
from gcn_jax.errors import InputError
from gcn_jax.images import size_pair
from gcn_jax.models import ResNetClassifier, build_model, summary

cli.define_config_flag("Config file (configs/*.py).")
flags.DEFINE_string("image_size", None, "Input 'H,W' (default: the config's crop_size, or 224 with --imagenet).")
flags.register_validator(
    "image_size",
    lambda v: v is None or (len(v.split(",")) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in v.split(","))),
    message="--image_size must be two positive integers 'H,W', e.g. --image_size=512,512",
)
flags.DEFINE_bool("imagenet", False, "Summarise the backbone as an ImageNet classifier (Table 6 comparison).")
flags.DEFINE_bool("forward", True, "Also initialise the model and run one forward pass.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = FLAGS.config
    try:  # the model's own checks of the config (kernel size, backbone, head)
        if FLAGS.imagenet:
            model = ResNetClassifier(config.model.backbone, width=config.model.backbone_width)
            default = (224, 224)
        else:
            model = build_model(config.model)
            default = size_pair(config.crop_size, "crop_size")
    except ValueError as e:
        raise InputError(f"invalid config: {e}") from e
    h, w = (int(v) for v in FLAGS.image_size.split(",")) if FLAGS.image_size else default
    shape = (1, h, w, 3)
    width = "" if config.model.backbone_width == 64 else f", width {config.model.backbone_width}"
    print(f"model: {model.__class__.__name__}({config.model.backbone}{width}) on {jax.devices()[0].platform}")
    print(summary.format_summary(summary.summarize(model, shape)))
    if FLAGS.forward:
        start = time.perf_counter()
        x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
        variables = jax.jit(model.init)(jax.random.key(0), x)
        out = jax.block_until_ready(jax.jit(model.apply)(variables, x))
        seconds = time.perf_counter() - start
        finite = bool(np.isfinite(np.asarray(out)).all())
        print(f"forward: output {out.shape} {out.dtype}, finite={finite}, {seconds:.1f}s incl. compilation")
        if not finite:
            raise SystemExit("forward pass produced non-finite values")


if __name__ == "__main__":
    cli.run(main)
