"""What a run does when its files fail it: a damaged checkpoint (a file missing inside a step's folder) is
detected and the newest intact one used instead, moved aside but never deleted; a save that cannot be written
(a full disk, a file size limit) stops the run with one message naming the last intact checkpoint, and loses
no earlier one; SIGKILL at any moment, also during a save, then resuming ends bit-identical to a run that was
never interrupted."""

import glob
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gcn_jax import errors
from gcn_jax.data import pipeline
from gcn_jax.training import checkpoints, optimizer, state as state_lib
from gcn_jax.training.checkpoints import DamagedCheckpointError, load_variables
from gcn_jax.training.logger import MetricLogger
from gcn_jax.training.loop import train_and_evaluate
from tests.tiny_run import read_jsonl, saved_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One file of a step folder each, missing or cut to half its size, as a user finds it after a copy or a sync
# that stopped halfway.
DAMAGE = {
    "array data": "state/d/*",  # TensorStore: NOT_FOUND reading the arrays
    "state metadata": "state/_METADATA",  # orbax: None where the tree's metadata should be
    "array index": "state/manifest.ocdbt",  # TensorStore: the arrays' index is gone
    "array data cut short": "state/d/*:half",  # TensorStore: OUT_OF_RANGE
    "metadata cut short": "state/_METADATA:half",  # JSONDecodeError
}


def _copy_with_damage(workdir, tmp_path, step, *patterns):
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    for pattern in patterns:
        pattern, _, how = pattern.partition(":")
        path = sorted(glob.glob(os.path.join(copy, "checkpoints", str(step), pattern)))[0]
        if how == "half":
            os.truncate(path, os.path.getsize(path) // 2)
        else:
            os.remove(path)
    return copy


@pytest.mark.parametrize("damage", DAMAGE)
def test_eval_of_latest_skips_a_damaged_newest_checkpoint_and_names_it(run_40, tmp_path, damage, caplog):
    config, workdir, _ = run_40
    copy = _copy_with_damage(workdir, tmp_path, 40, DAMAGE[damage])
    _, variables, step = load_variables(config, copy, "latest")
    assert step == 20
    _, saved = saved_params(workdir, 20)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, variables["params"]), saved)
    assert "checkpoint step 40 cannot be read" in caplog.text and "Using step 20 instead" in caplog.text
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["20", "40"]  # evaluation moves nothing
    with pytest.raises(DamagedCheckpointError, match=rf"checkpoint {copy}/checkpoints/40 cannot be read: "):
        load_variables(config, copy, 40)  # a step asked for by number is not replaced by another


def test_resume_moves_a_damaged_newest_checkpoint_aside_and_ends_bit_identical(run_40, tmp_path, caplog):
    config, workdir, _ = run_40
    copy = _copy_with_damage(workdir, tmp_path, 40, DAMAGE["array data"])
    damaged_files = sorted(os.listdir(os.path.join(copy, "checkpoints", "40", "state")))
    train_and_evaluate(config, copy)  # resumes from step 20 and trains 20 -> 40 again
    assert "checkpoint step 40 cannot be read" in caplog.text
    assert f"moved to {copy}/damaged_checkpoints" in caplog.text
    assert sorted(os.listdir(os.path.join(copy, "damaged_checkpoints", "40", "state"))) == damaged_files
    step, resumed = saved_params(copy)
    _, uninterrupted = saved_params(workdir, 40)
    assert step == 40
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


def test_an_error_that_is_not_damage_moves_nothing(run_40, tmp_path, monkeypatch):
    config, workdir, _ = run_40
    copy = _copy_with_damage(workdir, tmp_path, 40)  # nothing damaged

    def out_of_memory(*args, **kwargs):
        raise MemoryError("RESOURCE_EXHAUSTED: could not allocate")

    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "restore", out_of_memory)
    with pytest.raises(MemoryError):
        train_and_evaluate(config, copy)
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["20", "40"]
    assert not os.path.exists(os.path.join(copy, "damaged_checkpoints"))


def test_an_unreadable_miou_file_is_named(run_40, tmp_path):
    config, workdir, _ = run_40
    copy = _copy_with_damage(workdir, tmp_path, 20, "metrics/metrics:half")
    with pytest.raises(DamagedCheckpointError, match=r"the validation mIoU of a checkpoint in .* cannot be read:\n"
                                                     r"  .*/checkpoints/20/metrics/metrics: JSONDecodeError"):
        load_variables(config, copy, "latest")
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["20", "40"]


def _train_iterator(config):
    return iter(pipeline.train_loader(config.data, config.crop_size, config.global_batch_size))


