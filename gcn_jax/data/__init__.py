"""Datasets (tfds builders) and the grain input pipeline.

Importing this package registers the builders `voc_sbd` (configs `voc`, `aug`), `cityscapes_fine` and
`synthetic_shapes` (configs `default`, `tiny`) with tfds.
"""

from gcn_jax.data.cityscapes import CityscapesFine
from gcn_jax.data.synthetic import SyntheticShapes, SyntheticShapesConfig
from gcn_jax.data.voc_sbd import VocSbd

__all__ = ["CityscapesFine", "SyntheticShapes", "SyntheticShapesConfig", "VocSbd"]
