"""Training end to end on the tiny synthetic set: the loss falls, the sharded step is device-count
independent, SIGTERM + resume is bit-identical, checkpoints restore on other device counts, and bad settings
fail before any compute. The test process has 4 CPU devices (conftest.py)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from gcn_jax import parallel
from gcn_jax.config_checks import ConfigError, check_config
from gcn_jax.data import pipeline
from gcn_jax.evaluation import evaluate
from gcn_jax.evaluation.restore import restore_variables
from gcn_jax.models import build_model
from gcn_jax.training import checkpoints, optimizer, state as state_lib
from gcn_jax.training.loop import NonFiniteLossError, train_and_evaluate
from tests.tiny_run import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pipeline.load_source("synthetic_shapes/tiny", "train", data_dir)  # generated on first use
    return data_dir


def read_jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def saved_params(workdir, step=None):
    """The parameters of a checkpoint as numpy, whatever topology wrote it."""
    manager = checkpoints.make_manager(str(workdir), read_only=True)
    step = manager.latest_step() if step is None else step
    metadata = manager.item_metadata(step)[checkpoints.STATE]
    metadata = metadata.tree if hasattr(metadata, "tree") else metadata
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), metadata["params"])
    restored = checkpoints.restore_variables(manager, step, {"params": target})
    manager.close()
    return step, jax.tree.map(np.asarray, restored["params"])


@pytest.fixture(scope="module")
def run_40(data_dir, tmp_path_factory):
    """40 uninterrupted steps on 4 devices, evaluated at step 20 and at the end."""
    workdir = str(tmp_path_factory.mktemp("run40"))
    config = tiny_config(data_dir, num_train_steps=40, eval_every_steps=20)
    summary = train_and_evaluate(config, workdir)
    return config, workdir, summary


def test_loss_falls_and_everything_is_logged(run_40):
    config, workdir, summary = run_40
    records = read_jsonl(workdir)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 41))
    first = np.mean([r["train/loss"] for r in train[:5]])
    last = np.mean([r["train/loss"] for r in train[-5:]])
    assert last < 0.6 * first, (first, last)
    assert all(r["train/images_per_second"] > 0 for r in train)
    assert train[0]["train/learning_rate"] == pytest.approx(0.01, rel=1e-6)  # poly starts at the peak
    evals = [r for r in records if "eval/miou" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["eval/miou"] == pytest.approx(summary["miou"])
    assert 0 <= summary["miou"] <= 1 and summary["boundary_accuracy"] is not None
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(workdir, "tensorboard")))
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["kernel_size"] == 3
    # Checkpoints at the evaluations (with their mIoU) and at the end.
    manager = checkpoints.make_manager(workdir, read_only=True)
    assert manager.all_steps() == [20, 40]
    assert manager.metrics(40)["miou"] == pytest.approx(summary["miou"])


def fixed_batches(num, batch=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(num):
        labels = rng.integers(0, 6, (batch, size, size)).astype(np.int32)
        labels[:, :4] = 255  # ignored rows, like padding
        yield {"image": rng.standard_normal((batch, size, size, 3)).astype(np.float32), "label": labels}


def run_steps(config, devices, batches):
    mesh = parallel.make_mesh(devices)
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_train_steps)
    state = state_lib.create_train_state(config, mesh, tx)
    step = state_lib.make_train_step(build_model(config.model), tx, schedule, mesh,
                                     config.optimizer.grad_accum_steps)
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.global_batch(mesh, batch))
        losses.append(float(parallel.fetch(metrics)["loss"]))
    return losses, parallel.fetch(state.params), parallel.fetch(state.batch_stats)


def test_train_step_is_the_same_on_1_and_4_devices(data_dir):
    assert jax.device_count() == 4
    config = tiny_config(data_dir, crop_size=32, global_batch_size=8)
    losses1, params1, stats1 = run_steps(config, jax.devices()[:1], fixed_batches(3))
    losses4, params4, stats4 = run_steps(config, jax.devices(), fixed_batches(3))
    np.testing.assert_allclose(losses1, losses4, rtol=1e-5)
    assert losses1[2] != losses1[0]  # the parameters did change
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params1, params4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats1, stats4)


def test_bfloat16_compute_trains_like_float32(data_dir):
    config = tiny_config(data_dir, crop_size=32, global_batch_size=8)
    losses32, params32, _ = run_steps(config, jax.devices()[:1], fixed_batches(2))
    config.model.dtype = "bfloat16"
    losses16, params16, _ = run_steps(config, jax.devices()[:1], fixed_batches(2))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params16))  # parameters stay float32
    np.testing.assert_allclose(losses16, losses32, rtol=0.02)
    assert losses16 != losses32  # bfloat16 really was used


def test_gradient_accumulation_equals_the_full_batch(data_dir):
    # With BN on running statistics (frozen) the micro-batches see exactly what the full batch sees.
    config = tiny_config(data_dir, crop_size=32, global_batch_size=8, **{"model.frozen_bn": True})
    full = run_steps(config, jax.devices(), fixed_batches(2))
    config.optimizer.grad_accum_steps = 2
    accumulated = run_steps(config, jax.devices(), fixed_batches(2))
    np.testing.assert_allclose(full[0], accumulated[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), full[1], accumulated[1])


def test_gradient_accumulation_chains_batch_norm_statistics(data_dir):
    # Micro-batch a holds rows a, a + n, a + 2n, ...; BN's running averages are updated by each in turn.
    config = tiny_config(data_dir, crop_size=32, global_batch_size=8, **{"optimizer.grad_accum_steps": 2})
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


def test_sigterm_then_resume_ends_bit_identical(run_40, tmp_path):
    config, reference_dir, _ = run_40
    workdir = str(tmp_path / "interrupted")

    def send_sigterm_after_step_5():
        path = os.path.join(workdir, "metrics.jsonl")
        while not (os.path.exists(path) and open(path).read().count("\n") >= 5):  # 5 complete records
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send_sigterm_after_step_5, daemon=True)
    thread.start()
    train_and_evaluate(config, workdir)
    thread.join(timeout=10)
    stopped_at = checkpoints.make_manager(workdir, read_only=True).latest_step()
    assert 5 <= stopped_at < 20, stopped_at  # saved at the signal, before the first evaluation
    train_and_evaluate(config, workdir)  # resumes: state, step, RNG and the input position
    step, resumed = saved_params(workdir)
    _, uninterrupted = saved_params(reference_dir, 40)
    assert step == 40
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
    losses = {r["step"]: r["train/loss"] for r in read_jsonl(workdir) if "train/loss" in r}
    reference = {r["step"]: r["train/loss"] for r in read_jsonl(reference_dir) if "train/loss" in r}
    assert losses == reference  # every step logged once, with the uninterrupted run's loss


def test_checkpoint_from_4_devices_evaluates_on_1(run_40):
    config, workdir, summary = run_40
    one = parallel.make_mesh(jax.devices()[:1])
    model, variables, step = restore_variables(config, workdir, "latest", one)
    assert step == 40
    assert {d.id for leaf in jax.tree.leaves(variables) for d in leaf.devices()} == {jax.devices()[0].id}
    _, saved = saved_params(workdir, 40)
    jax.tree.map(np.testing.assert_array_equal, parallel.fetch(variables["params"]), saved)
    again = evaluate.evaluate_config(config, model, variables, one)
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
        restore_variables(other, workdir)
    # ResNet-34 has 3, 4, 6, 3 blocks where ResNet-18 has 2 in each stage.
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"params/backbone/layer1_2/bn1 \(bias, scale\): in the config's model, not in the "
                             r"checkpoint\n  params/backbone/layer1_2/bn2"):
        restore_variables(tiny_config(config.data.data_dir, **{"model.backbone": "resnet34"}), workdir)


class _FakeIterator:
    def get_state(self):
        return b'{"position": 0}'


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    manager = checkpoints.make_manager(str(tmp_path), keep_latest=2, keep_best=2)
    mesh = parallel.make_mesh()
    mious = {1: 0.5, 2: 0.9, 3: None, 4: 0.3, 5: 0.8, 6: 0.1, 7: None}
    for step, miou in mious.items():
        state = parallel.replicate(mesh, {"step": np.int32(step), "w": np.full(3, step, np.float32)})
        state = state_lib.TrainState(step=state["step"], params={"w": state["w"]}, batch_stats={}, opt_state=(),
                                     rng=state["w"])
        checkpoints.save(manager, state, _FakeIterator(), miou)
        manager.wait_until_finished()
    # Newest two (6, 7; 7 has no mIoU) and best two (2: 0.9, 5: 0.8).
    assert manager.all_steps() == [2, 5, 6, 7]
    assert checkpoints.resolve_step(manager, "best") == 2
    assert checkpoints.resolve_step(manager, "latest") == 7
    manager.close()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    config = tiny_config(data_dir, num_train_steps=30, checkpoint_every_steps=1, **{
        "optimizer.learning_rate": 1e4, "optimizer.grad_clip_norm": None, "optimizer.momentum": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"non-finite (training loss .* at step \d+|train state after "
                                                  r"step \d+).*last good checkpoint is step \d+"):
        train_and_evaluate(config, str(tmp_path))
    step, params = saved_params(tmp_path)
    assert 1 <= step < 30
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_impossible_settings_fail_before_any_compute(data_dir, tmp_path):
    with pytest.raises(ConfigError) as e:
        check_config(tiny_config(data_dir, global_batch_size=6, **{"model.kernel_size": 4,
                                                                   "model.num_classes": 21}), 4)
    message = str(e.value)
    assert "config.global_batch_size = 6 does not split evenly over 4 devices" in message
    assert "config.model: kernel_size for res2 must be a positive odd integer" in message and "got 4" in message
    assert "config.model.num_classes = 21, but dataset synthetic_shapes/tiny has 6 classes" in message
    with pytest.raises(ConfigError, match="4 devices x 2 accumulation steps"):
        check_config(tiny_config(data_dir, **{"optimizer.grad_accum_steps": 2}), 4)
    # A typo in a config key is rejected by the command line before anything runs.
    workdir = tmp_path / "never_created"
    result = subprocess.run([sys.executable, "train.py", "--config", "configs/synthetic.py", "--workdir",
                             str(workdir), "--config.optimizer.learning_rat=0.1"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "learning_rat" in result.stderr
    assert not workdir.exists()


def test_learning_rate_schedule_and_weight_decay_mask(data_dir):
    config = tiny_config(data_dir, **{"optimizer.warmup_steps": 10, "optimizer.learning_rate": 0.1})
    schedule = optimizer.learning_rate_schedule(config.optimizer, 110)
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.05)
    for t in (10, 35, 60, 109):
        assert float(schedule(t)) == pytest.approx(0.1 * (1 - (t - 10) / 100) ** 0.9, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)
    ones = lambda *shape: np.ones(shape, np.float32)  # noqa: E731
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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback_agree_with_one(data_dir, tmp_path):
    workdir = str(tmp_path / "two")
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
    workers = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "multiprocess_worker.py"), port, str(i),
                                 data_dir, workdir], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for i, (w, out) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
        assert f"process {i} of 2 done" in out
    # One process, 2 devices, fed the two processes' shards side by side (process 0's rows first).
    config = tiny_config(data_dir, num_train_steps=3, global_batch_size=2, eval_batch_size=2)
    source = pipeline.load_source(config.data.name, "train", data_dir)
    spec = pipeline.dataset_spec(config.data.name)
    shards = [iter(pipeline.train_loader(source, spec, crop_size=48, global_batch_size=2, seed=config.data.seed,
                                         scale_range=config.data.scale_range, process_index=i, process_count=2))
              for i in range(2)]
    batches = []
    for _ in range(3):
        parts = [next(s) for s in shards]
        batches.append({k: np.concatenate([p[k] for p in parts]) for k in ("image", "label")})
    losses, params, _ = run_steps(config, jax.devices()[:2], batches)
    step, two_process = saved_params(workdir)
    assert step == 3
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), two_process, params)
    logged = [r["train/loss"] for r in read_jsonl(workdir) if "train/loss" in r]
    np.testing.assert_allclose(logged, losses, rtol=1e-5)


def _cli_overrides(config):
    return ["--config", "configs/synthetic.py", "--config.data.name=synthetic_shapes/tiny",
            f"--config.data.data_dir={config.data.data_dir}", "--config.data.eval_pad_size=48,64",
            "--config.crop_size=48", "--config.model.kernel_size=3", "--config.eval_batch_size=4"]


@pytest.mark.slow
def test_eval_and_predict_command_lines(run_40, tmp_path):
    config, workdir, summary = run_40
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "eval.py", *_cli_overrides(config), "--workdir", workdir,
                             "--checkpoint=20"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 20" in result.stdout and "mIoU" in result.stdout and "boundary acc" in result.stdout
    with open(os.path.join(workdir, "eval_20.json")) as f:
        report = json.load(f)
    logged = [r for r in read_jsonl(workdir) if r.get("step") == 20 and "eval/miou" in r][0]
    assert report["miou"] == pytest.approx(logged["eval/miou"], abs=1e-3)  # 1 process here, 4 devices there
    assert set(report["per_class_iou"]) == {"background", "disc", "square", "triangle", "ring", "cross"}

    images = tmp_path / "images"
    images.mkdir()
    source = pipeline.load_source("synthetic_shapes/tiny", "validation", config.data.data_dir)
    originals = [np.asarray(source[i]["image"]) for i in range(2)]
    from PIL import Image
    for i, image in enumerate(originals):
        Image.fromarray(image).save(images / f"val{i}.png")
    Image.fromarray(originals[0][:37, :41]).save(images / "odd_size.jpg")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "predict.py", *_cli_overrides(config), "--workdir", workdir,
                             f"--output={out}", str(images)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 images, checkpoint step 40" in result.stdout
    assert sorted(os.listdir(out)) == sorted(f"{n}_{kind}.png" for n in ("val0", "val1", "odd_size")
                                             for kind in ("mask", "overlay"))
    # The mask PNG holds class indices: the same as the model's argmax computed here.
    model, variables, _ = restore_variables(config, workdir)
    from gcn_jax.data.transforms import normalize
    for i, image in enumerate(originals):
        mask = Image.open(out / f"val{i}_mask.png")
        assert mask.mode == "P"
        expected = np.argmax(np.asarray(jax.jit(model.apply)(variables, normalize(image)[None]))[0], axis=-1)
        assert np.mean(np.asarray(mask) == expected) > 0.999  # a near-tie may flip between two compilations
    assert Image.open(out / "odd_size_overlay.png").size == (41, 37)
    # A path that does not exist is named in the error.
    result = subprocess.run([sys.executable, "predict.py", *_cli_overrides(config), "--workdir", workdir,
                             str(tmp_path / "missing.jpg")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "missing.jpg: no such file or folder" in result.stderr


def test_distributed_starts_only_for_multi_process_launches(monkeypatch):
    detect = parallel._cluster_in_environment
    assert not detect({})
    assert not detect({"SLURM_JOB_ID": "7"})  # an salloc shell: one process, no jax.distributed
    assert not detect({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"})
    assert detect({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-4]", "SLURM_NTASKS": "4"})
    assert detect({"OMPI_COMM_WORLD_SIZE": "2"}) and not detect({"OMPI_COMM_WORLD_SIZE": "1"})
    assert detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert detect({"TPU_WORKER_HOSTNAMES": "t1,t2"}) and not detect({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert parallel.maybe_initialize_distributed(False) is False
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='first': expected an integer"):
        parallel.maybe_initialize_distributed(True)