def _train_state_target(config):
    tx = optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    return state_lib.train_state_shapes(config, jax.sharding.Mesh(np.array(jax.devices()), ("data",)), tx)


def test_a_missing_input_position_is_damage_and_another_process_count_is_said_so(run_40, tmp_path):
    config, workdir, _ = run_40
    copy = _copy_with_damage(workdir, tmp_path, 40, "data/process_0-of-1.json")
    manager = checkpoints.make_manager(copy, read_only=True)
    target = _train_state_target(config)
    with pytest.raises(DamagedCheckpointError, match=r"checkpoints/40 cannot be read: .*/40/data/"
                                                     r"process_0-of-1.json \(the input position\) is missing"):
        checkpoints.restore(manager, 40, target, _train_iterator(config))
    data = os.path.join(copy, "checkpoints", "20", "data")
    os.rename(os.path.join(data, "process_0-of-1.json"), os.path.join(data, "process_0-of-2.json"))
    shutil.copy(os.path.join(data, "process_0-of-2.json"), os.path.join(data, "process_1-of-2.json"))
    with pytest.raises(errors.InputError, match=r"checkpoints/20 holds the input position of 2 processes, not "
                                                r"of the 1 running now"):
        checkpoints.restore(manager, 20, target, _train_iterator(config))
    manager.close()


def test_when_no_checkpoint_can_be_read_nothing_is_moved(run_40, tmp_path):
    config, workdir, _ = run_40
    copy = _copy_with_damage(workdir, tmp_path, 40, DAMAGE["state metadata"])
    os.remove(glob.glob(os.path.join(copy, "checkpoints", "20", DAMAGE["array data"]))[0])
    with pytest.raises(DamagedCheckpointError, match=r"(?s)no checkpoint in .* can be read:\n  step 40: .*\n  "
                                                     r"step 20: .*Nothing was moved or deleted"):
        train_and_evaluate(config, copy)
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["20", "40"]
    assert not os.path.exists(os.path.join(copy, "damaged_checkpoints"))


def _train_args(data_dir, workdir, *overrides):
    return [sys.executable, "train.py", "--config", "configs/synthetic.py", "--config.data.name=synthetic_shapes/tiny",
            f"--config.data.data_dir={data_dir}", "--config.data.eval_pad_size=48,64", "--config.crop_size=48,48",
            "--config.model.kernel_size=3", "--config.global_batch_size=4", "--config.eval_batch_size=4",
            "--config.data.worker_count=0", "--config.log_every_steps=1", "--config.eval_every_steps=0",
            "--config.optimizer.name=sgd", "--config.optimizer.nesterov=True", "--config.optimizer.learning_rate=0.01",
            "--config.optimizer.grad_clip_norm=5.0", "--workdir", str(workdir), *overrides]


def _limit_file_size(megabytes):
    def limit():  # in the child: writes past the limit fail with EFBIG instead of killing it with SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (megabytes << 20, megabytes << 20))
    return limit


