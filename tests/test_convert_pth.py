"""tools/convert_pth.py: PyTorch checkpoint -> .safetensors. Runs where torch is installed (it is not a
dependency of gcn-jax; the converter is the only place that needs it)."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import convert_pth  # noqa: E402


def test_converts_a_nested_dataparallel_checkpoint(tmp_path):
    from safetensors.numpy import load_file

    state = {"conv1.weight": torch.randn(64, 3, 7, 7), "bn1.running_var": torch.rand(64) + 0.5,
             "bn1.num_batches_tracked": torch.tensor(7), "fc.weight": torch.randn(10, 64).half()}
    src = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, src)
    dst = tmp_path / "out.safetensors"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_pth.py"), str(src), str(dst)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = load_file(str(dst))
    assert set(out) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v.float().numpy() if v.is_floating_point() else v.numpy())
    assert out["fc.weight"].dtype == np.float32


def test_rejects_a_file_without_tensors(tmp_path):
    src = tmp_path / "bad.pth"
    torch.save({"epoch": 3}, src)
    with pytest.raises(ValueError, match="bad.pth: no state dict of tensors"):
        convert_pth.convert(str(src), str(tmp_path / "o.safetensors"))
    assert not (tmp_path / "o.safetensors").exists()
