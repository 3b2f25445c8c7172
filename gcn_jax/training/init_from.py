"""Starting a run from another run's weights (``config.init_from``): the paper's staged training, where each
stage starts from the previous stage's model (COCO+SBD+VOC -> SBD+VOC -> VOC; Cityscapes coarse -> fine).

Parameters and BatchNorm statistics come from the other run's checkpoint; the optimizer, the step, the learning
rate schedule and the input position start fresh. Matching is strict: every array of the new model must be in
the checkpoint with its shape, and every array of the checkpoint must be used. With
``config.init_from.reinit_class_layers`` the arrays whose shapes differ only in the class count (the score
heads, Boundary Refinement and deconvolutions, which all work on class score maps) keep their fresh
initialisation, and the log names them. Used only when a run starts: a resumed run restores its own checkpoint.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from gcn_jax import parallel
from gcn_jax.errors import InputError, NotFoundError
from gcn_jax.training import checkpoints


class InitFromMismatchError(checkpoints.CheckpointMismatchError):
    """The other run's model does not fit this config's; the message lists every difference."""


def parse_step(text: str) -> str | int:
    """``config.init_from.step``: 'latest', 'best' or a step number."""
    text = str(text)
    if text in ("latest", "best"):
        return text
    if text.isdigit():
        return int(text)
    raise InputError(f"config.init_from.step = {text!r}: expected 'latest', 'best' or a step number")


def check_init_from(init_from, pretrained) -> None:
    """What can be told before training, resumed or not: the step is well formed, and ``model.pretrained`` is not
    set as well (the other run's backbone would replace it). That the other run is there is checked only when
    this run starts (`initial_variables`): a run that resumes does not read it."""
    parse_step(init_from.step)
    if pretrained:
        raise InputError(f"config.init_from.workdir and config.model.pretrained are both set: the run in "
                         f"{init_from.workdir} gives the backbone too; unset one (--config.model.pretrained=None)")


def _flat(variables: dict) -> dict[str, object]:
    return {"/".join((collection, *path)): leaf for collection in ("params", "batch_stats")
            for path, leaf in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items()}


def _class_count_only(have: tuple, want: tuple, num_classes: int) -> int | None:
    """The other run's class count if ``have`` and ``want`` differ only in dimensions that hold the class
    count (``num_classes`` here), else None."""
    if len(have) != len(want):
        return None
    others = {h for h, w in zip(have, want) if h != w and w == num_classes}
    differing = [(h, w) for h, w in zip(have, want) if h != w]
    return others.pop() if len(others) == 1 and all(w == num_classes for _, w in differing) else None


def merge(fresh: dict, saved_shapes: dict[str, tuple], num_classes: int, reinit_class_layers: bool, source: str
          ) -> tuple[list[str], list[str]]:
    """(names to load from the checkpoint, names to keep fresh) for the new model's variables ``fresh`` and the
    checkpoint's array shapes; or `InitFromMismatchError` listing every difference that is not allowed."""
    want = {name: tuple(np.shape(leaf)) for name, leaf in _flat(fresh).items()}
    load, keep, mismatched, class_counts = [], [], [], set()
    for name in sorted(set(want) & set(saved_shapes)):
        if want[name] == saved_shapes[name]:
            load.append(name)
            continue
        count = _class_count_only(saved_shapes[name], want[name], num_classes)
        if reinit_class_layers and count is not None:
            keep.append(name)
            class_counts.add(count)
        else:
            mismatched.append(f"  {name}: {source} has shape {saved_shapes[name]}, the config builds {want[name]}")
    if len(class_counts) > 1:  # not one class count that changed: shapes differ for another reason
        mismatched += [f"  {name}: {source} has shape {saved_shapes[name]}, the config builds {want[name]}"
                       for name in keep]
    missing, unused = sorted(set(want) - set(saved_shapes)), sorted(set(saved_shapes) - set(want))
    if mismatched or missing or unused:
        lines = [f"{source} does not fit the config's model:", *mismatched[:20]]
        if len(mismatched) > 20:
            lines.append(f"  ... {len(mismatched)} arrays of another shape in all")
        lines += checkpoints.grouped_by_module(missing, "in the config's model, not in the checkpoint")
        lines += checkpoints.grouped_by_module(unused, "in the checkpoint, not in the config's model")
        if mismatched and not (missing or unused) and not reinit_class_layers:
            lines.append("If only the class count changed, --config.init_from.reinit_class_layers=True starts the "
                         "arrays that depend on it afresh.")
        else:
            lines.append("Start from a run of the same model.backbone, model.backbone_width, model.head and "
                         "model.kernel_size.")
        raise InitFromMismatchError("\n".join(lines))
    return load, keep


def initial_variables(config, mesh, fresh: dict) -> dict:
    """``fresh`` (host variables of the config's model, freshly initialised) with the arrays of the run
    ``config.init_from.workdir``'s checkpoint ``config.init_from.step`` put in (see the module docstring);
    host numpy arrays, the same on every process."""
    init_from = config.init_from
    folder = checkpoints.checkpoint_dir(init_from.workdir)
    if not os.path.isdir(folder):
        raise NotFoundError(f"config.init_from.workdir = {init_from.workdir!r}: no checkpoints folder {folder} "
                            "(the workdir of a training run)")
    manager = checkpoints.make_manager(init_from.workdir, read_only=True)
    try:
        which = parse_step(init_from.step)
        step = checkpoints.resolve_step(manager, which)
        source = f"checkpoint {manager.directory}/{step}"
        saved = checkpoints.saved_variable_shapes(manager, step)
        load, keep = merge(fresh, {k: tuple(v.shape) for k, v in _flat(saved).items()}, config.model.num_classes,
                           init_from.reinit_class_layers, source)
        replicated = parallel.replicated(mesh)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), saved)
        restored = _flat(checkpoints.restore(manager, step, target))
    finally:
        manager.close()
    flat = _flat(fresh)
    flat.update({name: np.asarray(parallel.fetch(restored[name])) for name in load})
    modules = sorted({name.split("/")[1] for name in keep})  # 'params/head_res5/left_kx1/kernel' -> head_res5
    logging.info("initialised %d arrays from %s%s", len(load), source,
                 f"; {len(keep)} that depend on the class count start afresh, in {', '.join(modules)}" if keep else "")
    out: dict[str, dict] = {}
    for name, leaf in flat.items():
        collection, path = name.split("/", 1)
        out.setdefault(collection, {})[tuple(path.split("/"))] = leaf
    return {collection: traverse_util.unflatten_dict(leaves) for collection, leaves in out.items()}
