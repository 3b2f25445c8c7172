"""`lax.conv_general_dilated` with gradients, and on maps smaller than the kernel a forward pass, that XLA's CPU
backend computes faster.

- Kernel gradient of a stride-1 convolution: autodiff gives a kernel-gradient convolution that carries the
  padding itself, over a window as large as the feature map. On XLA's CPU backend (Eigen) it is 10-40% slower
  than the same convolution on an input padded beforehand, so the input is padded explicitly for it. (With a
  stride the explicit padding was slower; those keep autodiff's.)
- Input gradient of a strided convolution: autodiff gives a convolution over the output gradient dilated by the
  stride, whose multiply-adds mostly hit the inserted zeros. Here each of the stride x stride phases of the
  input gradient (the input pixels at one offset modulo the stride) is an ordinary convolution of the output
  gradient with the kernel taps that reach that phase, as `blocks.Deconv2x` does for the decoder.

- Kernel gradient of a strided convolution of few input channels (the stem's 7 x 7 / 2 on the image's 3):
  the same sums as a stride-1 kernel gradient on the padded input's blocks of stride x stride pixels stacked
  along the channels (3 -> 12 for the stem), with ceil(k / stride) taps per axis; the taps beyond k are cropped.
  Eigen runs the stem's 1.7x faster so, despite 30% more multiply-adds; with 128 channels or more (the 3 x 3 / 2
  convolutions of res-3..res-5) it was 1.2-1.3x slower, so those keep autodiff's.

- Input gradient of a stride-1 convolution whose kernel holds at least twice as many numbers as its input
  (res-4 and res-5's 3 x 3 convolutions at 256^2 with 2 images, res-5's at 512^2 with 8): one matrix product of
  the output gradient's pixels with all taps side by side, (pixels, O) x (O, kh*kw*C), then a shifted sum of the kh*kw
  partial results (as `blocks.LineConv` does forward). Autodiff's is a convolution with the kernel flipped and
  its channel axes swapped, a copy that XLA's CPU backend makes 5-10 times slower than a plain copy (2.3 ms
  for a 3 x 3 x 512 x 512 kernel), and Eigen's convolution of a small map is slow. At 8^2 x 512 the input and
  kernel gradients took 4.5 ms instead of 7.0; with the kernel about as large as the input the product was 1-4%
  slower, with a smaller kernel up to 25% slower, so those keep autodiff's.

- Maps with fewer pixels than the kernel has taps (res-5's 2 x 2 map at 33-64 px inputs, Table 2's k x k head on
  res-4 and res-5 at 128^2): XLA's CPU backend computes such a convolution, and its gradients, with a generic
  loop instead of Eigen's or oneDNN's, 10x slower or more (a 2 x 2 x 512 map with a 3 x 3 x 512 x 512 kernel:
  12.3 ms forward, 1.1 ms for the grown form below). Taps that only ever meet the padding are left out first
  (15 x 15 on a 4 x 4 map: the middle 7 x 7); if the map is still smaller than the kernel, it grows to the
  kernel's size with zeros appended at the bottom and right, and the outputs beyond the map's are cropped.

- Kernel gradient of a 1 x 1 convolution computed as a matrix product (`pointwise_conv`): autodiff of the
  einsum contracts the three pixel axes at once, which XLA's CPU backend ran up to 2x slower than one product
  of the pixels as rows, (dy^T x)^T.

Elsewhere the forward pass and the other gradients are autodiff's. The values are the same sums (the tests
compare them with lax's autodiff). Used by the backbone's and the decoder's convolutions; `nn.Conv(...,
conv_general_dilated=conv_general_dilated)` takes it as it takes lax's.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
# Strided convolutions of inputs with fewer channels than this (the stem's image) get their kernel gradient on
# blocks of stride x stride pixels (`_strided_kernel_gradient`).
FEW_CHANNELS = 8
# Stride-1 convolutions whose kernel holds at least this many times as many numbers as their input get their
# input gradient as one product and a shifted sum (`_product_input_gradient`).
LARGE_KERNEL = 2


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated`'s signature and value. Channels-last 2-D convolutions with explicit padding
    and no input dilation or grouping get the forms described above (on small maps, the forward pass too);
    others are lax's."""
    nhwc = lhs.ndim == 4 and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == \
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    plain = (lhs_dilation is None or all(d == 1 for d in lhs_dilation)) and feature_group_count == 1 \
        and batch_group_count == 1 and preferred_element_type is None
    if not (nhwc and plain and not isinstance(padding, str)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides, rhs_dilation = tuple(window_strides), tuple(rhs_dilation or (1, 1))
    plan = _small_map_plan(lhs.shape, rhs.shape, strides, padding, rhs_dilation)
    if plan is None:
        return _conv(strides, padding, rhs_dilation, precision)(lhs, rhs)
    ((t0, t1), (u0, u1)), grow, size = plan
    (top, bottom), (left, right) = padding
    kh, kw = rhs.shape[:2]
    if (t0, t1, u0, u1) != (0, kh - 1, 0, kw - 1):  # the taps that only meet the padding, and that padding, go
        # tied to the input, as `blocks.line_conv`'s kernel layout is: else XLA slices the kernel at the start
        lhs, rhs = lax.optimization_barrier((lhs, rhs))
        rhs = rhs[t0:t1 + 1, u0:u1 + 1]
        padding = ((top - t0, bottom - (kh - 1 - t1)), (left - u0, right - (kw - 1 - u1)))
    if grow == (0, 0):
        return _conv(strides, padding, rhs_dilation, precision)(lhs, rhs)
    # Zeros appended at the bottom / right, inside non-negative padding, only add outputs at the end, which are
    # cropped. The barriers keep XLA from folding the zeros back into the convolution's padding: the grown input
    # here, and in the gradient the output gradient, which the crop pads back to the grown output's size.
    grown = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (0, grow[0], 0), (0, grow[1], 0), (0, 0, 0)))
    out = _conv(strides, padding, rhs_dilation, precision)(lax.optimization_barrier(grown), rhs)
    return lax.optimization_barrier(out)[:, :size[0], :size[1]]


