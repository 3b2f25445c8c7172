"""Every test process sees 4 CPU devices, so the sharded code paths (a batch split over devices, replicated
parameters) are exercised without accelerators. Must run before any JAX computation."""

import jax

jax.config.update("jax_num_cpu_devices", 4)
