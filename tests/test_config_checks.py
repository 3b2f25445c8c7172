"""Impossible settings are reported, all at once and by key, before anything is computed."""

import os
import subprocess
import sys

import pytest

from gcn_jax.training.config_checks import ConfigError, check_config
from tests.tiny_run import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.mark.parametrize("name, content, expected", [
    ("random.safetensors", bytes(range(256)) * 40, r"random.safetensors: not a readable safetensors file \(its "
                                                    r"first 8 bytes give a header of \d+ bytes in a file of 10240\)"),
    ("garbage.npz", b"not a zip archive at all", r"garbage.npz: not a readable .npz file \(an .npz is a zip"),
])
def test_an_unreadable_weights_file_is_named_before_any_data_is_loaded(data_dir, tmp_path, name, content, expected):
    weights = tmp_path / name
    weights.write_bytes(content)
    config = tiny_config(data_dir, **{"model.pretrained": str(weights)})
    with pytest.raises(ConfigError, match=r"config.model.pretrained: .*" + expected):
        check_config(config, 4)