def _static(*shapes) -> bool:
    """Whether every dimension is a number (not symbolic, as under `jax.export`)."""
    return all(isinstance(d, int) for shape in shapes for d in shape)


def _output_size(x_shape, w_shape, strides, padding, rhs_dilation) -> list[int]:
    """The convolution's output (height, width), as lax's (0 or less: empty)."""
    return [(n + lo + hi - (k - 1) * d - 1) // s + 1
            for n, (lo, hi), k, d, s in zip(x_shape[1:3], padding, w_shape[:2], rhs_dilation, strides)]


def _small_map_plan(x_shape, w_shape, strides, padding, rhs_dilation):
    """How a convolution of a map smaller than its kernel is computed (module docstring): ((first, last) kernel
    tap that meets the map along each axis, zero (rows, columns) to append to the map, the output's (height,
    width)). Taps are left out at stride 1 without dilation only (a 15 x 15 kernel on a 4 x 4 map keeps its
    middle 7 x 7); the map grows when it has fewer pixels than the taps left, each axis to their size (a 2 x 2
    map with a 3 x 3 kernel). None when neither applies, and for symbolic shapes, a padding that crops (appended
    zeros would be kept) or an empty output (lax's is empty too)."""
    (h, w), (kh, kw) = x_shape[1:3], w_shape[:2]
    if not _static((h, w, kh, kw)) or min(min(p) for p in padding) < 0 or min(h, w) < 1:
        return None
    size = _output_size(x_shape, w_shape, strides, padding, rhs_dilation)
    if min(size) < 1:
        return None
    taps = [(0, kh - 1), (0, kw - 1)]
    if strides == (1, 1) and rhs_dilation == (1, 1):  # output r reads map pixel r + t - lo with tap t
        taps = [(max(0, lo - (m - 1)), min(k - 1, n - 1 + lo))
                for n, k, (lo, _), m in zip((h, w), (kh, kw), padding, size)]
    th, tw = (last - first + 1 for first, last in taps)
    grow = (max(th - h, 0), max(tw - w, 0)) if h * w < th * tw else (0, 0)
    if taps == [(0, kh - 1), (0, kw - 1)] and grow == (0, 0):
        return None
    return tuple(taps), grow, size


