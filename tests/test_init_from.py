"""config.init_from: a run that starts from another run's weights (the paper's staged training) gets them
bit-identical at step 0 with a fresh optimizer; another class count re-initialises only the arrays that depend
on it, and says so; another backbone is an error that lists the differences; a resumed run keeps its own."""

import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from gcn_jax import parallel
from gcn_jax.data import pipeline
from gcn_jax.errors import NotFoundError
from gcn_jax.models import build_model
from gcn_jax.training import init_from, optimizer, state as state_lib
from gcn_jax.training.config_checks import ConfigError, check_config
from gcn_jax.training.loop import _set_up, train_and_evaluate
from tests.tiny_run import saved_params, tiny_config


def _started_from(source_workdir, data_dir, **overrides):
    config = tiny_config(data_dir, **overrides)
    config.init_from.workdir = source_workdir
    config.init_from.step = "40"
    return config


def _fresh(config):
    return state_lib.init_variables(build_model(config.model), config, config.seed)


def test_a_new_run_starts_with_the_other_runs_weights_a_fresh_optimizer_and_step_0(run_40, tmp_path):
    config, source, _ = run_40
    started = _started_from(source, config.data.data_dir, seed=1)
    run, state = _set_up(started, str(tmp_path / "stage2"), parallel.make_mesh())
    try:
        assert int(parallel.fetch(state.step)) == 0
        _, expected = saved_params(source, 40)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), expected)
        tx = optimizer.make_optimizer(started.optimizer, started.num_train_steps)
        jax.tree.map(np.testing.assert_array_equal, parallel.fetch(state.opt_state),
                     parallel.fetch(jax.jit(tx.init)(state.params)))  # momentum zero, counters at 0
        fresh = iter(pipeline.train_loader(started.data, started.crop_size, started.global_batch_size))
        assert run.train_iter.get_state() == fresh.get_state()  # the data from its first batch
    finally:
        run.close()


def test_another_class_count_starts_only_the_class_dependent_arrays_afresh(run_40, caplog):
    config, source, _ = run_40
    started = _started_from(source, config.data.data_dir)
    started.model.num_classes = 4
    fresh = _fresh(started)
    with pytest.raises(init_from.InitFromMismatchError, match="reinit_class_layers=True starts the arrays"):
        init_from.initial_variables(started, parallel.make_mesh(), fresh)
    started.init_from.reinit_class_layers = True
    with caplog.at_level("INFO"):
        variables = init_from.initial_variables(started, parallel.make_mesh(), fresh)
    _, saved = saved_params(source, 40)
    saved, got, new = (traverse_util.flatten_dict(t, sep="/")
                       for t in (saved, variables["params"], fresh["params"]))
    afresh = sorted(name for name in got if saved[name].shape != got[name].shape)
    assert afresh and all(not name.startswith("backbone/") for name in afresh)
    assert "head_res5/left_kx1/kernel" in afresh and "br_res2/conv1/kernel" in afresh  # score maps: 4 classes
    for name in got:
        np.testing.assert_array_equal(got[name], new[name] if name in afresh else saved[name])
    assert (f"{len(afresh)} that depend on the class count start afresh, in br_res2, br_res3, br_res4, br_res5, "
            "br_s1, br_s16, br_s2, br_s4, br_s8, head_res2, head_res3, head_res4, head_res5, up_s1, up_s16, up_s2, "
            "up_s4, up_s8") in caplog.text


def test_another_backbone_is_an_error_listing_the_differences(run_40):
    config, source, _ = run_40
    started = _started_from(source, config.data.data_dir)
    started.model.backbone = "resnet34"
    started.init_from.reinit_class_layers = True
    with pytest.raises(init_from.InitFromMismatchError) as raised:
        init_from.initial_variables(started, parallel.make_mesh(), _fresh(started))
    message = str(raised.value)
    assert message.startswith(f"checkpoint {source}/checkpoints/40 does not fit the config's model:")
    assert "\n  params/backbone/layer1_2/conv1 (kernel): in the config's model, not in the checkpoint\n" in message
    assert "Start from a run of the same model.backbone" in message


def test_init_from_settings_are_checked_before_training(run_40, tmp_path):
    config, source, _ = run_40
    bad = _started_from(source, config.data.data_dir)
    bad.model.pretrained = "weights.safetensors"
    bad.init_from.step = "last"
    with pytest.raises(ConfigError) as raised:
        check_config(bad, 4)
    assert "config.init_from: config.init_from.step = 'last': expected 'latest', 'best' or a step number" in str(
        raised.value)
    bad.init_from.step = "best"
    with pytest.raises(ConfigError, match="config.init_from.workdir and config.model.pretrained are both set"):
        check_config(bad, 4)
    # The other run is looked for when a run starts (a resumed run does not need it any more).
    missing = _started_from(str(tmp_path / "nowhere"), config.data.data_dir)
    check_config(missing, 4)
    with pytest.raises(NotFoundError, match=r"config.init_from.workdir = .*: no checkpoints folder .*nowhere/"
                                            r"checkpoints \(the workdir of a training run\)"):
        init_from.initial_variables(missing, parallel.make_mesh(), _fresh(missing))


@pytest.mark.slow
def test_a_resumed_run_restores_its_own_checkpoint_not_the_other_runs(run_40, tmp_path):
    config, source, _ = run_40
    stage1, workdir = tmp_path / "stage1", str(tmp_path / "stage2")
    shutil.copytree(source, stage1)
    started = _started_from(str(stage1), config.data.data_dir, num_train_steps=2, checkpoint_every_steps=2)
    train_and_evaluate(started, workdir)
    shutil.rmtree(stage1)  # the earlier stage's run moved away: resuming does not need it
    started.num_train_steps = 3
    run, state = _set_up(started, workdir, parallel.make_mesh())
    try:
        assert int(parallel.fetch(state.step)) == 2
        _, own = saved_params(workdir, 2)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), own)
    finally:
        run.close()
    train_and_evaluate(started, workdir)  # the config check passes too
    assert saved_params(workdir)[0] == 3
