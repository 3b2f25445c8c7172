"""Flax (Linen) models: ResNet backbones, the GCN and BR blocks, and the segmentation network."""

from gcn_jax.models.blocks import (
    HEAD_KINDS,
    BoundaryRefinement,
    Deconv2x,
    GlobalConvBlock,
    StackedConvHead,
    bilinear_kernel,
    make_head,
)
from gcn_jax.models.pretrained import (
    IGNORE_BN_COUNTERS,
    WeightImportError,
    check_weights_file,
    export_state_dict,
    load_backbone,
    read_state_dict,
)
from gcn_jax.models.resnet import RESNET_SPECS, GCNBottleneck, ResNet, ResNetClassifier, stage_channels
from gcn_jax.models.segmentation import GCNSegmentation, build_model

__all__ = [
    "HEAD_KINDS", "IGNORE_BN_COUNTERS", "RESNET_SPECS", "BoundaryRefinement", "Deconv2x", "GCNBottleneck",
    "GCNSegmentation", "GlobalConvBlock", "ResNet", "ResNetClassifier", "StackedConvHead", "WeightImportError",
    "bilinear_kernel", "build_model", "check_weights_file", "export_state_dict", "load_backbone", "make_head",
    "read_state_dict", "stage_channels",
]
