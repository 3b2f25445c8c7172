"""Speed of the layers this project computes its own way, each against the flax/lax form it replaces (same
parameters, same function: tests/test_resnet.py and tests/test_blocks.py check that), forward and forward +
backward (gradients with respect to the input and the parameters), jitted, on the default device, at the
shapes of ResNet-50 GCN on 256 x 256 images, batch 2:

- ``line_conv``: a GCN block's first k x 1 / 1 x k convolution, from each stage's features to 21 classes
  (`blocks.LineConv`: one matrix product and a shifted sum) against `nn.Conv`;
- ``max_pool``: the stem's 3 x 3 / 2 max-pool (`resnet.max_pool_3x3_s2`) against `nn.max_pool`;
- ``conv``: the 3 x 3 convolutions of the bottlenecks (res-2..res-5, and the strided first ones of res-3..res-5)
  and of the BR blocks at full and half resolution, with `gcn_jax.models.conv`'s gradients (`blocks.Conv`)
  against `nn.Conv`;
- ``stem``: the stem's 7 x 7 / 2 convolution on the image, with the kernel gradient only (the network takes no
  input gradient there), `gcn_jax.models.conv`'s gradients (`blocks.Conv`, as `resnet.Conv` computes it) against
  `nn.Conv`;
- ``pointwise``: the 1 x 1 convolutions of the bottlenecks as matrix products when training
  (`resnet.Conv(pointwise_matmul=True)`, `conv.pointwise_conv`) against the einsum with autodiff's gradient.

    python -m benchmarks.layers
    python -m benchmarks.layers --layers line_conv --reps 9

A layer alone can gain more or less than it does inside the network, where XLA fuses it with its
neighbours: `benchmarks/train_step.py` measures the network. Timing as in `benchmarks/deconv.py`: median
[min-max] over --reps repetitions of --iters calls, ms per call, the methods timed in turn in each repetition.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.deconv import timed
from gcn_jax.models.blocks import Conv, LineConv
from gcn_jax.models.resnet import Conv as BackboneConv, max_pool_3x3_s2

STAGES = ((64, 256), (32, 512), (16, 1024), (8, 2048))  # (map side, channels) of res-2..res-5 at 256^2


def line_conv_cases(k: int, classes: int):
    for side, c in STAGES:
        for shape in ((k, 1), (1, k)):
            pad = ((shape[0] // 2,) * 2, (shape[1] // 2,) * 2)
            yield (f"{side}x{side}x{c}:{shape[0]}x{shape[1]}", (side, c),
                   {"LineConv": LineConv(classes, shape), "nn.Conv": nn.Conv(classes, shape, padding=pad,
                                                                            use_bias=False)})


class _FlaxPool(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class _OurPool(nn.Module):
    @nn.compact
    def __call__(self, x):
        return max_pool_3x3_s2(x)


def conv_cases(classes: int):
    pad = ((1, 1), (1, 1))
    for side, c, stride in ((64, 64, 1), (32, 128, 1), (16, 256, 1), (8, 512, 1), (256, classes, 1),
                            (128, classes, 1), (64, 128, 2), (32, 256, 2), (16, 512, 2)):
        yield (f"{side}x{side}x{c}:3x3" + ("/2" if stride == 2 else ""), (side, c),
               {"Conv": Conv(c, (3, 3), stride, padding=pad, use_bias=False),
                "nn.Conv": nn.Conv(c, (3, 3), stride, padding=pad, use_bias=False)})


class _EinsumPointwise(nn.Module):
    """The 1 x 1 convolution as the plain einsum `conv.pointwise_conv` replaced (autodiff's gradient)."""
    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features))
        return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])


def pointwise_cases():
    for side, c, o in ((64, 256, 64), (64, 64, 256), (32, 512, 128), (32, 128, 512), (8, 2048, 512), (8, 512, 2048)):
        yield (f"{side}x{side}x{c}:1x1->{o}", (side, c),
               {"ours": BackboneConv(o, (1, 1), pointwise_matmul=True), "einsum": _EinsumPointwise(o)})


def stem_cases():
    pad = ((3, 3), (3, 3))  # on the image: the network takes no input gradient here, so neither does the timing
    yield "256x256x3:7x7/2->64", (256, 3), {"Conv": Conv(64, (7, 7), 2, padding=pad, use_bias=False),
                                            "nn.Conv": nn.Conv(64, (7, 7), 2, padding=pad, use_bias=False)}


def max_pool_cases():
    yield "128x128x64", (128, 64), {"ours": _OurPool(), "nn.max_pool": _FlaxPool()}


def functions(module, input_gradient: bool = True):
    """(forward, forward + backward) of a module, jitted, both called as f(variables, x, cotangent): every
    array is an argument, so that XLA cannot fold any of the work into constants. The backward pass gives the
    gradients with respect to the parameters and (``input_gradient``) the input."""

    def forward(variables, x, cot):
        del cot
        return module.apply(variables, x)

    def backward(variables, x, cot):
        def loss(params, x):
            return jnp.vdot(module.apply({**variables, "params": params}, x), cot)
        return jax.grad(loss, argnums=(0, 1) if input_gradient else 0)(variables.get("params", {}), x)

    return jax.jit(forward), jax.jit(backward)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    layers = ["line_conv", "max_pool", "conv", "stem", "pointwise"]
    parser.add_argument("--layers", nargs="+", default=layers, choices=layers)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--kernel-size", type=int, default=15)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}; ms per call, median [min-max] of "
          f"{args.reps} reps x {args.iters} calls")
    print(f"{'layer':>10} {'shape':>22} {'method':>13} {'fwd':>20} {'fwd+bwd':>20}")
    rng = np.random.default_rng(0)
    cases = {"line_conv": lambda: line_conv_cases(args.kernel_size, args.classes), "max_pool": max_pool_cases,
             "conv": lambda: conv_cases(args.classes), "stem": stem_cases, "pointwise": pointwise_cases}
    for layer in args.layers:
        for label, (side, c), modules in cases[layer]():
            x = jnp.asarray(3 + 2 * rng.standard_normal((args.batch, side, side, c)), jnp.float32)
            fns = {}
            for name, module in modules.items():
                fns[name, "fwd"], fns[name, "bwd"] = functions(module, input_gradient=layer != "stem")
            # each pair has the same variables (that is the point of the rewrites): one set serves both
            variables = next(iter(modules.values())).init(jax.random.key(0), x)
            out = jax.eval_shape(fns[next(iter(modules)), "fwd"], variables, x, None)
            cot = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
            result = timed(fns, (variables, x, cot), args.reps, args.iters)
            for name in modules:
                cells = [f"{m:6.2f} [{lo:.1f}-{hi:.1f}]" for m, lo, hi in (result[name, "fwd"], result[name, "bwd"])]
                print(f"{layer:>10} {label:>22} {name:>13} {cells[0]:>20} {cells[1]:>20}", flush=True)


if __name__ == "__main__":
    main()
