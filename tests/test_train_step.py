"""The sharded train step: the same update on 1 and 4 devices, bfloat16 compute, gradient accumulation, and the
optimizer's schedule and weight-decay mask. The test process has 4 CPU devices (conftest.py)."""

import jax
import numpy as np
import pytest

from gcn_jax.images import normalize
from gcn_jax.models import build_model
from gcn_jax.training import optimizer, state as state_lib
from tests.tiny_run import fixed_batches, run_steps, tiny_config


def test_train_step_is_the_same_on_1_and_4_devices(data_dir):
    assert jax.device_count() == 4
    config = tiny_config(data_dir, crop_size=(32, 32), global_batch_size=8)
    losses1, params1, stats1 = run_steps(config, jax.devices()[:1], fixed_batches(3))
    losses4, params4, stats4 = run_steps(config, jax.devices(), fixed_batches(3))
    np.testing.assert_allclose(losses1, losses4, rtol=1e-5)
    assert losses1[2] != losses1[0]  # the parameters did change
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params1, params4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats1, stats4)


def test_bfloat16_compute_trains_like_float32(data_dir):
    config = tiny_config(data_dir, crop_size=(32, 32), global_batch_size=8)
    losses32, params32, _ = run_steps(config, jax.devices()[:1], fixed_batches(2))
    config.model.dtype = "bfloat16"
    losses16, params16, _ = run_steps(config, jax.devices()[:1], fixed_batches(2))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params16))  # parameters stay float32
    np.testing.assert_allclose(losses16, losses32, rtol=0.02)
    assert losses16 != losses32  # bfloat16 really was used


def test_gradient_accumulation_equals_the_full_batch(data_dir):
    # With BN on running statistics (frozen) the micro-batches see exactly what the full batch sees.
    config = tiny_config(data_dir, crop_size=(32, 32), global_batch_size=8, **{"model.frozen_bn": True})
    full = run_steps(config, jax.devices(), fixed_batches(2))
    config.optimizer.grad_accum_steps = 2
    accumulated = run_steps(config, jax.devices(), fixed_batches(2))
    np.testing.assert_allclose(full[0], accumulated[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), full[1], accumulated[1])


def test_gradient_accumulation_chains_batch_norm_statistics(data_dir):
    # Micro-batch a holds rows a, a + n, a + 2n, ...; BN's running averages are updated by each in turn.
    config = tiny_config(data_dir, crop_size=(32, 32), global_batch_size=8, **{"optimizer.grad_accum_steps": 2})
    batch = next(fixed_batches(1))
    _, _, stats = run_steps(config, jax.devices(), [batch])
    model = build_model(config.model)
    variables = state_lib.init_variables(model, config, config.seed)
    expected = variables["batch_stats"]
    for a in range(2):
        _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
            {"params": variables["params"], "batch_stats": expected}, batch["image"][a::2])
        expected = updates["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), stats, expected)
    assert not np.allclose(stats["backbone"]["bn1"]["mean"], variables["batch_stats"]["backbone"]["bn1"]["mean"])


def test_learning_rate_schedule_and_weight_decay_mask(data_dir):
    config = tiny_config(data_dir, **{"optimizer.warmup_steps": 10, "optimizer.learning_rate": 0.1})
    schedule = optimizer.learning_rate_schedule(config.optimizer, 110)
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.05)
    for t in (10, 35, 60, 109):
        assert float(schedule(t)) == pytest.approx(0.1 * (1 - (t - 10) / 100) ** 0.9, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)

    def ones(*shape):
        return np.ones(shape, np.float32)

    params = {"backbone": {"conv1": {"kernel": ones(3, 3, 3, 4)}, "bn1": {"scale": ones(4), "bias": ones(4)}},
              "br_s1": {"conv1": {"kernel": ones(3, 3, 4, 4), "bias": ones(4)}}}
    config.optimizer.update(warmup_steps=0, momentum=0.0, weight_decay=0.5, backbone_lr_multiplier=0.1)
    tx = optimizer.make_optimizer(config.optimizer, 100)
    zero = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # Only kernels decay (update = -lr * wd * w); the backbone's update is scaled by its multiplier.
    assert np.allclose(updates["br_s1"]["conv1"]["kernel"], -0.1 * 0.5)
    assert np.allclose(updates["backbone"]["conv1"]["kernel"], -0.1 * 0.5 * 0.1)
    assert np.all(updates["br_s1"]["conv1"]["bias"] == 0) and np.all(updates["backbone"]["bn1"]["scale"] == 0)
    # AdamW: the same decay mask and multiplier, decoupled from the moments (zero gradients: decay only).
    config.optimizer.name = "adamw"
    tx = optimizer.make_optimizer(config.optimizer, 100)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert np.allclose(updates["br_s1"]["conv1"]["kernel"], -0.1 * 0.5)
    assert np.allclose(updates["backbone"]["conv1"]["kernel"], -0.1 * 0.5 * 0.1)
    assert np.all(updates["backbone"]["bn1"]["bias"] == 0)


def test_uint8_images_normalised_on_the_device_train_as_images_normalised_on_the_host(data_dir):
    # What the pipeline sends (uint8, a mask of padding) against what it used to send (normalised float32,
    # padding 0): the same losses and parameters.
    config = tiny_config(data_dir, crop_size=(32, 32), global_batch_size=8)
    rng = np.random.default_rng(0)
    mask = np.ones((8, 32, 32), bool)
    mask[:, 20:] = False
    images = np.where(mask[..., None], rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 0).astype(np.uint8)
    labels = np.where(mask, rng.integers(0, 6, (8, 32, 32)), 255).astype(np.uint8)
    device = run_steps(config, jax.devices(), [{"image": images, "label": labels, "mask": mask}] * 2)
    host_images = np.where(mask[..., None], normalize(images), 0).astype(np.float32)
    host = run_steps(config, jax.devices(), [{"image": host_images, "label": labels.astype(np.int32)}] * 2)
    np.testing.assert_allclose(device[0], host[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), device[1], host[1])
