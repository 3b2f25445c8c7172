"""Model variables from a training run's checkpoint, placed on whatever devices are present now."""

from __future__ import annotations

from gcn_jax import parallel
from gcn_jax.models import build_model
from gcn_jax.training import checkpoints, state as state_lib


def restore_variables(config, workdir: str, which: str | int = "latest", mesh=None):
    """(model, variables, step) for the checkpoint ``which`` ('latest', 'best' or a step) in ``workdir``.

    Only parameters and BN statistics are read (the optimizer config does not matter), onto a replicated
    sharding of ``mesh`` (default: all devices), whatever the device count they were saved from. A config of
    another shape (k, backbone, classes, head) is a `checkpoints.CheckpointMismatchError` naming every
    difference."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    manager = checkpoints.make_manager(workdir, read_only=True)
    try:
        step = checkpoints.resolve_step(manager, which)
        variables = checkpoints.restore_variables(manager, step, state_lib.abstract_variables(config, mesh))
    finally:
        manager.close()
    return build_model(config.model), variables, step
