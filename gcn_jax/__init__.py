"""gcn-jax: Global Convolutional Network (Peng et al., CVPR 2017) in JAX/Flax.

``from gcn_jax import Segmenter`` is the Python inference API (`gcn_jax.segmenter`); it is imported on first use
so that ``import gcn_jax.labels`` and the like stay light. Importing the package adds the project's default
XLA flags to ``XLA_FLAGS`` (`gcn_jax.xla_flags`; ``GCN_JAX_XLA_DEFAULTS=0`` turns that off)."""

from gcn_jax import xla_flags

xla_flags.set_defaults()


def __getattr__(name: str):
    if name == "Segmenter":
        from gcn_jax.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'gcn_jax' has no attribute {name!r}")