@functools.cache
def _conv(strides, padding, rhs_dilation, precision):
    def conv(x, w, pad):
        return lax.conv_general_dilated(x, w, strides, pad, rhs_dilation=rhs_dilation, dimension_numbers=_NHWC,
                                        precision=precision)

    @jax.custom_vjp
    def padded_conv(x, w):
        return conv(x, w, padding)

    def forward(x, w):
        return conv(x, w, padding), (x, w)

    strided = any(s > 1 for s in strides)

    def backward(residuals, dy):
        # autodiff's gradients are the transposes of the convolution, linear in x and in w; taken with
        # `jax.linear_transpose`, which (unlike a vjp) does not evaluate the convolution again first
        x, w = residuals
        if strided and rhs_dilation == (1, 1):
            dx = _strided_input_gradient(dy, w, x.shape, strides, padding, precision)
        elif _product_pays(x.shape, w.shape, strides, padding, rhs_dilation):
            dx = _product_input_gradient(dy, w, x.shape, padding, precision)
        else:
            dx = jax.linear_transpose(lambda x: conv(x, w, padding), x)(dy)[0]
        if strided and rhs_dilation == (1, 1) and x.shape[-1] < FEW_CHANNELS:
            dw = _strided_kernel_gradient(x, dy, w.shape, strides, padding, precision)
        elif strided:
            dw = jax.linear_transpose(lambda w: conv(x, w, padding), w)(dy)[0]
        else:
            # lax.pad, unlike jnp.pad, also takes the negative padding (a crop) that lax's convolution allows.
            x_padded = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding),
                                                           (0, 0, 0)))
            dw = jax.linear_transpose(lambda w: conv(x_padded, w, ((0, 0), (0, 0))), w)(dy)[0]
        return dx, dw

    padded_conv.defvjp(forward, backward)
    return padded_conv


def _product_pays(x_shape, w_shape, strides, padding, rhs_dilation) -> bool:
    """Whether a convolution gets its input gradient as one product and a shifted sum (module docstring)."""
    plain = strides == (1, 1) and rhs_dilation == (1, 1) and min(min(p) for p in padding) >= 0
    if not (plain and _static(x_shape, w_shape)):  # symbolic shapes: autodiff's
        return False
    if min(_output_size(x_shape, w_shape, strides, padding, rhs_dilation)) < 1:  # its shifted sum needs pixels
        return False
    return w_shape[0] * w_shape[1] > 1 and math.prod(w_shape) >= LARGE_KERNEL * math.prod(x_shape)


def _product_input_gradient(dy, w, x_shape, padding, precision):
    """The input gradient of a stride-1 convolution (no dilation, no cropping padding) as one product of the
    output gradient's pixels with all taps, then a shifted sum (module docstring)."""
    kh, kw, c, o = w.shape
    n, ho, wo, _ = dy.shape
    # dx_padded[a + i, b + j] = sum over taps (i, j) of z[a, b, i, j], z = dy . w[i, j]^T; in float32 whatever the
    # inputs' type (bfloat16 would round each tap's term), rounded once at the end as lax's convolution does.
    z = lax.dot_general(dy.reshape(-1, o), w.reshape(-1, o), (((1,), (1,)), ((), ())), precision=precision,
                        preferred_element_type=jnp.float32)
    z = z.reshape(n, ho, wo, kh, kw, c)
    # Each tap's term padded straight into the input's frame (a negative padding crops), as `blocks._shift` does:
    # no padded frame to crop afterwards.
    (top, bottom), (left, right) = padding
    zero = jnp.zeros((), z.dtype)
    dx = sum(lax.pad(z[:, :, :, i, j], zero, ((0, 0, 0), (i - top, kh - 1 - i - bottom, 0),
                                              (j - left, kw - 1 - j - right, 0), (0, 0, 0)))
             for i in range(kh) for j in range(kw))
    return dx.astype(dy.dtype)


