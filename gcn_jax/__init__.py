"""gcn-jax: Global Convolutional Network (Peng et al., CVPR 2017) in JAX/Flax."""
