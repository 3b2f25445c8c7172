"""Orbax checkpoints of a training run: the train state (step, parameters, BN statistics, optimizer) and the
input iterator's position (grain), saved asynchronously under ``<workdir>/checkpoints/<step>``; and restoring
a run's model variables for evaluation and prediction.

Kept: the newest `keep_latest` checkpoints, plus the `keep_best` ones with the highest validation mIoU
(checkpoints saved between evaluations have none). The newest is never deleted by the best-N rule.

Failures keep what is saved. orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it when
complete, so a save that fails (a full disk) leaves no step that looks finished; it raises `CheckpointSaveError`
naming the cause and the last intact step, and retention deletes nothing for a save that did not finish. On
resume an unreadable newest step (a file missing inside it) is moved to ``<workdir>/damaged_checkpoints/`` once
an older step has been read in its place (`restore_newest_intact`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from gcn_jax import parallel
from gcn_jax.errors import (
    GcnError,
    InputError,
    NotFoundError,
    WriteFailedError,
    error_chain,
    first_line,
    write_failure_cause,
)
from gcn_jax.models import build_model
from gcn_jax.training.state import TrainState, variable_shapes

STATE, DATA = "state", "data"
DAMAGED_DIR = "damaged_checkpoints"  # in the workdir, beside checkpoints/


class CheckpointMismatchError(InputError):
    """A checkpoint that does not fit the config's model / optimizer; the message lists the differences."""


