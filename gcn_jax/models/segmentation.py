"""The segmentation network of Figure 2A: ResNet + GCN + BR, decoded FCN-4 style to full resolution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gcn_jax.models.blocks import BoundaryRefinement, Deconv2x, check_head, make_head
from gcn_jax.models.resnet import ResNet, resnet_spec, stage_widths

STAGES = ("res2", "res3", "res4", "res5")


class GCNSegmentation(nn.Module):
    """Global Convolutional Network for semantic segmentation (Figure 2A).

    Every backbone stage res-2..res-5 gets a score head (GCN by default) and a BR block. Then, from the
    coarsest: res-5 score -> deconv x2 -> + res-4 score -> BR -> deconv x2 -> + res-3 score -> BR -> deconv x2
    -> + res-2 score -> BR -> deconv x2 -> BR -> deconv x2 -> BR. That is 4 heads, 9 BR blocks and 5 stride-2
    deconvolutions; the logits come out at the input resolution.

    Input sizes. Any height and width work, also ones not divisible by 32 (500x375, 97x131). The backbone's
    paddings give stage maps of ceil(H/s) x ceil(W/s) for s = 4, 8, 16, 32, all corner-aligned (pixel i of a
    stride-s map sits on input pixel s*i). Each deconvolution doubles a map, which is then cropped at the
    bottom/right to the size of the next finer map (ceil(H/s) <= 2 ceil(H/2s)); the last one is cropped to
    H x W. Nothing is resized or padded on the input side, so no pixel is lost or shifted.

    Args (the ablations of Tables 1-4 are config choices):
      num_classes: C, the channels of every score map.
      backbone: a key of `resnet.RESNET_SPECS` (e.g. 'resnet152', 'resnet50_gcn').
      head: 'gcn' (Fig. 2B), 'conv' (trivial k x k), 'stack' (floor(k/2) 3x3 convs of width `stack_width`),
        'base' (1 x 1 conv).
      kernel_size: k, one odd int for all four stages (the paper's choice), or four ints for res-2..res-5.
      stack_width: m for the 'stack' head (None: the stage's input channels).
      head_use_bias: bias in the heads (the paper's parameter counts have none).
      use_br: the 9 Boundary Refinement blocks on (Fig. 2) or off (Tables 1-4).
      deconv_kernel_size: see `blocks.Deconv2x` (3 keeps the backbone's pixel alignment exactly).
      frozen_bn: backbone BN always uses running statistics.
      backbone_width: the backbone's base width (`resnet.ResNet.width`; 64 is the standard ResNet).
      dtype: compute dtype (float32 or bfloat16); parameters stay float32 and logits are returned as float32.

    Returns:
      logits (batch, height, width, num_classes), float32.
    """

    num_classes: int = 21
    backbone: str = "resnet152"
    head: str = "gcn"
    kernel_size: int | Sequence[int] = 15
    stack_width: int | None = None
    head_use_bias: bool = False
    use_br: bool = True
    deconv_kernel_size: int = 3
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    backbone_width: int = 64

    def __post_init__(self):
        resnet_spec(self.backbone)
        stage_widths(self.backbone_width)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for stage, k in zip(STAGES, self.stage_kernel_sizes()):
            check_head(self.head, k, f"kernel_size for {stage}")
        super().__post_init__()

    def stage_kernel_sizes(self) -> tuple[int, int, int, int]:
        """k for res-2..res-5."""
        k = self.kernel_size
        if isinstance(k, Sequence) and not isinstance(k, str):
            if len(k) != 4:
                raise ValueError(f"kernel_size must be one int or 4 ints (res-2..res-5), got {tuple(k)}")
            return tuple(int(v) for v in k)  # type: ignore[return-value]
        return (k, k, k, k)  # type: ignore[return-value]

    @nn.compact
    def __call__(self, images, train: bool = False):
        if images.ndim != 4:
            raise ValueError(f"images must be (batch, height, width, channels), got shape {images.shape}")
        height, width = images.shape[1:3]
        c = self.num_classes
        trunk = ResNet(self.backbone, self.frozen_bn, self.dtype, self.backbone_width, name="backbone")
        features = trunk(images, train)

        def refine(x, name):
            return BoundaryRefinement(dtype=self.dtype, name=name)(x) if self.use_br else x

        scores = []
        for stage, f, k in zip(STAGES, features, self.stage_kernel_sizes()):
            head = make_head(self.head, c, k, stack_width=self.stack_width, use_bias=self.head_use_bias,
                             dtype=self.dtype, name=f"head_{stage}")
            scores.append(refine(head(f), f"br_{stage}"))

        def upsample(x, target, stride):
            return Deconv2x(c, self.deconv_kernel_size, self.dtype, name=f"up_s{stride}")(x, target)

        # Coarse to fine: the res-4, res-3 and res-2 scores are added after the first three deconvolutions
        # (strides 16, 8, 4); the last two reach stride 2 and the input resolution.
        x = scores[3]
        for skip, stride in zip((scores[2], scores[1], scores[0]), (16, 8, 4)):
            x = refine(upsample(x, skip.shape[1:3], stride) + skip, f"br_s{stride}")
        half = ((height + 1) // 2, (width + 1) // 2)  # ceil(h / 2), also for symbolic sizes (jax.export)
        x = refine(upsample(x, half, 2), "br_s2")
        x = refine(upsample(x, (height, width), 1), "br_s1")
        return x.astype(jnp.float32)


def build_model(model_config) -> GCNSegmentation:
    """The network described by a config's `model` section (see configs/default.py)."""
    cfg = model_config
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if cfg.dtype not in dtypes:
        raise ValueError(f"model.dtype must be one of {sorted(dtypes)}, got {cfg.dtype!r}")
    return GCNSegmentation(
        num_classes=cfg.num_classes,
        backbone=cfg.backbone,
        head=cfg.head,
        kernel_size=tuple(cfg.stage_kernel_sizes) or cfg.kernel_size,
        stack_width=cfg.stack_width,
        head_use_bias=cfg.head_use_bias,
        use_br=cfg.use_br,
        deconv_kernel_size=cfg.deconv_kernel_size,
        frozen_bn=cfg.frozen_bn,
        dtype=dtypes[cfg.dtype],
        backbone_width=cfg.backbone_width,
    )
