"""`summary.py`, the model smoke check users run from the command line."""

import os
import re
import subprocess
import sys

import pytest

from gcn_jax.models import GCNSegmentation, summary
from gcn_jax.models.summary import abstract_variables, count_params, forward_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, "summary.py", "--config", "configs/voc.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_prints_params_flops_and_runs_a_forward_pass():
    r = run("--config.model.backbone=resnet18", "--config.model.kernel_size=7", "--image_size=64,96")
    assert r.returncode == 0, r.stderr
    model, shape = GCNSegmentation(21, "resnet18", kernel_size=7), (1, 64, 96, 3)
    expected = count_params(abstract_variables(model, shape)["params"])
    total = re.search(r"^total\s+([\d,]+)$", r.stdout, re.M)
    assert total and int(total.group(1).replace(",", "")) == expected
    gflops = re.search(r"forward at 1x64x96x3: ([\d.]+) GFLOPs \(XLA\), ([\d.]+) G multiply-adds", r.stdout)
    flops = forward_flops(model, shape)
    assert gflops.groups() == (f"{flops / 1e9:.2f}", f"{flops / 2e9:.2f}")
    assert "output (1, 64, 96, 21) float32, finite=True" in r.stdout


def test_bad_config_values_fail_before_any_compute():
    r = run("--config.model.kernel_size=14", "--noforward")
    assert r.returncode == 2 and "Traceback" not in r.stderr  # an error raised on purpose: its message alone
    assert "kernel_size for res2 must be a positive odd integer" in r.stderr
    r = run("--config.model.kernel_size=14", "--noforward", "--verbose")
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    r = run("--config.model.kernal_size=7")
    assert r.returncode != 0 and "kernal_size" in r.stderr
    r = run("--image_size=64x64")
    assert r.returncode != 0 and "--image_size must be two positive integers" in r.stderr


def test_modules_are_listed_in_the_order_data_flows():
    model, shape = GCNSegmentation(6, "resnet18", kernel_size=3), (1, 64, 64, 3)
    variables = abstract_variables(model, shape)
    groups = summary.module_groups(variables["params"], summary.call_order(model, shape))
    stages, strides = ("res2", "res3", "res4", "res5"), (16, 8, 4, 2, 1)
    assert list(groups) == (["backbone/stem"] + [f"backbone/layer{i}" for i in range(1, 5)]
                            + [f"{kind}_{s}" for s in stages for kind in ("head", "br")]
                            + [f"{kind}_s{s}" for s in strides for kind in ("up", "br")])
    assert sum(groups.values()) == count_params(variables["params"])


def test_a_height_width_crop_size_is_the_default_input(tmp_path):
    config = tmp_path / "wide.py"
    config.write_text("from configs import voc\n\n\ndef get_config():\n    config = voc.get_config()\n"
                      "    config.crop_size = (64, 96)\n    config.model.backbone = 'resnet18'\n    return config\n")
    r = subprocess.run([sys.executable, "summary.py", "--config", str(config), "--noforward"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "forward at 1x64x96x3:" in r.stdout


def test_an_optional_config_field_takes_none_as_in_the_other_command_lines():
    r = run("--config.model.backbone=resnet18", "--config.model.head=stack", "--config.model.kernel_size=3",
            "--config.model.stack_width=None", "--image_size=64,64", "--noforward")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "total" in r.stdout
