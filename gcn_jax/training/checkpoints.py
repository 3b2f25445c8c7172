"""Orbax checkpoints of a training run: the train state (parameters, BN statistics, optimizer, step, RNG) and
the input iterator's position (grain), saved asynchronously under ``<workdir>/checkpoints/<step>``.

Kept: the newest `keep_latest` checkpoints, plus the `keep_best` ones with the highest validation mIoU
(checkpoints saved between evaluations have none). The newest is never deleted by the best-N rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import grain
import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from gcn_jax import parallel

STATE, DATA = "state", "data"


class CheckpointMismatchError(ValueError):
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


def _miou(metrics) -> float:
    return metrics["miou"]


def make_manager(workdir: str, keep_latest: int = 2, keep_best: int = 2, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    directory = checkpoint_dir(workdir)
    if read_only and not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {workdir}: {directory} does not exist (train first)")
    if keep_latest < 1:
        raise ValueError(f"checkpoint.keep_latest must be >= 1 (the newest is always kept), got {keep_latest}")
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(keep_latest),
        pp.BestN(get_metric_fn=_miou, n=keep_best, keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes orbax write (and reload on resume) the metrics the best-N rule reads; retention itself is
    # the preservation policy.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_miou, best_mode="max",
                                           create=not read_only, read_only=read_only,
                                           save_interval_steps=0 if read_only else 1,
                                           enable_async_checkpointing=not read_only)
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        STATE: ocp.StandardCheckpointHandler(), DATA: grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, state, data_iterator, miou: float | None = None) -> bool:
    """Start an asynchronous save of ``state`` and the iterator position at ``state.step``."""
    step = host_step(state)
    items = {STATE: ocp.args.StandardSave(state),
             DATA: grain.checkpoint.CheckpointSave(_IteratorState(data_iterator.get_state()))}
    metrics = None if miou is None else {"miou": float(miou)}
    return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def resolve_step(manager: ocp.CheckpointManager, which: str | int) -> int:
    """'latest', 'best' (highest validation mIoU saved with it) or a step number -> a step that exists."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {manager.directory}")
    if which == "latest":
        return max(steps)
    if which == "best":
        scored = [(manager.metrics(s) or {}).get("miou") for s in steps]
        candidates = [(m, s) for m, s in zip(scored, steps) if m is not None]
        if not candidates:
            raise ValueError(f"no checkpoint in {manager.directory} has a validation mIoU; steps: {sorted(steps)}")
        return max(candidates)[1]
    step = int(which)
    if step not in steps:
        raise ValueError(f"no checkpoint for step {step} in {manager.directory}; there are {sorted(steps)}")
    return step


def check_compatible(manager: ocp.CheckpointManager, step: int, target, keys=("params", "batch_stats",
                                                                              "opt_state")) -> None:
    """Raise `CheckpointMismatchError` listing every array of ``target`` (an abstract TrainState) whose shape
    differs from the checkpoint's, or that exists on one side only."""
    saved = manager.item_metadata(step)[STATE]
    saved = saved.tree if hasattr(saved, "tree") else saved

    def flat(tree, key):
        sub = _to_dict(tree[key] if isinstance(tree, Mapping) else getattr(tree, key))
        flat_tree = traverse_util.flatten_dict(sub, sep="/") if sub else {}
        return {f"{key}/{k}": tuple(v.shape) for k, v in flat_tree.items() if hasattr(v, "shape")}

    # Parameters first: differences in BN statistics and optimizer state follow from them.
    for key in keys:
        have, want = flat(saved, key), flat(target, key)
        if have != want:
            break
    else:
        return
    mismatched = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    what = "optimizer" if key == "opt_state" else "model"
    lines = [f"checkpoint {manager.directory}/{step} does not fit the config's {what}:"]
    lines += [f"  {k}: checkpoint has shape {have[k]}, the config builds {want[k]}" for k in mismatched[:20]]
    for names, where in ((set(want) - set(have), "in the config's model, not in the checkpoint"),
                         (set(have) - set(want), "in the checkpoint, not in the config's model")):
        modules = {}
        for name in sorted(names):
            module, _, leaf = name.rpartition("/")
            modules.setdefault(module, []).append(leaf)
        lines += [f"  {m} ({', '.join(leaves)}): {where}" for m, leaves in list(modules.items())[:20]]
        if len(modules) > 20:
            lines.append(f"  ... and {len(modules) - 20} more modules {where}")
    if len(mismatched) > 20:
        lines.append(f"  ... {len(mismatched)} arrays of another shape in all")
    lines.append("Use the config this run was trained with (same model.backbone, model.kernel_size, "
                 "model.num_classes, model.head" + (", optimizer" if what == "optimizer" else "")
                 + "), or a new --workdir to start a new run.")
    raise CheckpointMismatchError("\n".join(lines))


def _to_dict(tree):
    """Optimizer states are tuples/namedtuples of dicts: give every node a string key for flattening. Arrays
    and array metadata (anything with a shape) are leaves."""
    if hasattr(tree, "shape"):
        return tree
    if isinstance(tree, Mapping):
        return {str(k): _to_dict(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        fields = getattr(tree, "_fields", None) or [str(i) for i in range(len(tree))]
        return {str(f): _to_dict(v) for f, v in zip(fields, tree)}
    if hasattr(tree, "__dataclass_fields__"):
        return {f: _to_dict(getattr(tree, f)) for f in tree.__dataclass_fields__}
    return tree


def restore(manager: ocp.CheckpointManager, step: int, target, data_iterator=None):
    """Restore the state (onto ``target``'s shardings: any device count) and, if given, the iterator position.
    Returns the state."""
    check_compatible(manager, step, target)
    items = {STATE: ocp.args.StandardRestore(target)}
    holder = _IteratorState()
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointRestore(holder)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
        if data_iterator is not None and "process_" in str(e):
            raise ValueError(
                f"checkpoint {manager.directory}/{step} holds the input position of another number of processes "
                f"than the {jax.process_count()} running now ({e}); resume with the process count it was "
                "written with (evaluation works with any)") from e
        raise
    if data_iterator is not None:
        data_iterator.set_state(holder.get_state())
    return restored[STATE]


def restore_variables(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """Only the parts of the train state named in ``target`` (e.g. {'params', 'batch_stats'} for evaluation,
    independent of the optimizer config), onto ``target``'s shardings."""
    # Parameters first, whatever the target's key order (jax.tree.map sorts dict keys).
    check_compatible(manager, step, target, keys=tuple(k for k in ("params", "batch_stats") if k in target))
    path = os.path.join(str(manager.directory), str(step), STATE)
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))


def host_step(state) -> int:
    """The (replicated) step counter as a Python int, read from this process's own copy."""
    return int(parallel.fetch(state.step))
