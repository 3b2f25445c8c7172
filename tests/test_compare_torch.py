"""benchmarks/compare_torch.py's command line (torch itself is not needed for it)."""

import json
import os
import sys

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


def fake_runs(monkeypatch, torch_fits=lambda batch: True):
    """compare_torch's runs replaced by a record of their commands: JAX's --fit_batch run finds 12 images, and
    the peer runs out of memory where ``torch_fits`` says so."""
    commands = []

    def run_side(name, command, json_path, env):
        commands.append((name, command))
        batch = 12 if "--fit_batch" in command else int(batch_of(name, command))
        if name == "torch" and not torch_fits(batch):
            raise compare_torch.PeerOutOfMemory(f"torch_peer.py: out of memory on cuda at --batch {batch}")
        return {"config": {"global_batch_size": batch}, "train": {"images_per_s": 1.0}, "infer": {"images_per_s": 2.0}}

    monkeypatch.setattr(compare_torch, "run_side", run_side)
    return commands


def batch_of(name, command):
    return (command[command.index("--batch") + 1] if name == "torch" else
            next(a for a in command if a.startswith("--config.global_batch_size=")).split("=")[1])


def test_with_the_largest_batch_that_fits_every_run_uses_the_fitted_batch(monkeypatch, capsys):
    # On a GPU in bfloat16, two rounds: the first JAX run fits the batch (12 here) and every later run, torch's
    # included, uses it.
    commands = fake_runs(monkeypatch)
    compare_torch.main(["--device", "cuda", "--amp", "--fit-batch", "--rounds", "2"])
    assert [name for name, _ in commands] == ["jax", "torch", "torch", "jax"]
    first = commands[0][1]
    assert "--fit_batch" in first and "--config.model.dtype=bfloat16" in first
    for name, command in commands[1:]:
        assert "--fit_batch" not in command and batch_of(name, command) == "12"
        if name == "torch":
            assert "--amp" in command and command[command.index("--device") + 1] == "cuda"
        else:
            assert "--config.model.dtype=bfloat16" in command
    assert "batch 12 of 256x256, bfloat16, torch on cuda" in capsys.readouterr().out


def test_a_peer_out_of_memory_runs_again_with_half_the_batch(monkeypatch, capsys, tmp_path):
    commands = fake_runs(monkeypatch, torch_fits=lambda batch: batch <= 3)
    compare_torch.main(["--device", "cuda", "--fit-batch", "--rounds", "2", "--json", str(tmp_path / "c.json")])
    assert [(name, batch_of(name, command)) for name, command in commands] == [
        ("jax", "2"), ("torch", "12"), ("torch", "6"), ("torch", "3"), ("torch", "3"), ("jax", "12")]  # 2: --batch,
    # which the fitting run replaces
    out = capsys.readouterr().out
    assert "torch's runs from here on: batch 6" in out and "torch's runs from here on: batch 3" in out
    assert "batch 12 (torch 3: out of memory at more) of 256x256" in out
    settings = json.loads((tmp_path / "c.json").read_text())["settings"]
    assert (settings["batch"], settings["torch_batch"]) == (12, 3)


def test_a_peer_out_of_memory_with_one_image_ends_the_comparison(monkeypatch):
    fake_runs(monkeypatch, torch_fits=lambda batch: False)
    with pytest.raises(SystemExit, match="torch ran out of memory even with one image"):
        compare_torch.main(["--batch", "2", "--rounds", "1"])


def test_fit_batch_is_for_the_whole_model(capsys):
    with pytest.raises(SystemExit):
        compare_torch.parse_args(["--fit-batch", "--part", "backbone"])
    assert "--fit-batch fits the whole model's train step, not --part backbone's" in capsys.readouterr().err


def test_a_run_shows_its_output_and_a_peer_out_of_memory_is_told_apart(tmp_path, capfd):
    path = str(tmp_path / "r.json")
    script = ("import json, sys; print('the table'); json.dump({'ok': 1}, open(sys.argv[1], 'w')); "
              "sys.stderr.write('torch_peer.py: out of memory on cuda at --batch 8\\n'); sys.exit(int(sys.argv[2]))")
    env = dict(os.environ)
    assert compare_torch.run_side("torch", [sys.executable, "-c", script, path, "0"], path, env) == {"ok": 1}
    assert "the table" in capfd.readouterr().out
    with pytest.raises(compare_torch.PeerOutOfMemory, match="out of memory on cuda at --batch 8"):
        compare_torch.run_side("torch", [sys.executable, "-c", script, path, str(compare_torch.TORCH_OUT_OF_MEMORY)],
                               path, env)
    with pytest.raises(SystemExit, match="jax failed .exit 4.:"):  # only the peer's exit 4 means out of memory
        compare_torch.run_side("jax", [sys.executable, "-c", script, path, "4"], path, env)
