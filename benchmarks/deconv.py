"""Speed of three ways of computing `Deconv2x` (the x2 transposed convolution), forward and forward+backward
(gradients with respect to the input and the kernel), jitted, on the default device:

- ``dilated``: a convolution of the input dilated with zeros (``lhs_dilation=2``), as Deconv2x was first
  written; three quarters of its multiply-adds hit the inserted zeros;
- ``one_conv``: one stride-1 convolution whose 4C output channels are the four output phases (their taps
  gathered into a common D x D window, zeros where a phase has fewer taps), then a depth-to-space interleave;
- ``per_phase``: four convolutions, each with exactly its phase's taps, then the interleave (what Deconv2x
  computes now: `blocks.phase_deconv`);
- ``im2col``: ``one_conv`` with its convolution written as one matrix product of shifted input copies.

    python -m benchmarks.deconv         # C=21, batch 2, 64->128 and 128->256, k=3 and 4
    python -m benchmarks.deconv --sizes 128 --kernel-sizes 3 --reps 9

Prints the median over --reps repetitions (min-max in brackets) of --iters calls each, in ms per call, after
compilation and a warm-up call; every call ends when the device is done. Within a repetition every method is
timed in turn, so that a change in the machine's load does not favour one of them.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from gcn_jax.models.blocks import deconv_phase, phase_deconv


def dilated(x, kernel):
    k, (h, w) = kernel.shape[0], x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    lo = k // 2
    hi = max(0, k - 2 - lo)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((lo, hi), (lo, hi)), lhs_dilation=(2, 2),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, : 2 * h, : 2 * w]


def phase_window(kernel):
    """(first, window): the four phases' taps in a common D x D window, (D, D, I, 4 O) with phase (p, q) at
    output channels (2p + q) O.., zeros where a phase has no tap; input offsets first .. first + D - 1."""
    k = kernel.shape[0]
    starts = [deconv_phase(k, p) for p in (0, 1)]
    first = min(f for _, f in starts)
    d = max(f + len(range(t0, k, 2)) for t0, f in starts) - first
    taps = np.full((d, 2), k)  # taps[e, p]: the tap that input offset first + e gives phase p; k: none
    for p, (t0, f) in enumerate(starts):
        for j, t in enumerate(range(t0, k, 2)):
            taps[f - first + j, p] = t
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap k: zero
    window = padded[taps[:, None, :, None], taps[None, :, None, :]].transpose(0, 1, 4, 2, 3, 5)
    return first, window.reshape(d, d, kernel.shape[2], 4 * kernel.shape[3])


def one_conv(x, kernel):
    first, window = phase_window(kernel)
    d = window.shape[0]
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    pad = (-first, d - 2 + first)  # h + 1 rows in, h out
    y = jax.lax.conv_general_dilated(x, window, (1, 1), (pad, pad), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, w, o = y.shape[0], y.shape[1], y.shape[2], y.shape[3] // 4
    return y.reshape(n, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, o)


def im2col(x, kernel):
    """`one_conv` with its convolution written out: the D x D shifted copies of the input side by side, times
    the (D*D*C, 4C) phase kernel as one matrix product."""
    first, window = phase_window(kernel)
    d, o = window.shape[0], window.shape[3] // 4
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    pad = (-first, d - 1 + first)  # input offsets first..first+d-1 around h + 1 rows, the extra one cut below
    x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
    h, w = x.shape[1] - d, x.shape[2] - d
    patches = jnp.concatenate([x[:, a : a + h, b : b + w] for a in range(d) for b in range(d)], axis=-1)
    y = patches @ window.reshape(-1, 4 * o)
    return y.reshape(-1, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 2 * h, 2 * w, o)


METHODS = {"dilated": dilated, "one_conv": one_conv, "per_phase": phase_deconv, "im2col": im2col}


def timed(fns, args, reps, iters):
    """{name: (median, min, max) ms per call} of jitted functions timed in turn within each repetition, so
    that a machine whose load changes (a shared CPU) slows them all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))  # compile
        jax.block_until_ready(fn(*args))  # warm up
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(iters):
                out = fn(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / iters * 1e3)
    return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=21)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="input sizes (square)")
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    c = args.channels
    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}, {c} channels; ms per call, "
          f"median [min-max] of {args.reps} reps x {args.iters} calls")
    print(f"{'size':>11} {'k':>2} {'method':>10} {'fwd':>22} {'fwd+bwd':>22}")
    for s in args.sizes:
        x = jnp.asarray(rng.standard_normal((args.batch, s, s, c)), jnp.float32)
        for k in args.kernel_sizes:
            kernel = jnp.asarray(rng.standard_normal((k, k, c, c)), jnp.float32)
            cot = jnp.asarray(rng.standard_normal((args.batch, 2 * s, 2 * s, c)), jnp.float32)
            fns = {}
            for name, f in METHODS.items():
                fns[name, "fwd"] = jax.jit(f)
                fns[name, "bwd"] = jax.jit(jax.grad(lambda x, kern, f=f, cot=cot: jnp.vdot(f(x, kern), cot),
                                                    argnums=(0, 1)))
            result = timed(fns, (x, kernel), args.reps, args.iters)
            for name in METHODS:
                cells = [f"{m:7.2f} [{lo:.1f}-{hi:.1f}]" for m, lo, hi in (result[name, "fwd"], result[name, "bwd"])]
                print(f"{s:>4}->{2 * s:<5} {k:>2} {name:>10} {cells[0]:>22} {cells[1]:>22}", flush=True)


if __name__ == "__main__":
    main()