class DamagedCheckpointError(InputError):
    """A checkpoint step that cannot be read: a file missing or damaged inside its folder."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason  # the cause alone, for the list of steps tried


class CheckpointSaveError(WriteFailedError):
    """A checkpoint could not be written; the message names the cause and the last intact checkpoint."""


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
    # cleanup_tmp_directories: the unfinished folder of a save that failed or was killed is removed on resume.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_miou, best_mode="max",
                                           create=not read_only, read_only=read_only,
                                           cleanup_tmp_directories=not read_only,
                                           save_interval_steps=0 if read_only else 1,
                                           enable_async_checkpointing=not read_only)
    try:
        return ocp.CheckpointManager(directory, options=options, handler_registry=_handlers())
    except json.JSONDecodeError as e:  # orbax reads every step's mIoU file on start
        problem = _unreadable_metrics(directory)
        if problem is None:
            raise
        raise problem from e


def _unreadable_metrics(directory: str) -> DamagedCheckpointError | None:
    """An error naming the steps whose mIoU file (``<step>/metrics/metrics``) cannot be parsed, or None."""
    bad = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name, "metrics", "metrics")
        try:
            with open(path) as f:
                json.load(f)
        except FileNotFoundError:
            continue
        except ValueError as e:
            bad.append(f"  {path}: {first_line(e)}")
    if not bad:
        return None
    return DamagedCheckpointError(
        f"the validation mIoU of a checkpoint in {directory} cannot be read:\n" + "\n".join(bad) + "\nMove "
        "that step's folder out of checkpoints/ (e.g. into damaged_checkpoints/), or delete the one file (the "
        "step then has no mIoU for --checkpoint=best and the best-N rule); nothing was changed.")


def _as_dict(state) -> dict:
    """A `TrainState` (or a dict of some of its parts) as a dict: what the checkpoint stores."""
    if isinstance(state, TrainState):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return dict(state)


def save(manager: ocp.CheckpointManager, state: TrainState, data_iterator, miou: float | None = None) -> bool:
    """Start an asynchronous save of ``state`` and the iterator position at ``state.step``, once the previous
    save has finished; `CheckpointSaveError` if that one or this one fails."""
    check_saving(manager)
    items = {STATE: ocp.args.PyTreeSave(_as_dict(state)),
             DATA: grain.checkpoint.CheckpointSave(_IteratorState(data_iterator.get_state()))}
    metrics = None if miou is None else {"miou": float(miou)}
    try:
        return manager.save(host_step(state), args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:  # the synchronous part: folders, metadata, copying the arrays to the host
        raise save_failed(manager, e) from e


def check_saving(manager: ocp.CheckpointManager, block: bool = True) -> None:
    """Raise `CheckpointSaveError` if an asynchronous save failed; ``block``: wait for the one in flight
    first, else look only if it has ended (so that a run stops at the next log step, not the next save).
    Every process looks at the same moment and stops if the save failed on any of them."""
    if not block and not parallel.all_processes_say(not manager.is_saving_in_progress()):
        return
    error = None
    try:
        manager.wait_until_finished()  # re-raises the error of the background save, once
    except Exception as e:
        error = e
    if not parallel.all_processes_say(error is None):
        raise save_failed(manager, error or RuntimeError("the save failed on another process")) from error


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def save_failed(manager: ocp.CheckpointManager, error: BaseException) -> CheckpointSaveError:
    """The error that stops a run whose checkpoint could not be written: the cause, the space left, the last
    intact step (read from disk: a failed save never renamed its folder) and what to do. What cannot be
    looked up on a failing disk is left out rather than hiding the cause."""
    directory = str(manager.directory)
    lines = [f"saving a checkpoint to {directory} failed: {write_failure_cause(error)}"]
    try:
        lines[0] += f"; {_megabytes(shutil.disk_usage(directory).free)} free there."
        manager.reload()
        intact = manager.latest_step()
        unfinished = sorted(n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n)
    except Exception as e:  # noqa: BLE001 - the save's cause matters more
        logging.warning("while describing the failed save: %s", first_line(e))
        return CheckpointSaveError(lines[0] + ".\nRun the same command again to resume from the last intact "
                                   "checkpoint once the cause is fixed.")
    if intact is None:
        lines.append("No checkpoint of this run was saved before.")
    else:
        lines.append(f"The last intact checkpoint is step {intact} ({os.path.join(directory, str(intact))}); "
                     "no earlier checkpoint was removed.")
    if unfinished:
        lines.append(f"Unfinished, not a checkpoint: {', '.join(unfinished)} (removed when the run resumes).")
    lines.append("Free some space (or fix the cause) and run the same command again to resume"
                 + ("." if intact is None else f" from step {intact}."))
    return CheckpointSaveError("\n".join(lines))


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


def grouped_by_module(names, where: str) -> list[str]:
    """Lines '  module (leaf, leaf): where' for array names 'collection/module/.../leaf', at most 20 modules,
    parameters before BN statistics and optimizer state."""
    modules: dict[str, list[str]] = {}
    for name in sorted(names, key=lambda n: (not n.startswith("params/"), n)):
        module, _, leaf = name.rpartition("/")
        modules.setdefault(module, []).append(leaf)
    lines = [f"  {m} ({', '.join(leaves)}): {where}" for m, leaves in list(modules.items())[:20]]
    if len(modules) > 20:
        lines.append(f"  ... and {len(modules) - 20} more modules {where}")
    return lines


# How TensorStore (inside orbax) reports a file that is missing, cut short or garbled.
_DAMAGE_CODES = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION")


def _is_damage(error: BaseException) -> bool:
    """Whether ``error`` says that a file of the checkpoint is missing, cut short or garbled (rather than,
    say, memory running out, which must not get a good checkpoint moved aside)."""
    return any(isinstance(e, (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError))
               or any(f"{code}: " in str(e) for code in _DAMAGE_CODES) for e in error_chain(error))


def _damaged(manager: ocp.CheckpointManager, step: int, cause: BaseException | str) -> DamagedCheckpointError:
    reason = cause if isinstance(cause, str) else first_line(cause)
    return DamagedCheckpointError(f"checkpoint {manager.directory}/{step} cannot be read: {reason}", reason)


def _saved_state_metadata(manager: ocp.CheckpointManager, step: int) -> dict:
    try:
        saved = manager.item_metadata(step)[STATE]
    except Exception as e:
        if _is_damage(e):  # a missing or unreadable metadata file
            raise _damaged(manager, step, e) from e
        raise
    saved = saved.tree if hasattr(saved, "tree") else saved
    if not saved:
        raise _damaged(manager, step, f"its {STATE}/_METADATA file is missing or empty")
    return saved


def saved_variable_shapes(manager: ocp.CheckpointManager, step: int) -> dict:
    """{'params', 'batch_stats'}: the step's array metadata (shape, dtype) as saved, read without the arrays."""
    saved = _saved_state_metadata(manager, step)
    return {key: saved.get(key, {}) for key in ("params", "batch_stats")}


