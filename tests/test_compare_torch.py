"""benchmarks/compare_torch.py's command line (torch itself is not needed for it)."""

import pytest

from benchmarks import compare_torch


def test_extra_arguments_go_to_the_jax_side_but_not_a_width_its_peer_does_not_have(capsys):
    args, extra = compare_torch.parse_args(["--size", "64", "--", "--config.model.kernel_size=3"])
    assert extra == ["--config.model.kernel_size=3"] and args.size == (64, 64)
    with pytest.raises(SystemExit):
        compare_torch.parse_args(["--", "--config.model.backbone_width=16"])
    assert "the torch peer is the standard ResNet (width 64) only" in capsys.readouterr().err