@pytest.mark.slow
def test_a_save_that_cannot_be_written_stops_the_run_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    workdir = tmp_path / "run"
    keep_one = ["--config.checkpoint.keep_latest=1", "--config.checkpoint.keep_best=0",
                "--config.checkpoint_every_steps=10"]
    first = subprocess.run(_train_args(data_dir, workdir, "--config.num_train_steps=10", *keep_one), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    _, before = saved_params(workdir, 10)
    # Checkpoint files of ResNet-18 are up to ~10 MB: no file may grow past 2 MB from here on. (Without the
    # test session's XLA compilation cache, whose entries could not be written under the limit either.)
    r = subprocess.run(_train_args(data_dir, workdir, "--config.num_train_steps=40", *keep_one), cwd=ROOT,
                       capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(2),
                       env={**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"})
    assert r.returncode == errors.EXIT_SAVE_FAILED == 74, r.stderr[-3000:]
    checkpoint_dir = workdir / "checkpoints"
    assert (f"error: saving a checkpoint to {checkpoint_dir} failed: a file grew past the size limit of this "
            "process or file system (File too large)") in r.stderr
    assert (f"The last intact checkpoint is step 10 ({checkpoint_dir / '10'}); no earlier checkpoint was "
            "removed.") in r.stderr
    assert "run the same command again to resume from step 10." in r.stderr
    assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr
    steps = [line for line in r.stderr.splitlines() if "loss" in line]
    # The failed save of step 20 is seen at the first log step after it has ended, so the run stops before the
    # next save, not at the end. (Ten steps between saves: with five, the steps of the tests' tiny model, 40 ms
    # since the small-map convolutions stopped being generic loops, sometimes outran the failing save.)
    assert int(steps[-1].split("step ")[1].split("/")[0]) < 30
    assert r.stderr.count("\n") - len(steps) < 25, r.stderr
    assert sorted(p for p in os.listdir(checkpoint_dir) if p.isdigit()) == ["10"]  # keep_latest=1 removed nothing
    _, after = saved_params(workdir, 10)
    jax.tree.map(np.testing.assert_array_equal, after, before)


# run_40's run in a process of its own (4 CPU devices, as in the tests), saving every 5 steps.
_RUN_40 = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
from gcn_jax.training.loop import train_and_evaluate
from tests.tiny_run import tiny_config
config = tiny_config(sys.argv[1], num_train_steps=40, eval_every_steps=20, checkpoint_every_steps=5)
train_and_evaluate(config, sys.argv[2])
"""


def _logged_step(workdir) -> int:
    try:
        return max((r["step"] for r in read_jsonl(workdir) if "train/loss" in r), default=0)
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line being written
        return 0


def _saving_step(workdir) -> int:
    """The step of a save in flight (orbax's unfinished folder), or 0."""
    try:
        names = os.listdir(os.path.join(workdir, "checkpoints"))
    except FileNotFoundError:
        return 0
    return max((int(n.split(".")[0]) for n in names if ".orbax-checkpoint-tmp" in n), default=0)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(run_40, tmp_path):
    config, reference, _ = run_40
    workdir = str(tmp_path / "killed")
    rng = random.Random(0)
    killed_saving = 0
    # Kill points: during a save, at a random moment after a random step, during a later save, and once more
    # at random after the first evaluation; then the run finishes.
    for kind, after_step in [("saving", 0), ("random", rng.randint(6, 14)), ("saving", 0),
                             ("random", rng.randint(21, 34)), ("finish", 0)]:
        log = open(tmp_path / f"{kind}_{after_step}.log", "w")
        process = subprocess.Popen([sys.executable, "-c", _RUN_40, config.data.data_dir, workdir], cwd=ROOT,
                                   stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": ROOT})
        try:
            deadline = time.monotonic() + 300
            while kind != "finish" and process.poll() is None:
                assert time.monotonic() < deadline, f"no kill point '{kind}' reached"
                if kind == "saving" and _saving_step(workdir) > killed_saving:
                    killed_saving = _saving_step(workdir)
                    break
                if kind == "random" and _logged_step(workdir) >= after_step:
                    time.sleep(rng.uniform(0, 1.5))
                    break
                time.sleep(0.005)
            assert process.poll() is None or kind == "finish", f"the run ended before its kill point '{kind}'"
            if kind != "finish":
                process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=300) == (0 if kind == "finish" else -signal.SIGKILL), \
                open(log.name).read()[-3000:]
        finally:
            process.kill()
            log.close()
    assert killed_saving >= 10  # two saves were interrupted
    step, resumed = saved_params(workdir)
    _, uninterrupted = saved_params(reference, 40)
    assert step == 40
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
    # The log holds each step once, with the loss of the uninterrupted run.
    records = [r for r in read_jsonl(workdir) if "train/loss" in r]
    assert [r["step"] for r in records] == list(range(1, 41))
    expected = {r["step"]: r["train/loss"] for r in read_jsonl(reference) if "train/loss" in r}
    assert {r["step"]: r["train/loss"] for r in records} == expected


@pytest.mark.parametrize("tail", ['{"step": 6, "train/loss": 0.9}\n{"step": 7, "tra', '{"step": 6, "tra'])
def test_a_resumed_run_drops_the_records_logged_after_its_checkpoint(tmp_path, tail):
    first = MetricLogger(str(tmp_path))
    first.write(4, {"loss": 1.0}, prefix="train/")
    first.write(5, {"miou": 0.5}, prefix="eval/")
    first.write(6, {"loss": 0.9}, prefix="train/")
    first.write(7, {"loss": 0.7}, prefix="train/")
    first.close()
    path = tmp_path / "metrics.jsonl"  # as a kill in the middle of a line leaves it
    path.write_text('{"step": 4, "train/loss": 1.0}\n{"step": 5, "eval/miou": 0.5}\n' + tail)
    time.sleep(1.1)  # TensorBoard orders event files by the second in their names
    resumed = MetricLogger(str(tmp_path), resumed_at=5)
    resumed.write(6, {"loss": 0.8}, prefix="train/")
    resumed.close()
    assert read_jsonl(tmp_path) == [{"step": 4, "train/loss": 1.0}, {"step": 5, "eval/miou": 0.5},
                                    {"step": 6, "train/loss": 0.8}]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(4, 1.0), (6, pytest.approx(0.8))]
    assert [(e.step, e.value) for e in events.Scalars("eval/miou")] == [(5, 0.5)]
