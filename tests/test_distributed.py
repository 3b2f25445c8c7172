"""Several processes: two processes on loopback train like one process with two devices (and evaluate with the
dense CRF, each refining its own images, as it does), and jax.distributed starts only for multi-process launches."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gcn_jax import parallel
from gcn_jax.data import pipeline
from gcn_jax.data.datasets import load_source
from gcn_jax.evaluation.evaluate import Evaluator
from gcn_jax.training.checkpoints import load_variables
from tests.tiny_run import read_jsonl, run_steps, saved_params, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_on_two_processes(data_dir, workdir, *steps):
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
    workers = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "multiprocess_worker.py"), port, str(i),
                                 data_dir, workdir, *steps], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for i, (w, out) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
        assert f"process {i} of 2 done" in out
    return outputs


def test_two_processes_on_loopback_agree_with_one(data_dir, tmp_path):
    workdir = str(tmp_path / "two")
    _train_on_two_processes(data_dir, workdir, "3", "crf")  # the final evaluation with the CRF
    # One process, 2 devices, fed the two processes' shards side by side (process 0's rows first).
    config = tiny_config(data_dir, num_train_steps=3, global_batch_size=2, eval_batch_size=2)
    source = load_source(config.data.name, "train", data_dir)
    shards = [iter(pipeline.train_loader(config.data, 48, 2, source=source, process_index=i, process_count=2))
              for i in range(2)]
    batches = []
    for _ in range(3):
        parts = [next(s) for s in shards]
        batches.append({k: np.concatenate([p[k] for p in parts]) for k in ("image", "label", "mask")})
    losses, params, _ = run_steps(config, jax.devices()[:2], batches)
    _, initial, _ = run_steps(config, jax.devices()[:2], [])
    step, two_process = saved_params(workdir)
    assert step == 3

    # The parameters agree to a small part of how far 3 steps moved them, not to float rounding: the sums across
    # processes (gloo) and across devices are in other orders, and the early BatchNorm biases' gradients cancel
    # to a few parts in a thousand of their terms, so those biases (which start at 0) differed by up to 1.4% of
    # their value on an AMD EPYC. Both processes training on process 0's shard fails it (the first BatchNorm's
    # bias: 62 of its 64 values).
    def agree(a, b, start):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=max(1e-6, 0.05 * float(np.max(np.abs(b - start)))))

    jax.tree.map(agree, two_process, params, initial)
    logged = [r["train/loss"] for r in read_jsonl(workdir) if "train/loss" in r]
    np.testing.assert_allclose(logged, losses, rtol=1e-5)
    # Each process refined its own 5 validation images; the counts were summed over both.
    evaluated = [r for r in read_jsonl(workdir) if "eval/miou" in r]
    assert [r["step"] for r in evaluated] == [3]
    config.eval.crf = True
    mesh = parallel.make_mesh(jax.devices()[:2])
    model, variables, _ = load_variables(config, workdir, 3, mesh)
    one = Evaluator(config, model, mesh)(variables)
    for key in ("miou", "pixel_accuracy", "boundary_accuracy", "interior_accuracy"):
        assert evaluated[0][f"eval/{key}"] == pytest.approx(one[key], abs=1e-4), key


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


@pytest.mark.slow
def test_two_processes_agree_to_pass_over_a_step_only_one_of_them_cannot_read(data_dir, tmp_path):
    workdir = str(tmp_path / "two")
    _train_on_two_processes(data_dir, workdir)  # checkpoints 2 and 3
    os.remove(os.path.join(workdir, "checkpoints", "3", "data", "process_1-of-2.json"))  # process 1's position
    outputs = _train_on_two_processes(data_dir, workdir, "4")  # both resume from 2, not only process 0 from 3
    assert "checkpoint step 3 cannot be read" in outputs[0] + outputs[1]
    assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", "3"))
    assert saved_params(workdir)[0] == 4
