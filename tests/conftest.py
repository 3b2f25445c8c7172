"""Every test process sees 4 CPU devices, so the sharded code paths (a batch split over devices, replicated
parameters) are exercised without accelerators (set before any JAX computation). Also the fixtures that
several test files share: the tiny synthetic set and one 40-step training run."""

import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 4)

# One persistent XLA compilation cache for the session: most of the suite's time is compiling the same few
# small programs again (the tiny config's train step in many tests). Set in the environment, so that the
# xdist workers (started after this runs in the controller) and the command lines the tests start share it;
# a cache the caller set is used as it is and kept. Entries are keyed by the program and the XLA flags.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gcn-jax-tests-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

from gcn_jax.data.datasets import load_source  # noqa: E402
from gcn_jax.training.loop import train_and_evaluate  # noqa: E402
from tests.tiny_run import tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    load_source("synthetic_shapes/tiny", "train", data_dir)  # generated on first use
    return data_dir


@pytest.fixture(scope="session")
def run_40(data_dir, tmp_path_factory):
    """40 uninterrupted steps on 4 devices, evaluated at step 20 and at the end; steps 38 and 39 profiled."""
    workdir = str(tmp_path_factory.mktemp("run40"))
    config = tiny_config(data_dir, num_train_steps=40, eval_every_steps=20, profile_steps=(38, 39))
    summary = train_and_evaluate(config, workdir)
    return config, workdir, summary


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it: the controller
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
