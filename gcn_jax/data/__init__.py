"""Datasets and the input pipeline: tfds builders (`voc_sbd`, `coco_voc`, `cityscapes_fine`, `cityscapes_coarse`,
`synthetic_shapes`, registered with tfds by importing `gcn_jax.data.datasets`), per-example transforms and the
grain loaders (`pipeline`)."""
