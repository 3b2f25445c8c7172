"""The training loop end to end on the tiny synthetic set: the loss falls and everything is logged, SIGTERM +
resume is bit-identical, and a non-finite loss stops the run keeping the last good checkpoint."""

import glob
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from gcn_jax.training import checkpoints, workdir_lock
from gcn_jax.training.config_checks import ConfigError, check_config
from gcn_jax.training.loop import NonFiniteLossError, TrainingInterrupted, train_and_evaluate
from gcn_jax.training.workdir_lock import WorkdirBusyError
from tests.tiny_run import read_jsonl, saved_params, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM received: saved step \d+ to .*run the same command"):
        train_and_evaluate(config, workdir)
    thread.join(timeout=10)
    stopped_at = checkpoints.make_manager(workdir, read_only=True).latest_step()
    assert 5 <= stopped_at < 20, stopped_at  # saved at the signal, before the first evaluation
    train_and_evaluate(config, workdir)  # resumes: state, step and the input position
    step, resumed = saved_params(workdir)
    _, uninterrupted = saved_params(reference_dir, 40)
    assert step == 40
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
    losses = {r["step"]: r["train/loss"] for r in read_jsonl(workdir) if "train/loss" in r}
    reference = {r["step"]: r["train/loss"] for r in read_jsonl(reference_dir) if "train/loss" in r}
    assert losses == reference  # every step logged once, with the uninterrupted run's loss


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    config = tiny_config(data_dir, num_train_steps=30, checkpoint_every_steps=1, **{
        "optimizer.learning_rate": 1e4, "optimizer.grad_clip_norm": None, "optimizer.momentum": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"non-finite (training loss .* at step \d+|train state after "
                                                  r"step \d+).*last good checkpoint is step \d+"):
        train_and_evaluate(config, str(tmp_path))
    step, params = saved_params(tmp_path)
    assert 1 <= step < 30
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_a_workdir_in_use_is_refused_and_a_killed_run_leaves_it_free(data_dir, tmp_path):
    workdir = str(tmp_path / "busy")
    code = ("import sys, time\nfrom gcn_jax.training import workdir_lock\nwith workdir_lock.hold(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, workdir], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        deadline = time.monotonic() + 60
        while not (os.path.exists(os.path.join(workdir, ".lock")) and open(os.path.join(workdir, ".lock")).read()):
            assert time.monotonic() < deadline and holder.poll() is None, "the holder did not take the lock"
            time.sleep(0.05)
        with pytest.raises(WorkdirBusyError, match=rf"{re.escape(workdir)} is in use by another training run "
                                                   rf"\(pid {holder.pid} on "):
            train_and_evaluate(tiny_config(data_dir), workdir)
        assert os.listdir(workdir) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process
        holder.wait()
    with workdir_lock.hold(workdir):
        pass


def test_profile_steps_write_a_trace_of_those_steps(run_40):
    config, workdir, _ = run_40  # profiles steps 38 and 39 (tests/conftest.py)
    folder = os.path.join(workdir, "profile", "plugins", "profile", "*")
    [xplane], [perfetto] = glob.glob(os.path.join(folder, "*.xplane.pb")), glob.glob(os.path.join(folder,
                                                                                             "perfetto_trace.json.gz"))
    assert os.path.getsize(xplane) > 0
    with gzip.open(perfetto, "rt") as f:
        events = json.load(f)["traceEvents"]
    steps = sorted({int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "args" in e})
    assert config.profile_steps == (38, 39) and steps == [38, 39]  # the chosen steps alone


def test_profile_steps_outside_the_run_are_refused(data_dir):
    with pytest.raises(ConfigError, match=r"config.profile_steps: \(3, 9\): expected \(\) or \(first, last\) "
                                          r"training steps with 1 <= first <= last <= num_train_steps \(8\)"):
        check_config(tiny_config(data_dir, profile_steps=(3, 9)), 4)
