"""study.py: the grids of the paper's ablation tables, resuming and skipping finished runs, the report's numbers,
and the quick command end to end."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import study as study_config
from gcn_jax.errors import InputError
from gcn_jax.study import grid, report, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _overrides(variant):
    return dict(variant.overrides)


def test_kernel_size_grid_is_table_1():
    variants = grid.get_study("kernel_size").variants()
    assert [v.name for v in variants] == ["base", "gcn_k3", "gcn_k7", "gcn_k11", "gcn_k15"]
    assert _overrides(variants[0]) == {"model.head": "base", "model.use_br": False, "model.stage_kernel_sizes": ()}
    assert _overrides(variants[4]) == {"model.head": "gcn", "model.use_br": False, "model.stage_kernel_sizes": (),
                                       "model.kernel_size": 15}
    assert [v.paper() for v in variants] == [69.0, 70.1, 72.8, 73.7, 74.5]
    assert [v.name for v in grid.get_study("kernel_size").variants((9, 5))] == ["base", "gcn_k5", "gcn_k9"]


def test_comparison_grids_pair_each_k_and_br_uses_the_config_k():
    conv = grid.get_study("gcn_vs_conv").variants()
    assert [v.name for v in conv] == ["gcn_k3", "conv_k3", "gcn_k5", "conv_k5", "gcn_k7", "conv_k7", "gcn_k9",
                                      "conv_k9"]
    assert [v.paper() for v in conv] == [70.1, 69.8, 71.1, 70.4, 72.8, 69.6, 73.4, 68.8]
    stack = grid.get_study("gcn_vs_stack").variants()
    assert [(v.kind, v.k, v.paper()) for v in stack[-2:]] == [("gcn", 11, 73.7), ("stack", 11, 67.5)]
    br = grid.get_study("br").variants((), config_kernel_size=11)
    assert [(v.name, _overrides(v)["model.head"], _overrides(v)["model.use_br"]) for v in br] == [
        ("base", "base", False), ("gcn_k11", "gcn", False), ("gcn_br_k11", "gcn", True)]


@pytest.mark.parametrize("sizes", [(4,), (3, 3), (0,)])
def test_bad_kernel_sizes_are_refused(sizes):
    with pytest.raises(InputError, match="odd"):
        grid.get_study("kernel_size").variants(sizes)


def test_unknown_study_is_refused():
    with pytest.raises(InputError, match="kernel_size, gcn_vs_conv, gcn_vs_stack, br"):
        grid.get_study("table9")


def test_variant_config_applies_overrides_and_offsets_both_seeds():
    config = study_config.get_config()
    config.model.use_br = True
    config.model.stage_kernel_sizes = (15, 13, 11, 9)
    variant = grid.get_study("kernel_size").variants((7,))[1]
    changed = grid.variant_config(config, variant, seed=2)
    assert (changed.model.head, changed.model.kernel_size, changed.model.use_br) == ("gcn", 7, False)
    assert tuple(changed.model.stage_kernel_sizes) == ()
    assert (changed.seed, changed.data.seed) == (config.seed + 2, config.data.seed + 2)
    assert config.model.use_br and config.model.kernel_size == 15  # the study's config is left as it was


def test_param_counts_match_the_papers_formulas():
    # res-5 of ResNet-18 has c = 512 channels; C = 6 classes, no bias: GCN 2k(cC + CC), trivial conv k*k*c*C.
    config = study_config.get_config()
    counts = {}
    for variant in grid.get_study("gcn_vs_conv").variants((3,)) + grid.get_study("kernel_size").variants((3,))[:1]:
        counts[variant.name] = runner.param_counts(grid.variant_config(config, variant, 0))["res5_head_params"]
    assert counts == {"gcn_k3": 2 * 3 * (512 * 6 + 6 * 6), "conv_k3": 3 * 3 * 512 * 6, "base": 512 * 6}


def _summary(miou):
    return {"miou": miou, "pixel_accuracy": 0.9, "mean_class_accuracy": 0.8, "boundary_accuracy": miou - 0.1,
            "interior_accuracy": miou + 0.1, "per_class_iou": {"background": 0.9}}


class FakeTraining:
    """Stands in for the training loop: records which runs were trained and 'finishes' them."""

    def __init__(self, interrupt=None):
        self.trained, self.interrupt = [], interrupt

    def train(self, config, workdir):
        name = os.path.relpath(workdir, self.root)
        if name == self.interrupt:
            self.interrupt = None
            raise KeyboardInterrupt
        self.trained.append(name)
        return _summary(0.5 + 0.01 * config.model.kernel_size * (config.model.head != "base") + 0.001 * config.seed)

    def evaluate(self, config, workdir):
        raise AssertionError("a run trained here is evaluated by the loop, not again")


def _br_variant(name, k=15):
    return next(v for v in grid.get_study("br").variants((), k) if v.name == name)


def test_study_trains_each_run_once_and_resumes_where_it_stopped(tmp_path):
    config = study_config.get_config()
    study = grid.get_study("kernel_size")
    fake = FakeTraining(interrupt="gcn_k7/seed1")
    fake.root = str(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(study, config, fake.root, 2, (3, 7), fake.train, fake.evaluate)
    assert fake.trained == ["base/seed0", "base/seed1", "gcn_k3/seed0", "gcn_k3/seed1", "gcn_k7/seed0"]
    assert os.path.exists(tmp_path / "gcn_k7/seed1" / runner.SECONDS_FILE)  # the interrupted attempt's time
    fake.trained.clear()
    results = runner.run_study(study, config, fake.root, 2, (3, 7), fake.train, fake.evaluate)
    assert fake.trained == ["gcn_k7/seed1"]  # only the unfinished run
    expected = [(v, s) for v in ("base", "gcn_k3", "gcn_k7") for s in (0, 1)]
    assert [(r["variant"], r["seed"]) for r in results] == expected
    fake.trained.clear()
    runner.run_study(study, config, fake.root, 3, (3, 7), fake.train, fake.evaluate)  # one more seed
    assert fake.trained == ["base/seed2", "gcn_k3/seed2", "gcn_k7/seed2"]


def test_another_config_or_study_in_the_same_workdir_is_refused(tmp_path):
    config = study_config.get_config()
    fake = FakeTraining()
    fake.root = str(tmp_path)
    runner.run_study(grid.get_study("kernel_size"), config, fake.root, 1, (3,), fake.train, fake.evaluate)
    config.num_train_steps = 10
    with pytest.raises(InputError, match="num_train_steps: 1800 then, 10 now"):
        runner.run_study(grid.get_study("kernel_size"), config, fake.root, 1, (3,), fake.train, fake.evaluate)
    with pytest.raises(InputError, match="holds the study 'kernel_size', not 'br'"):
        runner.run_study(grid.get_study("br"), config, fake.root, 1, (), fake.train, fake.evaluate)


def test_configs_saved_before_a_field_was_added_still_match_at_its_default(tmp_path):
    config = study_config.get_config()
    fake = FakeTraining()
    fake.root = str(tmp_path / "old")
    runner.run_study(grid.get_study("kernel_size"), config, fake.root, 1, (15,), fake.train, fake.evaluate)
    # Make the saved configs look written by a gcn-jax from before `model.backbone_width` existed.
    path = os.path.join(fake.root, runner.STUDY_FILE)
    with open(path) as f:
        saved = json.load(f)
    del saved["config"]["model"]["backbone_width"]
    with open(path, "w") as f:
        json.dump(saved, f)
    for name in ("base", "gcn_k15"):  # and what the training loop wrote beside their checkpoints
        saved = json.loads(grid.variant_config(config, _br_variant(name), 0).to_json_best_effort())
        del saved["model"]["backbone_width"]
        with open(os.path.join(fake.root, name, "seed0", "config.json"), "w") as f:
            json.dump(saved, f)
    fake.trained.clear()
    runner.run_study(grid.get_study("kernel_size"), config, fake.root, 1, (15,), fake.train, fake.evaluate)
    assert fake.trained == []  # the same study and config: nothing to train, and --report reads it
    newer = FakeTraining()
    newer.root = str(tmp_path / "br")
    runner.run_study(grid.get_study("br"), config, newer.root, 1, (), newer.train, newer.evaluate, reuse=(fake.root,))
    assert newer.trained == ["gcn_br_k15/seed0"]  # the old runs are taken over
    for broken in ({"model": None}, {"model": {"backbone_width": "sixteen"}}, {}):  # odd files: not the same config
        with open(os.path.join(fake.root, "base", "seed0", "config.json"), "w") as f:
            json.dump(broken, f)
        assert runner.reusable_result(os.path.join(fake.root, "base", "seed0"),
                                      grid.variant_config(config, _br_variant("base"), 0)) is None
    with open(os.path.join(fake.root, runner.STUDY_FILE)) as f:  # a missing field that was always there:
        saved = json.load(f)                                         # a difference, not a default
    del saved["config"]["model"]["head"]
    with open(os.path.join(fake.root, runner.STUDY_FILE), "w") as f:
        json.dump(saved, f)
    with pytest.raises(InputError, match="model.head: None then, 'gcn' now"):
        runner.run_study(grid.get_study("kernel_size"), config, fake.root, 1, (15,), fake.train, fake.evaluate)
    saved["config"]["model"]["head"] = "gcn"
    with open(os.path.join(fake.root, runner.STUDY_FILE), "w") as f:
        json.dump(saved, f)
    config.model.backbone_width = 16  # but a config that sets the new field otherwise is another config
    with pytest.raises(InputError, match="model.backbone_width: 64 then, 16 now"):
        runner.run_study(grid.get_study("kernel_size"), config, fake.root, 1, (15,), fake.train, fake.evaluate)
    narrow = FakeTraining()
    narrow.root = str(tmp_path / "br_narrow")
    runner.run_study(grid.get_study("br"), config, narrow.root, 1, (), narrow.train, narrow.evaluate,
                     reuse=(fake.root,))
    assert narrow.trained == ["base/seed0", "gcn_k15/seed0", "gcn_br_k15/seed0"]


def test_report_tables_carry_mean_and_spread_over_seeds(tmp_path):
    study = grid.get_study("gcn_vs_conv")
    variants = study.variants((3, 5))
    mious = {("gcn_k3", 0): 0.61, ("gcn_k3", 1): 0.65, ("conv_k3", 0): 0.58, ("conv_k3", 1): 0.60,
             ("gcn_k5", 0): 0.70, ("gcn_k5", 1): 0.66}  # conv_k5 not run
    results = [{"variant": v.name, "kind": v.kind, "k": v.k, "seed": s, "step": 100, **_summary(mious[v.name, s]),
                "params": 1000, "head_params": 40, "res5_head_params": 10, "train_seconds": 60.0}
               for v in variants for s in (0, 1) if (v.name, s) in mious]
    paths = report.write_report(str(tmp_path), study, variants, results, ["conv_k5/seed0", "conv_k5/seed1"],
                                {"config": "configs/study.py", "num_train_steps": 100, "seeds": [0, 1]})
    text = (tmp_path / "results.md").read_text()
    gcn3 = 100 * np.array([0.61, 0.65])
    assert f"| 3 | {gcn3.mean():.1f} ± {gcn3.std(ddof=1):.1f} | 70.1 | 59.0 ± 1.4 | 69.8 |" in text
    assert "| 5 | 68.0 ± 2.8 | 71.1 | — | 70.4 |" in text
    assert "Not finished: conv_k5/seed0, conv_k5/seed1." in text
    data = json.loads((tmp_path / "results.json").read_text())
    gcn5 = next(r for r in data["variants"] if r["variant"] == "gcn_k5")
    assert gcn5["miou"]["min"] == pytest.approx(66.0) and gcn5["miou"]["max"] == pytest.approx(70.0)
    assert gcn5["paper_miou"] == 71.1 and data["missing"] == ["conv_k5/seed0", "conv_k5/seed1"]
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    first = [(r["variant"], r["seed"], float(r["miou"])) for r in rows[:2]]
    assert first == [("gcn_k3", "0", 0.61), ("gcn_k3", "1", 0.65)]
    assert len(rows) == 6
    assert Image.open(paths[3]).size == (768, 504)


def test_br_report_has_boundary_and_interior_accuracy(tmp_path):
    study = grid.get_study("br")
    variants = study.variants((), 15)
    results = [{"variant": v.name, "kind": v.kind, "k": v.k, "seed": 0, "step": 100, **_summary(0.5 + 0.1 * i),
                "params": 1000, "head_params": 40, "res5_head_params": 10, "train_seconds": 60.0}
               for i, v in enumerate(variants)]
    report.write_report(str(tmp_path), study, variants, results, [],
                        {"config": "configs/study.py", "num_train_steps": 100, "seeds": [0]})
    text = (tmp_path / "results.md").read_text()
    assert "| GCN + BR (k=15) | 60.0 | 80.0 | 70.0 | 73.4 / 95.1 / 74.7 |" in text
    assert "| base (1x1) | 40.0 | 60.0 | 50.0 | 71.3 / 93.9 / 69.0 |" in text


@pytest.mark.slow
def test_quick_study_command_end_to_end(data_dir, tmp_path):
    workdir = str(tmp_path / "study")
    command = [sys.executable, "study.py", "--study=kernel_size", "--config", "configs/study.py", "--workdir",
               workdir, "--seeds=1", "--kernel_sizes=3", "--config.num_train_steps=3",
               "--config.data.name=synthetic_shapes/tiny", f"--config.data.data_dir={data_dir}",
               "--config.crop_size=48,64", "--config.data.eval_pad_size=48,64"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| base (1x1) |" in result.stdout and "| 3 |" in result.stdout
    for name in ("results.md", "results.json", "results.csv", "results.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    data = json.loads(open(os.path.join(workdir, "results.json")).read())
    assert [(r["variant"], r["step"]) for r in data["runs"]] == [("base", 3), ("gcn_k3", 3)]
    checkpoints = os.listdir(os.path.join(workdir, "gcn_k3", "seed0", "checkpoints"))
    os.remove(os.path.join(workdir, "results.md"))
    again = subprocess.run(command + ["--report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stderr and os.path.exists(os.path.join(workdir, "results.md"))
    assert os.listdir(os.path.join(workdir, "gcn_k3", "seed0", "checkpoints")) == checkpoints
    # A run whose result file is lost (killed between training and writing it) is evaluated from its checkpoint.
    result_file = os.path.join(workdir, "gcn_k3", "seed0", runner.RESULT_FILE)
    os.remove(result_file)
    evaluated = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(open(result_file).read())["miou"] == pytest.approx(data["runs"][1]["miou"], abs=1e-6)
    assert os.listdir(os.path.join(workdir, "gcn_k3", "seed0", "checkpoints")) == checkpoints
    missing = subprocess.run(command[:-5] + ["--report", "--seeds=2"] + command[-5:], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 0 and "Not finished: base/seed1, gcn_k3/seed1." in missing.stdout


def test_reuse_takes_over_only_runs_of_the_same_config(tmp_path):
    config = study_config.get_config()
    first = FakeTraining()
    first.root = str(tmp_path / "table1")
    runner.run_study(grid.get_study("kernel_size"), config, first.root, 1, (15,), first.train, first.evaluate)
    for name in ("base", "gcn_k15"):  # what the training loop writes beside its checkpoints
        changed = grid.variant_config(config, _br_variant(name), 0)
        with open(os.path.join(first.root, name, "seed0", "config.json"), "w") as f:
            f.write(changed.to_json_best_effort())
    second = FakeTraining()
    second.root = str(tmp_path / "table5")
    results = runner.run_study(grid.get_study("br"), config, second.root, 1, (), second.train, second.evaluate,
                               reuse=(first.root,))
    assert second.trained == ["gcn_br_k15/seed0"]
    assert os.path.exists(os.path.join(second.root, "base", "seed0", "config.json"))  # reusable in turn
    assert [r.get("reused_from") for r in results] == [os.path.join(first.root, "base", "seed0"),
                                                       os.path.join(first.root, "gcn_k15", "seed0"), None]
    third = FakeTraining()
    third.root = str(tmp_path / "table5_k13")
    config.model.kernel_size = 13  # another config: the base's config differs too (kernel_size is kept in it)
    runner.run_study(grid.get_study("br"), config, third.root, 1, (), third.train, third.evaluate, reuse=(first.root,))
    assert third.trained == ["base/seed0", "gcn_k13/seed0", "gcn_br_k13/seed0"]
    with pytest.raises(InputError, match="not a study workdir"):
        runner.run_study(grid.get_study("br"), config, third.root, 1, (), third.train, third.evaluate,
                         reuse=(str(tmp_path),))


def test_a_diverged_run_is_recorded_and_the_study_goes_on(tmp_path):
    from gcn_jax.training.loop import NonFiniteLossError

    config = study_config.get_config()
    fake = FakeTraining()
    fake.root = str(tmp_path)
    train = fake.train

    def diverging(config, workdir):
        if config.model.head == "base":
            raise NonFiniteLossError("non-finite loss at step 3; stopping")
        return train(config, workdir)

    study = grid.get_study("kernel_size")
    results = runner.run_study(study, config, fake.root, 1, (3,), diverging, fake.evaluate)
    assert fake.trained == ["gcn_k3/seed0"]
    assert results[0]["miou"] is None and "non-finite loss" in results[0]["failed"]
    assert runner.run_study(study, config, fake.root, 1, (3,), diverging, fake.evaluate) == results  # not rerun
    report.write_report(fake.root, study, study.variants((3,)), results, [],
                        {"config": "configs/study.py", "num_train_steps": 1800, "seeds": [0]})
    text = (tmp_path / "results.md").read_text()
    assert "| base (1x1) | — | 69.0 | 3,072 |" in text
    assert "Stopped on a non-finite loss (no mIoU, left out of the means): base/seed0." in text


def test_a_run_finished_earlier_or_evaluated_on_part_of_the_split_is_evaluated_from_its_checkpoint(tmp_path):
    config = study_config.get_config()
    evaluated = []

    def evaluate(config, workdir):
        evaluated.append((os.path.basename(os.path.dirname(workdir)), config.eval.max_batches))
        return _summary(0.42), config.num_train_steps

    variant = grid.get_study("kernel_size").variants((3,))[1]
    result = runner.run_variant(config, variant, 0, str(tmp_path / "a"), lambda c, w: None, evaluate)
    assert result["miou"] == 0.42 and result["step"] == 1800 and evaluated == [("gcn_k3", 0)]
    config.eval.max_batches = 2  # the loop's own final evaluation saw only part of the split
    result = runner.run_variant(config, variant, 0, str(tmp_path / "b"), lambda c, w: _summary(0.9), evaluate)
    assert result["miou"] == 0.42 and evaluated[-1] == ("gcn_k3", 2)


def test_report_refuses_a_workdir_of_another_study_or_config_and_shows_missing_seeds(tmp_path):
    from gcn_jax.study import command

    config = study_config.get_config()
    fake = FakeTraining()
    fake.root = str(tmp_path)
    runner.run_study(grid.get_study("kernel_size"), config, fake.root, 1, (3,), fake.train, fake.evaluate)
    main = lambda study, seeds=2, ks=(): command.main(study, config, fake.root, seeds, list(ks), True, "c.py")  # noqa
    with pytest.raises(InputError, match="holds the study 'kernel_size', not 'gcn_vs_conv'"):
        main("gcn_vs_conv", ks=("3",))
    with pytest.raises(InputError, match="--seeds=0: expected at least 1"):
        main("kernel_size", seeds=0)
    with pytest.raises(InputError, match="--kernel_sizes=3,x: expected odd integers"):
        main("kernel_size", ks=("3", "x"))
    with pytest.raises(InputError, match="no study has run there"):
        command.main("kernel_size", config, str(tmp_path / "empty"), 1, [], True, "c.py")
    with pytest.raises(InputError, match="--config.model.kernel_size=K"):
        grid.get_study("br").variants((7,))
    main("kernel_size", seeds=2, ks=("3",))  # seed 1 was never run
    text = (tmp_path / "results.md").read_text()
    assert "| 3 | 53.0 (n=1) | 70.1 |" in text and "Not finished: base/seed1, gcn_k3/seed1." in text


def test_the_large_study_task_changes_only_size_width_and_batch():
    """configs/study_large.py: the same task and schedule as configs/study.py at 384² with a width-16 ResNet-18
    and batch 4, where the res-5 map is 12x12 (k = 15 about its size, as in the paper) and the config is valid."""
    from configs import study_large
    from gcn_jax.models import ResNet
    from gcn_jax.models.summary import abstract_variables
    from gcn_jax.training.config_checks import check_config

    small, large = study_config.get_config(), study_large.get_config()
    changed = runner._differences(json.loads(small.to_json_best_effort()), json.loads(large.to_json_best_effort()))
    assert sorted(line.split(":")[0] for line in changed) == [
        "crop_size", "data.eval_pad_size", "data.name", "global_batch_size", "model.backbone_width"]
    check_config(large, num_devices=1)
    trunk = ResNet(large.model.backbone, width=large.model.backbone_width)
    features = jax.eval_shape(lambda v: trunk.apply(v, jnp.zeros((1, 384, 384, 3))),
                              abstract_variables(trunk, (1, 384, 384, 3)))
    assert [f.shape[1:] for f in features] == [(96, 96, 16), (48, 48, 32), (24, 24, 64), (12, 12, 128)]
