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


def test_with_the_largest_batch_that_fits_every_run_uses_the_fitted_batch(monkeypatch):
    # On a GPU in bfloat16, two rounds: the first JAX run fits the batch (12 here) and every later run, torch's
    # included, uses it.
    commands = []

    def run_side(name, command, json_path, env):
        commands.append((name, command))
        batch = 12 if "--fit_batch" in command else int(
            command[command.index("--batch") + 1] if name == "torch" else
            next(a for a in command if a.startswith("--config.global_batch_size=")).split("=")[1])
        return {"config": {"global_batch_size": batch}, "train": {"images_per_s": 1.0}, "infer": {"images_per_s": 2.0}}

    monkeypatch.setattr(compare_torch, "run_side", run_side)
    compare_torch.main(["--device", "cuda", "--amp", "--fit-batch", "--rounds", "2"])
    names = [name for name, _ in commands]
    assert names == ["jax", "torch", "torch", "jax"]
    first, *rest = [command for _, command in commands]
    assert "--fit_batch" in first and "--config.model.dtype=bfloat16" in first
    for name, command in commands[1:]:
        assert "--fit_batch" not in command
        if name == "torch":
            assert command[command.index("--batch") + 1] == "12" and "--amp" in command
            assert command[command.index("--device") + 1] == "cuda"
        else:
            assert "--config.global_batch_size=12" in command and "--config.model.dtype=bfloat16" in command


def test_fit_batch_is_for_the_whole_model(capsys):
    with pytest.raises(SystemExit):
        compare_torch.parse_args(["--fit-batch", "--part", "backbone"])
    assert "--fit-batch fits the whole model's train step, not --part backbone's" in capsys.readouterr().err