def check_compatible(manager: ocp.CheckpointManager, step: int, target: dict) -> None:
    """Raise `CheckpointMismatchError` listing every array of ``target`` (a dict of parts of the train state)
    whose shape differs from the checkpoint's, or that exists on one side only. Parameters are compared first:
    differences in BN statistics and optimizer state follow from them."""
    saved = _saved_state_metadata(manager, step)
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
    lines += grouped_by_module(set(want) - set(have), "in the config's model, not in the checkpoint")
    lines += grouped_by_module(set(have) - set(want), "in the checkpoint, not in the config's model")
    if len(mismatched) > 20:
        lines.append(f"  ... {len(mismatched)} arrays of another shape in all")
    lines.append("Use the config this run was trained with (same model.backbone, model.backbone_width, "
                 "model.kernel_size, model.num_classes, model.head" + (", optimizer" if what == "optimizer" else "")
                 + "), or a new --workdir to start a new run.")
    raise CheckpointMismatchError("\n".join(lines))


def _check_input_position(manager: ocp.CheckpointManager, step: int) -> None:
    """The step's input positions (grain writes ``process_<i>-of-<n>.json`` per process) were written by as
    many processes as run now, and this process's file is there."""
    folder = os.path.join(str(manager.directory), str(step), DATA)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    counts = {int(m.group(1)) for m in (re.fullmatch(r"process_\d+-of-(\d+)\.json", n) for n in names) if m}
    if counts and jax.process_count() not in counts:
        raise InputError(f"checkpoint {manager.directory}/{step} holds the input position of {max(counts)} "
                         f"processes, not of the {jax.process_count()} running now; resume with the process count "
                         "it was written with (evaluation works with any)")
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if own not in names:
        raise _damaged(manager, step, f"{os.path.join(folder, own)} (the input position) is missing")


def check_step(manager: ocp.CheckpointManager, step: int, target, data_iterator=None) -> None:
    """What `restore` can tell before reading the arrays: this process's input position is there and fits
    the process count, the metadata is readable and the arrays fit ``target``."""
    if data_iterator is not None:
        _check_input_position(manager, step)
    check_compatible(manager, step, {k: v for k, v in _as_dict(target).items() if k != "step"})


def restore(manager: ocp.CheckpointManager, step: int, target, data_iterator=None, *, checked: bool = False):
    """Restore the parts of the train state that ``target`` names (a `TrainState`, or a dict such as
    {'params', 'batch_stats'}) onto ``target``'s shardings, whatever device count wrote them; and, if given,
    the iterator position. Returns the same structure as ``target``. A step that cannot be read is a
    `DamagedCheckpointError`; one of another model, optimizer or data order an `InputError` that says so.
    ``checked``: `check_step` was already called."""
    parts = _as_dict(target)
    if not checked:
        check_step(manager, step, target, data_iterator)
    items = {STATE: ocp.args.PyTreeRestore(parts, restore_args=ocp.checkpoint_utils.construct_restore_args(parts),
                                           partial_restore=True)}
    holder = _IteratorState()
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointRestore(holder)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            data_iterator.set_state(holder.get_state())  # grain checks the position fits this iterator
    except GcnError:
        raise
    except Exception as e:
        if data_iterator is not None and isinstance(e, ValueError) and "does not match" in str(e):
            # grain compares the sampler and source with the iterator's
            raise InputError(f"checkpoint {manager.directory}/{step} holds the input position of another order "
                             "of the training data (another config.data.seed, dataset or split, or a gcn-jax "
                             "version that sharded the data differently); resume with the config it was written "
                             "with, or start a new --workdir") from e
        if _is_damage(e):  # a file missing, cut short or garbled inside the step's folder
            raise _damaged(manager, step, e) from e
        raise
    return TrainState(**restored[STATE]) if isinstance(target, TrainState) else dict(restored[STATE])


