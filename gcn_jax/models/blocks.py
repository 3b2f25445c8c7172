"""The paper's decoder blocks: the GCN block (Fig. 2B), Boundary Refinement (Fig. 2C), the ablation heads of
Tables 1-4, and the bilinear-initialised x2 deconvolution of Fig. 2A.

All blocks map (batch, height, width, channels) to (batch, height, width, classes) at the same resolution,
except `Deconv2x`, which doubles it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gcn_jax.models.conv import conv_general_dilated

HEAD_KINDS = ("gcn", "conv", "stack", "base")

# `nn.Conv` (same parameters, names and value) with the faster gradients of `gcn_jax.models.conv`.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def check_kernel_size(k: int, what: str = "kernel_size") -> None:
    """GCN-style kernels must be odd: an even k cannot be centred, which misaligns the score map."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(
            f"{what} must be a positive odd integer (the paper uses odd k 'to avoid alignment error'), got {k!r}"
        )


def check_head(kind: str, kernel_size: int, what: str = "kernel_size") -> None:
    """``kind`` is one of `HEAD_KINDS` and k fits it: odd for all but 'base' (a 1 x 1 conv), >= 3 for 'stack'."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head {kind!r}; expected one of {HEAD_KINDS}")
    if kind != "base":
        check_kernel_size(kernel_size, what)
    if kind == "stack" and kernel_size < 3:
        raise ValueError(f"the 'stack' head needs {what} >= 3, got {kernel_size}")


def _shift(a, axis: int, d: int):
    """b with b[..., l, ...] = a[..., l + d, ...] along `axis`, zero where l + d falls outside a: a padding by
    -d at the start and d at the end (a negative one crops), so no padded copy of a is made, which XLA would
    write out when several shifts share it, and symbolic sizes (export) need no comparison."""
    config = [(0, 0, 0)] * a.ndim
    config[axis] = (-d, d, 0)
    return jax.lax.pad(a, jnp.zeros((), a.dtype), config)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def line_conv(x, kernel, axis: int):
    """A k x 1 (`axis` 1) or 1 x k (`axis` 2) convolution of (n, h, w, C) by a (k, C, O) kernel with 'same'
    zero padding k // 2, i.e. `nn.Conv` with that kernel shape and padding. Computed as one matrix product of
    the pixels with all k taps side by side, (n*h*w, C) x (C, k*O), then a shifted sum of the k partial
    results; the gradient is the same two steps transposed. XLA's CPU backend runs a convolution with few
    output channels (a GCN block's, one per class) far below its matmul speed."""
    return _line_conv_value(x, kernel, axis)


def _taps_matrix(kernel):
    k, c, o = kernel.shape
    return kernel.transpose(1, 0, 2).reshape(c, k * o)


def _line_conv_value(x, kernel, axis):
    k, c, o = kernel.shape
    # The kernel's (C, k*O) layout is a copy made on every call. Tied to x, XLA makes it once x exists, not at the
    # start of the program next to the backbone's first convolutions, which slowed those down (README,
    # "Performance"). The values are the same.
    x, kernel = jax.lax.optimization_barrier((x, kernel))
    z = jnp.dot(x.reshape(-1, c), _taps_matrix(kernel)).reshape(*x.shape[:-1], k, o)
    # y[l] = sum_t x[l + t - k//2] kernel[t] = sum_t z[l + t - k//2, t]
    return sum(_shift(z[..., t, :], axis, t - k // 2) for t in range(k))


def _line_conv_fwd(x, kernel, axis):
    return _line_conv_value(x, kernel, axis), (x, kernel)


def _line_conv_bwd(axis, residuals, dy):
    x, kernel = residuals
    k, c, o = kernel.shape
    # y[l] = sum_t z[l + t - k//2, t], so dz[m, t] = dy[m - t + k//2]: k shifted copies of dy
    dz = jnp.stack([_shift(dy, axis, k // 2 - t) for t in range(k)], axis=-2).reshape(-1, k * o)
    dx = jnp.dot(dz, _taps_matrix(kernel).T).reshape(x.shape)
    dkernel = jnp.dot(x.reshape(-1, c).T, dz).reshape(c, k, o).transpose(1, 0, 2)
    return dx, dkernel


line_conv.defvjp(_line_conv_fwd, _line_conv_bwd)


class LineConv(nn.Module):
    """`nn.Conv(features, (k, 1) or (1, k), padding=k // 2 on that axis, use_bias)`: the same parameters
    (`kernel` (kh, kw, C, O) with nn.Conv's initialiser, optional `bias`) and function, computed by
    `line_conv`."""

    features: int
    kernel_shape: tuple[int, int]
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_shape
        if 1 not in (kh, kw):
            raise ValueError(f"LineConv needs a k x 1 or 1 x k kernel, got {self.kernel_shape}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        axis, k = (1, kh) if kw == 1 else (2, kw)
        y = line_conv(x.astype(self.dtype), kernel.reshape(k, x.shape[-1], self.features).astype(self.dtype), axis)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class GlobalConvBlock(nn.Module):
    """Global Convolutional Network block (Figure 2B).

    Two branches on the same input, summed: (k x 1 conv then 1 x k conv) + (1 x k conv then k x 1 conv), each
    conv mapping to `features` (the number of classes) channels. No BN and no nonlinearity inside, as in the
    paper. Without bias (the default) it has 2k(c*C + C*C) parameters, which is what Table 2 counts.
    """

    features: int
    kernel_size: int = 15
    use_bias: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_kernel_size(self.kernel_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        k, p = self.kernel_size, self.kernel_size // 2

        def conv(shape, pad, name):
            return Conv(self.features, shape, padding=pad, use_bias=self.use_bias, dtype=self.dtype, name=name)

        def first_conv(shape, name):  # from the wide backbone features: one matrix product (see `line_conv`)
            return LineConv(self.features, shape, self.use_bias, self.dtype, name=name)

        tall, wide = ((p, p), (0, 0)), ((0, 0), (p, p))
        left = conv((1, k), wide, "left_1xk")(first_conv((k, 1), "left_kx1")(x))
        right = conv((k, 1), tall, "right_kx1")(first_conv((1, k), "right_1xk")(x))
        return left + right


class BoundaryRefinement(nn.Module):
    """Boundary Refinement block (Figure 2C): S + conv3x3(ReLU(conv3x3(S))), no BN, no ReLU after the sum.

    The paper does not state whether the convs have a bias; they do here (`use_bias`), as a residual branch
    that models a correction usually does. Nor does it state an initialisation: the second conv starts at zero,
    so every BR block begins as the identity and the 9 chained blocks do not inflate the initial scores (why:
    README, "Choices where the paper is silent").
    """

    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        r = Conv(c, (3, 3), padding=((1, 1), (1, 1)), use_bias=self.use_bias, dtype=self.dtype, name="conv1")(x)
        r = Conv(c, (3, 3), padding=((1, 1), (1, 1)), use_bias=self.use_bias, dtype=self.dtype,
                 kernel_init=nn.initializers.zeros, name="conv2")(nn.relu(r))
        return x + r


class StackedConvHead(nn.Module):
    """Table 3/4 baseline: floor(k/2) 3x3 convs (same receptive field as a k x k kernel), no nonlinearity.

    Widths c -> m -> ... -> m -> C; `width=None` means m = c (Table 3 uses m = 2048 on res-5, as Table 4's
    first row shows).
    """

    features: int
    kernel_size: int = 7
    width: int | None = None
    use_bias: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_head("stack", self.kernel_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        n = self.kernel_size // 2
        m = self.width or x.shape[-1]
        for i in range(n):
            out = self.features if i == n - 1 else m
            x = Conv(out, (3, 3), padding=((1, 1), (1, 1)), use_bias=self.use_bias, dtype=self.dtype,
                     name=f"conv{i + 1}")(x)
        return x


def make_head(kind: str, features: int, kernel_size: int, *, stack_width: int | None = None,
              use_bias: bool = False, dtype: Any = jnp.float32, name: str | None = None) -> nn.Module:
    """The per-stage score head: `gcn` (Fig. 2B), `conv` (trivial k x k, Table 2), `stack` (Tables 3-4) or
    `base` (1 x 1 conv, Table 1's baseline)."""
    check_head(kind, kernel_size)
    if kind == "gcn":
        return GlobalConvBlock(features, kernel_size, use_bias, dtype, name=name)
    if kind == "stack":
        return StackedConvHead(features, kernel_size, stack_width, use_bias, dtype, name=name)
    k = kernel_size if kind == "conv" else 1
    return Conv(features, (k, k), padding=((k // 2, k // 2), (k // 2, k // 2)), use_bias=use_bias, dtype=dtype,
                name=name)


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """(size, size, channels, channels) kernel that upsamples each channel x2 bilinearly (diagonal in channels).

    Odd sizes put the tap centre on a pixel, even sizes between two pixels (FCN's `upsample_filt`).
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(size) - center) / factor
    k2 = np.outer(taps, taps).astype(np.float32)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = k2[:, :, None]
    return kernel


def deconv_phase(kernel_size: int, p: int) -> tuple[int, int]:
    """Which taps of `Deconv2x`'s k-tap kernel reach output phase p (0 or 1) along one axis: ``(t0, first)``.

    Output pixel 2i + p receives tap t from input pixel i + (p + t - k//2) / 2 when p + t - k//2 is even, and
    nothing from tap t otherwise: the taps t0, t0 + 2, ... (< k), from input pixels i + first, i + first + 1, ...
    """
    t0 = (kernel_size // 2 - p) % 2
    return t0, (p + t0 - kernel_size // 2) // 2


class Deconv2x(nn.Module):
    """Learnable stride-2 transposed convolution (the paper's 'deconv'), initialised to bilinear upsampling.

    Alignment. The ResNet features are corner-aligned: pixel i of a stride-S map sits on input pixel S*i (see
    resnet.py). With an odd kernel (default 3, taps 0.5 / 1 / 0.5) output pixel 2i lands exactly on input
    pixel i and 2i+1 halfway to i+1, preserving that alignment at every stage. An even kernel (4, the FCN
    choice, made for half-pixel-aligned VGG features) centres its taps between pixels: `kernel_size=4`
    computes what PyTorch's ConvTranspose2d(4, stride=2, padding=1) computes, where output 2i samples coarse
    position i - 1/4, so every stage shifts the map by a quarter of a coarse pixel, about 15 input pixels
    over the five upsamplings. It is available for comparison.

    `target` gives the output height and width (at most twice the input's); the upsampled map is cropped to
    it at the bottom/right. The input is edge-replicated by one pixel at the bottom/right first, so the last
    row and column interpolate towards the border value instead of towards zero.

    Computation. As a formula this is a convolution of the input dilated with zeros (``lhs_dilation=2``),
    output o = sum_t kernel[t] * dilated[o + t - k//2], but three quarters of that convolution's
    multiply-adds would hit the inserted zeros. It is computed by phases instead (sub-pixel convolution):
    output pixel (2i+p, 2j+q) only receives the taps t with p + t - k//2 even, from input pixel
    i + (p + t - k//2) / 2 (`deconv_phase`). So each of the four phases (p, q) is an ordinary stride-1
    convolution of the undilated input with its own taps, a strided slice of the one (k, k, C, C) parameter
    (for k = 3: 1 x 1, 1 x 2, 2 x 1 and 2 x 2 taps, 9 in all instead of 4 x 9), and the four results are
    interleaved (depth to space) into the doubled map. Outside the edge-replicated input is zero, as in the
    dilated form. Same function, same parameter, same gradients up to float rounding order. On CPU
    (benchmarks/deconv.py) forward + backward is 6-12x faster than the dilated form, whose gradients were the
    slow part (its forward alone is about as fast for k = 3), and faster than one convolution that computes
    all four phases from a common window (which multiplies zeros wherever a phase has fewer taps).
    """

    features: int
    kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, target: tuple[int, int]):
        k = self.kernel_size
        if k < 2:
            raise ValueError(f"deconv kernel_size must be >= 2, got {k}")
        h, w = x.shape[1:3]
        if not (h <= target[0] <= 2 * h and w <= target[1] <= 2 * w):
            raise ValueError(f"Deconv2x cannot map {(h, w)} to {tuple(target)}: the target must be 1-2x the input")
        kernel = self.param("kernel", lambda *_: jnp.asarray(bilinear_kernel(k, self.features)))
        return phase_deconv(x.astype(self.dtype), kernel.astype(self.dtype))[:, : target[0], : target[1], :]


def phase_deconv(x, kernel):
    """`Deconv2x`'s uncropped output, (n, 2h, 2w, O) from (n, h, w, I) and a (k, k, I, O) kernel, by phases."""
    k = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")  # row h (column w): the edge copy

    def taps_window_padding(p):
        # input rows i + first .. i + last for i < h: the padding (lo, hi) of the edge-copied input that gives
        # them; where one is negative (the edge row unused, for k <= 4), those rows are cut off by a slice
        # instead, as XLA's CPU backend hands only convolutions without negative padding to oneDNN
        t0, first = deconv_phase(k, p)
        lo, hi = -first, first + len(range(t0, k, 2)) - 2
        return slice(t0, None, 2), slice(max(0, -lo), hi if hi < 0 else None), (max(0, lo), max(0, hi))

    rows = []
    for p in (0, 1):
        taps_p, rows_p, pad_p = taps_window_padding(p)
        phases = []
        for q in (0, 1):
            taps_q, cols_q, pad_q = taps_window_padding(q)
            phases.append(conv_general_dilated(x[:, rows_p, cols_q], kernel[taps_p, taps_q], window_strides=(1, 1),
                                               padding=(pad_p, pad_q), dimension_numbers=("NHWC", "HWIO", "NHWC")))
        rows.append(jnp.stack(phases, axis=3))  # (n, h, w, 2: q, O)
    y = jnp.stack(rows, axis=2)  # (n, h, 2: p, w, 2: q, O)
    n, h, _, w = y.shape[:4]
    return y.reshape(n, 2 * h, 2 * w, y.shape[-1])
