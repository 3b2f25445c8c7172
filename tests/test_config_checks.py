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


def test_the_stage_configs_chain_and_pass_the_checks_on_8_devices(tmp_path, monkeypatch):
    """configs/voc_stage{1,2,3}.py and cityscapes_stage{1,2}.py: each later stage starts from the previous run's
    best checkpoint (the README's workdirs), and each is a valid training config once that run exists."""
    from configs import cityscapes_stage1, cityscapes_stage2, voc_stage1, voc_stage2, voc_stage3
    from gcn_jax.data.datasets import components, eval_dataset

    monkeypatch.chdir(tmp_path)
    stages = {"voc": [voc_stage1, voc_stage2, voc_stage3], "cityscapes": [cityscapes_stage1, cityscapes_stage2]}
    for name, modules in stages.items():
        configs = [m.get_config() for m in modules]
        assert configs[0].init_from.workdir is None
        for stage, config in enumerate(configs[1:], 1):
            assert (config.init_from.workdir, config.init_from.step) == (f"runs/{name}_stage{stage}", "best")
            os.makedirs(f"runs/{name}_stage{stage}/checkpoints", exist_ok=True)
        for config in configs:
            check_config(config, 8)  # every dataset and class count, batch, k, optimizer
    assert components(voc_stage1.get_config().data.name) == [("coco_voc", None), ("voc_sbd/aug", None)]
    assert eval_dataset(voc_stage1.get_config().data.name) == "voc_sbd/aug"
    assert voc_stage1.get_config().crop_size == (640, 640) and voc_stage2.get_config().crop_size == (512, 512)
    assert voc_stage3.get_config().data.name == "voc_sbd/voc"
    assert components(cityscapes_stage1.get_config().data.name) == [("cityscapes_coarse", "train_extra"),
                                                                    ("cityscapes_fine", None)]
