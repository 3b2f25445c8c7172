"""Orbax checkpoints of a training run: the train state (step, parameters, BN statistics, optimizer) and the
input iterator's position (grain), saved asynchronously under ``<workdir>/checkpoints/<step>``; and restoring
a run's model variables for evaluation and prediction.

Kept: the newest `keep_latest` checkpoints, plus the `keep_best` ones with the highest validation mIoU
(checkpoints saved between evaluations have none). The newest is never deleted by the best-N rule.
"""

from __future__ import annotations

import dataclasses
import os

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from gcn_jax import parallel
from gcn_jax.errors import InputError, NotFoundError
from gcn_jax.models import build_model
from gcn_jax.training.state import TrainState, variable_shapes

STATE, DATA = "state", "data"


class CheckpointMismatchError(InputError):
    """A checkpoint that does not fit the config's model / optimizer; the message lists the differences."""


class _IteratorState:
    """The position of a grain iterator, frozen when the save starts (the iterator moves on while orbax writes
    in the background), or received on restore; grain's checkpoint handler reads/writes it per process."""

    def __init__(self, state: bytes | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return self.state

    def set_state(self, state: bytes) -> None:
        self.state = state

    def start_prefetch(self) -> None:  # called by grain's handler after set_state
        pass


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def check_retention(keep_latest: int, keep_best: int) -> None:
    if keep_latest < 1 or keep_best < 0:
        raise ValueError(f"keep_latest = {keep_latest} must be >= 1 (the newest is always kept) and keep_best = "
                         f"{keep_best} >= 0")


def _miou(metrics) -> float:
    return metrics["miou"]


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.PyTreeSave, ocp.args.PyTreeRestore):
        registry.add(STATE, args, ocp.PyTreeCheckpointHandler)
    for args in (grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointRestore):
        registry.add(DATA, args, grain.checkpoint.CheckpointHandler)
    return registry