def restore_newest_intact(manager: ocp.CheckpointManager, target, data_iterator=None, *,
                          move_aside_to: str | None = None):
    """(restored, step) of the newest step that can be read (`restore`), trying older steps while newer ones
    are damaged. The damaged ones are logged and, with ``move_aside_to``, moved into that folder (never
    deleted), so that the run saves those steps afresh. Only a step that an older one could replace is
    called damaged: when no step can be read, `DamagedCheckpointError` lists them all and nothing is moved
    (the fault may lie elsewhere). Every process takes the same step."""
    damaged: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        # The checks first, agreed by all processes: orbax's restore ends in a barrier that a process which
        # gave up before it would leave the others waiting at. (A read that fails inside orbax on some
        # processes only can still do that; on a file system that all hosts share, all see the same files.)
        problem = _damage_in(check_step, manager, step, target, data_iterator)
        if parallel.all_processes_say(problem is None):
            try:
                restored = restore(manager, step, target, data_iterator, checked=True)
            except DamagedCheckpointError as e:
                problem = e
            if parallel.all_processes_say(problem is None):
                break
        damaged.append((step, problem.reason if problem else "unreadable on another process"))
    else:
        lines = [f"no checkpoint in {manager.directory} can be read:"]
        lines += [f"  step {s}: {reason}" for s, reason in damaged]
        lines.append("Nothing was moved or deleted. If these checkpoints are damaged, move them out of "
                     f"{manager.directory} to start afresh, or use another --workdir; --verbose shows the errors.")
        raise DamagedCheckpointError("\n".join(lines))
    if damaged:
        _report_damaged(manager, damaged, step, move_aside_to)
    return restored, step


def _damage_in(function, *args) -> DamagedCheckpointError | None:
    try:
        function(*args)
    except DamagedCheckpointError as e:
        return e
    return None


def _report_damaged(manager: ocp.CheckpointManager, damaged: list[tuple[int, str]], used: int,
                    move_aside_to: str | None) -> None:
    if move_aside_to is not None:
        if jax.process_index() == 0:
            os.makedirs(move_aside_to, exist_ok=True)
            for step, _ in damaged:
                target = os.path.join(move_aside_to, str(step))
                suffix = 1
                while os.path.exists(target):  # an earlier damaged copy of the same step is kept too
                    suffix += 1
                    target = os.path.join(move_aside_to, f"{step}-{suffix}")
                os.rename(os.path.join(str(manager.directory), str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("damaged checkpoints moved")
        manager.reload()
    for step, reason in damaged:
        where = (f"moved to {move_aside_to}" if move_aside_to is not None
                 else f"left in {manager.directory}")
        logging.warning("checkpoint step %d cannot be read (%s); %s. Using step %d instead.", step, reason, where,
                        used)


def load_variables(config, workdir: str, which: str | int = "latest", mesh=None):
    """(model, variables, step) for the checkpoint ``which`` ('latest', 'best' or a step) in ``workdir``.

    Only parameters and BN statistics are read (the optimizer config does not matter), onto a replicated
    sharding of ``mesh`` (default: all devices), whatever the device count they were saved from. A config of
    another shape (k, backbone, classes, head) is a `CheckpointMismatchError` naming every difference."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    manager = make_manager(workdir, read_only=True)
    try:
        if which == "latest":  # a damaged newest step is left where it is; the newest intact one is used
            resolve_step(manager, which)  # no checkpoints: NotFoundError
            variables, step = restore_newest_intact(manager, variable_shapes(config, mesh))
        else:
            step = resolve_step(manager, which)
            variables = restore(manager, step, variable_shapes(config, mesh))
    finally:
        manager.close()
    return build_model(config.model), variables, step


def host_step(state) -> int:
    """The (replicated) step counter as a Python int, read from this process's own copy."""
    return int(parallel.fetch(state.step))
