"""benchmarks/compare_torch.py's command line (torch itself is not needed for it)."""

import pytest

from benchmarks import compare_torch


def test_extra_arguments_go_to_the_jax_side_but_not_a_width_its_peer_does_not_have(capsys):
    args, extra = compare_torch.parse_args(["--size", "64", "--", "--config.model.kernel_size=3"])
    assert extra == ["--config.model.kernel_size=3"] and args.size == (64, 64)
    with pytest.raises(SystemExit):
        compare_torch.parse_args(["--", "--config.model.backbone_width=16"])
    assert "the torch peer is the standard ResNet (width 64) only" in capsys.readouterr().err


def test_summary_gives_the_ratio_of_medians_and_the_median_of_each_rounds_ratio():
    # Three rounds in which the machine slows down for both sides: JAX 10, 12, 11 images/s against torch 5, 8,
    # 10. The medians are 11 and 8 (ratio 1.375); the rounds' own ratios are 2.0, 1.5 and 1.1, median 1.5.
    def side(train, infer):
        return {"train": {"images_per_s": train}, "infer": {"images_per_s": infer}}

    rounds = [{"jax": side(j, 2 * j), "torch": side(t, t)} for j, t in [(10.0, 5.0), (12.0, 8.0), (11.0, 10.0)]]
    table = compare_torch.summary(rounds)
    train = table["train"]
    assert (train["jax"]["images_per_s"], train["jax"]["min"], train["jax"]["max"]) == (11.0, 10.0, 12.0)
    assert train["ratio_jax_over_torch"] == pytest.approx(11 / 8)
    assert train["round_ratios"] == pytest.approx([2.0, 1.5, 1.1])
    assert train["paired_ratio"] == pytest.approx(1.5)
    assert table["infer"]["paired_ratio"] == pytest.approx(3.0)