def make_manager(workdir: str, keep_latest: int = 2, keep_best: int = 2, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    """The run's checkpoint manager; ``read_only`` for evaluation (the folder must exist, nothing is deleted)."""
    directory = checkpoint_dir(workdir)
    if read_only and not os.path.isdir(directory):
        raise NotFoundError(f"no checkpoints in {workdir}: {directory} does not exist (train first)")
    check_retention(keep_latest, keep_best)
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(keep_latest),
        pp.BestN(get_metric_fn=_miou, n=keep_best, keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes orbax write (and reload on resume) the metrics that best_step() and the best-N rule read;
    # retention itself is the preservation policy.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_miou, best_mode="max",
                                           create=not read_only, read_only=read_only,
                                           save_interval_steps=0 if read_only else 1,
                                           enable_async_checkpointing=not read_only)
    return ocp.CheckpointManager(directory, options=options, handler_registry=_handlers())


def _as_dict(state) -> dict:
    """A `TrainState` (or a dict of some of its parts) as a dict: what the checkpoint stores."""
    if isinstance(state, TrainState):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return dict(state)


def save(manager: ocp.CheckpointManager, state: TrainState, data_iterator, miou: float | None = None) -> bool:
    """Start an asynchronous save of ``state`` and the iterator position at ``state.step``."""
    items = {STATE: ocp.args.PyTreeSave(_as_dict(state)),
             DATA: grain.checkpoint.CheckpointSave(_IteratorState(data_iterator.get_state()))}
    metrics = None if miou is None else {"miou": float(miou)}
    return manager.save(host_step(state), args=ocp.args.Composite(**items), metrics=metrics, force=True)


def resolve_step(manager: ocp.CheckpointManager, which: str | int) -> int:
    """'latest', 'best' (highest validation mIoU saved with it) or a step number -> a step that exists."""
    steps = manager.all_steps()
    if not steps:
        raise NotFoundError(f"no checkpoints in {manager.directory}")
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        best = manager.best_step()  # None when no checkpoint has an mIoU
        if best is None:
            raise InputError(f"no checkpoint in {manager.directory} has a validation mIoU; steps: {sorted(steps)}")
        return best
    step = int(which)
    if step not in steps:
        raise InputError(f"no checkpoint for step {step} in {manager.directory}; there are {sorted(steps)}")
    return step


def _array_shapes(tree) -> dict[str, tuple[int, ...]]:
    """'params/backbone/conv1/kernel' -> shape for every array (or array metadata) in ``tree``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, "shape")}


def _grouped_by_module(names, where: str) -> list[str]:
    modules: dict[str, list[str]] = {}
    for name in sorted(names):
        module, _, leaf = name.rpartition("/")
        modules.setdefault(module, []).append(leaf)
    lines = [f"  {m} ({', '.join(leaves)}): {where}" for m, leaves in list(modules.items())[:20]]
    if len(modules) > 20:
        lines.append(f"  ... and {len(modules) - 20} more modules {where}")
    return lines


def check_compatible(manager: ocp.CheckpointManager, step: int, target: dict) -> None:
    """Raise `CheckpointMismatchError` listing every array of ``target`` (a dict of parts of the train state)
    whose shape differs from the checkpoint's, or that exists on one side only. Parameters are compared first:
    differences in BN statistics and optimizer state follow from them."""
    saved = manager.item_metadata(step)[STATE]
    saved = saved.tree if hasattr(saved, "tree") else saved
    for key in sorted(target, key=("params", "batch_stats", "opt_state").index):
        have, want = _array_shapes({key: saved.get(key, {})}), _array_shapes({key: target[key]})
        if have != want:
            break
    else:
        return
    mismatched = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    what = "optimizer" if key == "opt_state" else "model"
    lines = [f"checkpoint {manager.directory}/{step} does not fit the config's {what}:"]
    lines += [f"  {k}: checkpoint has shape {have[k]}, the config builds {want[k]}" for k in mismatched[:20]]
    lines += _grouped_by_module(set(want) - set(have), "in the config's model, not in the checkpoint")
    lines += _grouped_by_module(set(have) - set(want), "in the checkpoint, not in the config's model")
    if len(mismatched) > 20:
        lines.append(f"  ... {len(mismatched)} arrays of another shape in all")
    lines.append("Use the config this run was trained with (same model.backbone, model.kernel_size, "
                 "model.num_classes, model.head" + (", optimizer" if what == "optimizer" else "")
                 + "), or a new --workdir to start a new run.")
    raise CheckpointMismatchError("\n".join(lines))


def restore(manager: ocp.CheckpointManager, step: int, target, data_iterator=None):
    """Restore the parts of the train state that ``target`` names (a `TrainState`, or a dict such as
    {'params', 'batch_stats'}) onto ``target``'s shardings, whatever device count wrote them; and, if given,
    the iterator position. Returns the same structure as ``target``."""
    parts = _as_dict(target)
    check_compatible(manager, step, {k: v for k, v in parts.items() if k != "step"})
    items = {STATE: ocp.args.PyTreeRestore(parts, restore_args=ocp.checkpoint_utils.construct_restore_args(parts),
                                           partial_restore=True)}
    holder = _IteratorState()
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointRestore(holder)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            data_iterator.set_state(holder.get_state())  # grain checks the position fits this iterator
    except ValueError as e:
        if data_iterator is None:
            raise
        where = f"checkpoint {manager.directory}/{step} holds the input position of"
        if "process_" in str(e):
            raise InputError(f"{where} another number of processes than the {jax.process_count()} running now "
                             f"({e}); resume with the process count it was written with (evaluation works with "
                             "any)") from e
        if "does not match" in str(e):  # grain compares the sampler and source with the iterator's
            raise InputError(f"{where} another order of the training data (another config.data.seed, dataset "
                             "or split, or a gcn-jax version that sharded the data differently); resume with the "
                             "config it was written with, or start a new --workdir") from e
        raise
    return TrainState(**restored[STATE]) if isinstance(target, TrainState) else dict(restored[STATE])


def load_variables(config, workdir: str, which: str | int = "latest", mesh=None):
    """(model, variables, step) for the checkpoint ``which`` ('latest', 'best' or a step) in ``workdir``.

    Only parameters and BN statistics are read (the optimizer config does not matter), onto a replicated
    sharding of ``mesh`` (default: all devices), whatever the device count they were saved from. A config of
    another shape (k, backbone, classes, head) is a `CheckpointMismatchError` naming every difference."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    manager = make_manager(workdir, read_only=True)
    try:
        step = resolve_step(manager, which)
        variables = restore(manager, step, variable_shapes(config, mesh))
    finally:
        manager.close()
    return build_model(config.model), variables, step


def host_step(state) -> int:
    """The (replicated) step counter as a Python int, read from this process's own copy."""
    return int(parallel.fetch(state.step))
