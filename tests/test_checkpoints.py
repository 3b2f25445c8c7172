"""Checkpoints: a run's variables restore on another device count, 'best' and step selection, clear errors for a
config of another shape, and retention of the newest and the best."""

import shutil

import jax
import numpy as np
import pytest

from gcn_jax import parallel
from gcn_jax.evaluation.evaluate import Evaluator
from gcn_jax.training import checkpoints, state as state_lib
from gcn_jax.training.checkpoints import load_variables
from gcn_jax.training.loop import train_and_evaluate
from tests.tiny_run import saved_params, tiny_config


def test_checkpoint_from_4_devices_evaluates_on_1(run_40):
    config, workdir, summary = run_40
    one = parallel.make_mesh(jax.devices()[:1])
    model, variables, step = load_variables(config, workdir, "latest", one)
    assert step == 40
    assert {d.id for leaf in jax.tree.leaves(variables) for d in leaf.devices()} == {jax.devices()[0].id}
    _, saved = saved_params(workdir, 40)
    jax.tree.map(np.testing.assert_array_equal, parallel.fetch(variables["params"]), saved)
    again = Evaluator(config, model, one)(variables)
    assert again["miou"] == pytest.approx(summary["miou"], abs=1e-3)
    assert again["num_pixels"] == summary["num_pixels"]


def test_best_and_step_selection_and_shape_mismatch(run_40):
    config, workdir, _ = run_40
    manager = checkpoints.make_manager(workdir, read_only=True)
    mious = {s: manager.metrics(s)["miou"] for s in (20, 40)}
    assert checkpoints.resolve_step(manager, "best") == max(mious, key=mious.get)
    assert checkpoints.resolve_step(manager, 20) == 20
    with pytest.raises(ValueError, match=r"no checkpoint for step 7 .* \[20, 40\]"):
        checkpoints.resolve_step(manager, 7)
    other = tiny_config(config.data.data_dir, **{"model.kernel_size": 5})
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"params/head_res2/left_kx1/kernel: checkpoint has shape \(3, 1, 64, 6\), "
                             r"the config builds \(5, 1, 64, 6\)"):
        load_variables(other, workdir)
    # ResNet-34 has 3, 4, 6, 3 blocks where ResNet-18 has 2 in each stage.
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"params/backbone/layer1_2/bn1 \(bias, scale\): in the config's model, not in the "
                             r"checkpoint\n  params/backbone/layer1_2/bn2"):
        load_variables(tiny_config(config.data.data_dir, **{"model.backbone": "resnet34"}), workdir)


class _FakeIterator:
    def get_state(self):
        return b'{"position": 0}'


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    manager = checkpoints.make_manager(str(tmp_path), keep_latest=2, keep_best=2)
    mesh = parallel.make_mesh()
    mious = {1: 0.5, 2: 0.9, 3: None, 4: 0.3, 5: 0.8, 6: 0.1, 7: None}
    for step, miou in mious.items():
        state = parallel.replicate(mesh, {"step": np.int32(step), "w": np.full(3, step, np.float32)})
        state = state_lib.TrainState(step=state["step"], params={"w": state["w"]}, batch_stats={}, opt_state=())
        checkpoints.save(manager, state, _FakeIterator(), miou)
        manager.wait_until_finished()
    # Newest two (6, 7; 7 has no mIoU) and best two (2: 0.9, 5: 0.8).
    assert manager.all_steps() == [2, 5, 6, 7]
    assert checkpoints.resolve_step(manager, "best") == 2
    assert checkpoints.resolve_step(manager, "latest") == 7
    manager.close()


def test_resuming_with_another_data_order_is_a_clear_error(run_40, tmp_path):
    config, workdir, _ = run_40
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    other = tiny_config(config.data.data_dir, num_train_steps=41, eval_every_steps=20, **{"data.seed": 1})
    with pytest.raises(ValueError, match=r"checkpoints/40 holds the input position of another order of the "
                                         r"training data \(another config.data.seed"):
        train_and_evaluate(other, copy)
