"""Model variables from a training run's checkpoint, placed on whatever devices are present now."""

from __future__ import annotations

from gcn_jax import parallel
from gcn_jax.models import build_model
from gcn_jax.training import checkpoints, optimizer, state as state_lib


def restore_variables(config, workdir: str, which: str | int = "latest", mesh=None):
    """(model, variables, step) for the checkpoint ``which`` ('latest', 'best' or a step) in ``workdir``.

    The train state is restored onto a replicated sharding of ``mesh`` (default: all devices), whatever the
    device count it was saved from. A config of another shape (k, backbone, classes, head) is a
    `checkpoints.CheckpointMismatchError` naming every difference."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    manager = checkpoints.make_manager(workdir, read_only=True)
    try:
        step = checkpoints.resolve_step(manager, which)
        state = checkpoints.restore(manager, step, state_lib.abstract_train_state(config, mesh, tx))
    finally:
        manager.close()
    return build_model(config.model), state.variables(), step