def _phase(size_out: int, stride: int, k: int, lo: int, r: int, phase_size: int):
    """For the input pixels r, r + stride, ... along one axis: the kernel taps that reach them (a slice, last tap
    first) and the padding of the output gradient (size_out) under which the convolution with those taps gives
    their input gradient, phase_size of them. Input pixel a * stride + r gets tap t from output pixel
    a + (r + lo - t) / stride where that is a whole number. (None, None) when no tap reaches them."""
    taps = [t for t in range(k - 1, -1, -1) if (r + lo - t) % stride == 0]
    if not taps:
        return None, None
    first = (r + lo - taps[0]) // stride  # the offset of the last tap; the others follow one output pixel apart
    return slice(taps[0], None, -stride), (-first, phase_size + first + len(taps) - 1 - size_out)


def _strided_input_gradient(dy, w, x_shape, strides, padding, precision):
    """The input gradient of a strided convolution (no dilation), phase by phase (module docstring)."""
    n, h, wd, c = x_shape
    (sh, sw), wt = strides, jnp.swapaxes(w, 2, 3)  # (kh, kw, O, C): the output gradient convolved back to C
    ph, pw = -(-h // sh), -(-wd // sw)  # the largest phase along each axis
    rows = []
    for r in range(sh):
        taps_r, pad_r = _phase(dy.shape[1], sh, w.shape[0], padding[0][0], r, ph)
        cols = []
        for q in range(sw):
            taps_q, pad_q = _phase(dy.shape[2], sw, w.shape[1], padding[1][0], q, pw)
            if taps_r is None or taps_q is None:
                cols.append(jnp.zeros((n, ph, pw, c), dy.dtype))
                continue
            cols.append(lax.conv_general_dilated(dy, wt[taps_r, taps_q], (1, 1), (pad_r, pad_q),
                                                 dimension_numbers=_NHWC, precision=precision))
        rows.append(jnp.stack(cols, axis=3))  # (n, ph, sw, pw, C)
    dx = jnp.stack(rows, axis=2)  # (n, ph, sh, pw, sw, C): pixel (a * sh + r, b * sw + q)
    return dx.reshape(n, ph * sh, pw * sw, c)[:, :h, :wd]


def _strided_kernel_gradient(x, dy, w_shape, strides, padding, precision):
    """The kernel gradient of a strided convolution (no dilation) as a stride-1 one on the padded input's blocks
    of stride x stride pixels, stacked along the channels (module docstring)."""
    n, h, wd, c = x.shape
    (kh, kw, _, o), (sh, sw) = w_shape, strides
    ku, kv = -(-kh // sh), -(-kw // sw)  # block taps; tap (u, v) of phase (p, q) is tap (u sh + p, v sw + q)
    hp, wp = sh * (dy.shape[1] + ku - 1), sw * (dy.shape[2] + kv - 1)  # the padded input the blocks cover
    (top, _), (left, _) = padding
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, hp - top - h, 0), (left, wp - left - wd, 0), (0, 0, 0)))
    blocks = x.reshape(n, hp // sh, sh, wp // sw, sw, c).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, hp // sh, wp // sw, sh * sw * c)
    dw = jax.linear_transpose(lambda k: lax.conv_general_dilated(blocks, k, (1, 1), ((0, 0), (0, 0)),
                                                                 dimension_numbers=_NHWC, precision=precision),
                              jnp.zeros((ku, kv, sh * sw * c, o), x.dtype))(dy)[0]
    dw = dw.reshape(ku, kv, sh, sw, c, o).transpose(0, 2, 1, 3, 4, 5)  # (u, p, v, q, C, O)
    return dw.reshape(ku * sh, kv * sw, c, o)[:kh, :kw]


@jax.custom_vjp
def pointwise_conv(x, kernel):
    """A 1 x 1 convolution of (n, h, w, C) by a (C, O) kernel, as the matrix product it is (module docstring)."""
    return jnp.einsum("nhwc,cd->nhwd", x, kernel)


def _pointwise_forward(x, kernel):
    return jnp.einsum("nhwc,cd->nhwd", x, kernel), (x, kernel)


def _pointwise_backward(residuals, dy):
    x, kernel = residuals
    dx = jnp.einsum("nhwd,cd->nhwc", dy, kernel)
    rows = (((0,), (0,)), ((), ()))  # contract the pixels: dy^T x, (O, C)
    dkernel = lax.dot_general(dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1]), rows).T
    return dx, dkernel


pointwise_conv.defvjp(_pointwise_forward, _pointwise_backward)
