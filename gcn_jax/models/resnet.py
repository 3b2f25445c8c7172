"""ResNet backbones (v1.5, torchvision layout) and the ResNet-GCN variant of the paper's Figure 5.

Everything here mirrors torchvision's `resnet.py` so that ImageNet weights imported from a torchvision or
timm state dict (see `pretrained.py`) produce the same activations:

- padding is explicit and equal to torchvision's: stem 7x7/2 pad 3, every 3x3 pad 1, max-pool 3x3/2 pad 1
  (flax's 'SAME' would pad (2, 3) on even inputs and shift every feature map by a pixel);
- the stride of a downsampling bottleneck sits on its 3x3 conv (v1.5), the projection shortcut is a strided
  1x1 conv + BN;
- BatchNorm uses eps 1e-5 and momentum 0.9 (torch's 0.1 counted the other way). torch updates the running
  variance with the unbiased batch variance, flax with the biased one; the factor n/(n-1) over n = B*H*W
  pixels is negligible for training and irrelevant for imported statistics.

Module names follow torchvision's state-dict keys (`layer3_5/conv2` <-> `layer3.5.conv2`), which is what
makes the weight mapping mechanical.

Alignment: with these paddings, pixel i of a stride-S feature map is centred on input pixel S*i, and a map at
stride S has ceil(H/S) x ceil(W/S) pixels for any input size H x W.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gcn_jax.models.conv import conv_general_dilated, pointwise_conv

# torchvision's initialisation: kaiming normal, fan_out, ReLU gain.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class Conv(nn.Module):
    """The backbone's convolution, without bias: `nn.Conv`'s parameter ('kernel', (kh, kw, in, out)) and
    function. With `pointwise_matmul` (set when training), a 1 x 1 convolution (most of a bottleneck's) is
    computed as the matrix product it is, of the (strided) pixels with the kernel (`conv.pointwise_conv`): XLA's
    CPU backend then needs no layout transposes for its gradients, which made ResNet-50's forward + backward
    about 12% faster there; the forward pass alone was faster as a convolution (README, "Performance"). Other
    convolutions go through `conv.conv_general_dilated` (lax's, with faster gradients)."""

    features: int
    kernel_size: tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: Any = 0  # 0 or ((top, bottom), (left, right))
    kernel_init: Any = conv_init
    dtype: Any = jnp.float32
    pointwise_matmul: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        (sh, sw), padding = _pair(self.strides), ((0, 0), (0, 0)) if self.padding == 0 else self.padding
        if self.pointwise_matmul and tuple(self.kernel_size) == (1, 1) and padding == ((0, 0), (0, 0)):
            return pointwise_conv(x[:, ::sh, ::sw], kernel[0, 0])
        return conv_general_dilated(x, kernel, (sh, sw), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _pool_windows(x):
    """The stem's 3 x 3 / 2 max-pool windows, padding 1 (-inf): the input padded, and for each window offset
    (i, j) in row-major order, the strided slice of the padded input that it contributes to every output."""
    _, h, w, _ = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    padded = jnp.pad(x, ((0, 0), (1, 2 * ho - h), (1, 2 * wo - w), (0, 0)), constant_values=-jnp.inf)
    return padded, [(i, j, padded[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2]) for i in range(3) for j in range(3)]


@jax.custom_vjp
def max_pool_3x3_s2(x):
    """`nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))` (torchvision's stem pool), as the
    maximum of nine strided slices, with a gradient that routes each output's gradient to the first maximum of
    its window in row-major order, as XLA's select-and-scatter does. XLA's CPU backend computes that
    select-and-scatter about 3.5x slower than this (README, "Performance")."""
    _, windows = _pool_windows(x)
    return functools.reduce(jnp.maximum, [s for _, _, s in windows])


def _max_pool_fwd(x):
    y = max_pool_3x3_s2(x)
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    x, y = residuals
    n, h, w, c = x.shape
    ho, wo = y.shape[1], y.shape[2]
    _, windows = _pool_windows(x)
    taken = jnp.zeros(y.shape, bool)
    zero = jnp.zeros((), g.dtype)
    # Window offset (i, j) sends the gradient of output (a, b) to pixel (2a + i, 2b + j) of the padded input:
    # to its phase (i % 2, j % 2), at (a + i // 2, b + j // 2) of that phase. Each phase is a sum of shifted
    # output-sized arrays (4, 2, 2 and 1 of them), and the four phases are interleaved once at the end; adding
    # nine input-sized arrays spread out by interior padding took XLA's CPU backend 2.5x as long.
    phases = {}
    for i, j, s in windows:
        hit = (s == y) & ~taken
        taken = taken | hit
        term = jnp.pad(jnp.where(hit, g, zero), ((0, 0), (i // 2, 1 - i // 2), (j // 2, 1 - j // 2), (0, 0)))
        phase = (i % 2, j % 2)
        phases[phase] = phases[phase] + term if phase in phases else term
    rows = [jnp.stack([phases[p, 0], phases[p, 1]], axis=3) for p in (0, 1)]  # (n, ho + 1, wo + 1, 2, c)
    padded = jnp.stack(rows, axis=2).reshape(n, 2 * ho + 2, 2 * wo + 2, c)
    # The barrier makes the gradient one array. Without it XLA's CPU backend fused all of the above into the
    # ReLU's backward (one loop of 17 ms in a profile, against 4.6 ms for the two apart), and the stem's forward +
    # backward took 23 ms instead of 11 (ResNet-50's stem, 2 x 256^2, 2 CPU cores; README, "Performance"). Only
    # measured on CPU; elsewhere it costs at most one more pass over the stem's feature map.
    return (jax.lax.optimization_barrier(padded[:, 1:1 + h, 1:1 + w]),)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


# (block type, blocks per stage) for each depth, as in torchvision.
RESNET_SPECS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
    # Figure 5 / Table 11: res-4 and res-5 bottlenecks replaced by the GCN-style block.
    "resnet50_gcn": ("bottleneck", (3, 4, 6, 3)),
    "resnet101_gcn": ("bottleneck", (3, 4, 23, 3)),
    "resnet152_gcn": ("bottleneck", (3, 8, 36, 3)),
}

# ResNet-GCN block settings per stage index (0-based: 2 = res-4, 3 = res-5), from Table 11: (k, m').
RESNET_GCN_STAGES: dict[int, tuple[int, int]] = {2: (5, 85), 3: (7, 128)}

def stage_widths(width: int = 64) -> tuple[int, int, int, int]:
    """Bottleneck (or basic-block) widths of res-2..res-5 for a base width: (64, 128, 256, 512) at 64."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"the backbone width (model.backbone_width) must be a positive int (64 is the standard "
                         f"ResNet), got {width!r}")
    return (width, 2 * width, 4 * width, 8 * width)


def stage_channels(name: str, width: int = 64) -> tuple[int, int, int, int]:
    """Channels of res-2..res-5 for a backbone name (256..2048 for bottleneck nets, 64..512 for basic) and base
    width (64 is the standard ResNet; 16 gives a quarter of the channels in every layer)."""
    block, _ = resnet_spec(name)
    expansion = 4 if block == "bottleneck" else 1
    return tuple(w * expansion for w in stage_widths(width))  # type: ignore[return-value]


def resnet_spec(name: str) -> tuple[str, tuple[int, int, int, int]]:
    """(block type, blocks per stage) of a backbone; an unknown name is an error that lists the known ones."""
    if name not in RESNET_SPECS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(RESNET_SPECS)}")
    return RESNET_SPECS[name]


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((k // 2, k // 2), (k // 2, k // 2))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    width: int
    strides: int = 1
    conv: Any = Conv
    norm: Any = nn.BatchNorm
    expansion = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.width, (3, 3), self.strides, padding=_pad(3), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.width, (3, 3), padding=_pad(3), name="conv2")(y)
        y = self.norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.width:
            residual = self.conv(self.width, (1, 1), self.strides, padding=0, name="downsample_0")(x)
            residual = self.norm(name="downsample_1")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand x4."""

    width: int
    strides: int = 1
    conv: Any = Conv
    norm: Any = nn.BatchNorm
    expansion = 4

    @nn.compact
    def __call__(self, x):
        out = self.width * self.expansion
        residual = x
        y = self.conv(self.width, (1, 1), padding=0, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.width, (3, 3), self.strides, padding=_pad(3), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(out, (1, 1), padding=0, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        if self.strides != 1 or x.shape[-1] != out:
            residual = self.conv(out, (1, 1), self.strides, padding=0, name="downsample_0")(x)
            residual = self.norm(name="downsample_1")(residual)
        return nn.relu(y + residual)


class GCNBottleneck(nn.Module):
    """The ResNet-GCN block of Figure 5.

    The bottleneck's 1x1-reduce and 3x3 convs are replaced by two separable large-kernel branches of width
    m' (1xk -> kx1 and kx1 -> 1xk, every conv followed by BN + ReLU), summed, then a 1x1 conv + BN to the
    block's output channels, plus the identity or projection shortcut.

    The paper does not say where a downsampling block strides. Here each conv strides along the axis its
    kernel spans: the 1xk conv by (1, 2), the kx1 conv by (2, 1). Every input row and column is then seen by
    a kernel before it is subsampled (a 1xk conv strided by 2 vertically would drop every other row unseen),
    the map stays corner-aligned like the rest of the network, and the block costs about what the
    bottleneck it replaces costs (the paper: both about 3.7 GFLOPs; the README gives this implementation's).
    """

    width: int  # the bottleneck width of the stage it replaces; output channels are 4 * width
    kernel_size: int
    branch_width: int  # m'
    strides: int = 1
    conv: Any = Conv
    norm: Any = nn.BatchNorm
    expansion = 4

    @nn.compact
    def __call__(self, x):
        k, m, s = self.kernel_size, self.branch_width, self.strides
        p = k // 2
        out = self.width * self.expansion

        def conv_bn_relu(y, shape, pad, strides, name):
            y = self.conv(m, shape, strides, padding=pad, name=f"conv_{name}")(y)
            return nn.relu(self.norm(name=f"bn_{name}")(y))

        wide, tall = ((0, 0), (p, p)), ((p, p), (0, 0))
        # branch a: 1xk then kx1; branch b: kx1 then 1xk.
        a = conv_bn_relu(x, (1, k), wide, (1, s), "a1")
        a = conv_bn_relu(a, (k, 1), tall, (s, 1), "a2")
        b = conv_bn_relu(x, (k, 1), tall, (s, 1), "b1")
        b = conv_bn_relu(b, (1, k), wide, (1, s), "b2")
        y = self.conv(out, (1, 1), padding=0, name="conv3")(a + b)
        y = self.norm(name="bn3")(y)
        residual = x
        if s != 1 or x.shape[-1] != out:
            residual = self.conv(out, (1, 1), s, padding=0, name="downsample_0")(x)
            residual = self.norm(name="downsample_1")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """ResNet trunk returning the four stage features (res-2, res-3, res-4, res-5).

    Input (batch, height, width, 3), normalised images. Outputs have strides 4, 8, 16, 32 and
    `stage_channels(arch, width)` channels; spatial sizes are ceil(H/stride) x ceil(W/stride).

    `frozen_bn=True` always normalises with the running statistics and never updates them (for fine-tuning
    with small per-device batches, such as the paper's batch size 1), whatever `train` says.

    `width` is the base width: the stem's channels and res-2's block width, doubled at each later stage. 64 is
    the standard (torchvision's, the only width pretrained weights exist for); a narrower net (16: a quarter of
    the channels, 1/13-1/16 of the multiply-adds) trains from scratch on larger images at the same cost. The
    ResNet-GCN blocks' m' (Table 11) scale with it.
    """

    arch: str = "resnet50"  # a key of RESNET_SPECS
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        block_kind, counts = resnet_spec(self.arch)
        use_gcn = self.arch.endswith("_gcn")
        conv = functools.partial(Conv, dtype=self.dtype, pointwise_matmul=train)
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=self.frozen_bn or not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        widths = stage_widths(self.width)
        x = conv(widths[0], (7, 7), 2, padding=_pad(7), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = max_pool_3x3_s2(x)

        features = []
        for stage, (count, stage_width) in enumerate(zip(counts, widths)):
            for i in range(count):
                strides = 2 if stage > 0 and i == 0 else 1
                name = f"layer{stage + 1}_{i}"
                if use_gcn and stage in RESNET_GCN_STAGES:
                    k, m = RESNET_GCN_STAGES[stage]
                    m = max(1, round(m * self.width / 64))
                    block = GCNBottleneck(stage_width, k, m, strides, conv=conv, norm=norm, name=name)
                elif block_kind == "bottleneck":
                    block = Bottleneck(stage_width, strides, conv=conv, norm=norm, name=name)
                else:
                    block = BasicBlock(stage_width, strides, conv=conv, norm=norm, name=name)
                # The barrier keeps each block's output one array: otherwise XLA re-computes a chain of
                # blocks' BN + ReLU + residual sums inside the layout transposes of later gradients.
                x = jax.lax.optimization_barrier(block(x))
            features.append(x)
        return tuple(features)


class ResNetClassifier(nn.Module):
    """A ResNet with torchvision's ImageNet head (global average pool + `fc`), returning float32 logits.

    For ImageNet pretraining of the ResNet-GCN backbone (Table 6) and for checking parameter counts against
    torchvision; the segmentation network uses `ResNet` alone. The trunk shares this module's scope, so the
    variable tree is torchvision's (`conv1`, `layer1_0`, ..., `fc`) and a whole ImageNet state dict, classifier
    included, loads with `load_backbone(variables, path, root=(), ignore=IGNORE_BN_COUNTERS)`.
    """

    arch: str = "resnet50"
    num_classes: int = 1000
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    width: int = 64  # the trunk's base width (`ResNet.width`)

    def setup(self):
        self.trunk = ResNet(self.arch, self.frozen_bn, self.dtype, self.width)
        nn.share_scope(self, self.trunk)
        self.fc = nn.Dense(self.num_classes, dtype=self.dtype)

    def __call__(self, x, train: bool = False):
        features = self.trunk(x, train)
        pooled = jnp.mean(features[-1], axis=(1, 2))
        return self.fc(pooled).astype(jnp.float32)
