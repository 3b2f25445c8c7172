"""eval.py and predict.py as a user runs them, on a checkpoint of the tiny run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import cityscapes, run, synthetic
from gcn_jax.data.datasets import load_source
from gcn_jax.evaluation.evaluate import evaluation_options, results_name
from gcn_jax.training.checkpoints import load_variables
from tests.tiny_run import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli_overrides(config):
    return ["--config", "configs/synthetic.py", "--config.data.name=synthetic_shapes/tiny",
            f"--config.data.data_dir={config.data.data_dir}", "--config.data.eval_pad_size=48,64",
            "--config.crop_size=48,48", "--config.model.kernel_size=3", "--config.eval_batch_size=4"]


@pytest.mark.slow
def test_eval_and_predict_command_lines(run_40, tmp_path):
    config, workdir, summary = run_40
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "eval.py", *_cli_overrides(config), "--workdir", workdir,
                             "--checkpoint=20"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 20" in result.stdout and "mIoU" in result.stdout and "boundary acc" in result.stdout
    with open(os.path.join(workdir, "eval_20.json")) as f:
        report = json.load(f)
    logged = [r for r in read_jsonl(workdir) if r.get("step") == 20 and "eval/miou" in r][0]
    assert report["miou"] == pytest.approx(logged["eval/miou"], abs=1e-3)  # 1 process here, 4 devices there
    assert set(report["per_class_iou"]) == {"background", "disc", "square", "triangle", "ring", "cross"}
    confusion = np.array(report["confusion_matrix"]["counts"])  # rows: label, columns: prediction
    assert confusion.sum() == report["num_pixels"]
    tp, union = np.diag(confusion), confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    assert [None if u == 0 else pytest.approx(t / u) for t, u in zip(tp, union)] == list(
        report["per_class_iou"].values())

    images = tmp_path / "images"
    images.mkdir()
    source = load_source("synthetic_shapes/tiny", "validation", config.data.data_dir)
    originals = [np.asarray(source[i]["image"]) for i in range(2)]
    from PIL import Image
    for i, image in enumerate(originals):
        Image.fromarray(image).save(images / f"val{i}.png")
    Image.fromarray(originals[0][:37, :41]).save(images / "odd_size.jpg")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"  # no --config: the one the run saved
    result = subprocess.run([sys.executable, "predict.py", "--workdir", workdir, f"--output={out}", str(images)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 images, checkpoint step 40" in result.stdout
    assert sorted(os.listdir(out)) == sorted(f"{n}_{kind}.png" for n in ("val0", "val1", "odd_size")
                                             for kind in ("mask", "overlay"))
    # The mask PNG holds class indices: the same as the model's argmax computed here.
    model, variables, _ = load_variables(config, workdir)
    from gcn_jax.images import normalize
    for i, image in enumerate(originals):
        mask = Image.open(out / f"val{i}_mask.png")
        assert mask.mode == "P"
        expected = np.argmax(np.asarray(jax.jit(model.apply)(variables, normalize(image)[None]))[0], axis=-1)
        assert np.mean(np.asarray(mask) == expected) > 0.999  # a near-tie may flip between two compilations
    assert Image.open(out / "odd_size_overlay.png").size == (41, 37)
    # A path that does not exist is named in the error.
    result = subprocess.run([sys.executable, "predict.py", *_cli_overrides(config), "--workdir", workdir,
                             str(tmp_path / "missing.jpg")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "missing.jpg: no such file or folder" in result.stderr


def test_the_config_a_run_saved_is_the_config_it_was_trained_with(run_40, tmp_path):
    config, workdir, _ = run_40
    saved = run.get_config(workdir)
    assert json.loads(saved.to_json_best_effort()) == json.loads(config.to_json_best_effort())
    assert saved.crop_size == (48, 48) and saved.data.eval_pad_size == (48, 64)  # tuples again, not lists
    saved.optimizer.grad_clip_norm = None  # still an optional field
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "eval.py", "--workdir", str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (f"error: no --config given, and {tmp_path / 'config.json'} (the config a training run saves) does not "
            "exist") in result.stderr


@pytest.mark.slow
def test_evaluations_with_other_options_write_their_own_file(run_40):
    config, workdir, _ = run_40
    env = {**os.environ, "PYTHONPATH": ROOT}
    written = {}
    for options in ([], ["--config.eval.flip=True", "--config.eval.scales=0.75,1.0"]):
        result = subprocess.run([sys.executable, "eval.py", *_cli_overrides(config), "--workdir", workdir,
                                 "--checkpoint=40", *options], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        wrote = [line.split("wrote ", 1)[1] for line in result.stdout.splitlines() if line.startswith("wrote ")]
        path = wrote[0]  # the JSON, then its pictures
        assert wrote[1:] == [path[:-len(".json")] + "_confusion.png", path[:-len(".json")] + "_examples.png"]
        with open(path) as f:
            written[path] = json.load(f)
    default, other = written
    assert default == os.path.join(workdir, "eval_40.json")  # the single-scale name users know
    assert os.path.dirname(other) == workdir and os.path.basename(other).startswith("eval_40_")
    assert written[default]["options"]["scales"] == [1.0] and written[default]["options"]["flip"] is False
    assert written[other]["options"]["scales"] == [0.75, 1.0] and written[other]["options"]["flip"] is True
    assert sorted(p for p in os.listdir(workdir) if p.startswith("eval_40") and p.endswith(".json")) == sorted(
        map(os.path.basename, written))


def test_the_results_name_depends_on_the_evaluation_options_alone():
    def name(**eval_overrides):
        config = synthetic.get_config()
        for key, value in eval_overrides.items():
            config.eval[key] = value
        return results_name(7, evaluation_options(config))

    assert name() == name(scales=(1,)) == "eval_7.json"
    assert name(flip=True, scales=(0.5, 1)) == name(scales=(0.5, 1.0), flip=True) != name(scales=(0.5, 1.0))
    assert name(flip=True, scales=(0.5, 1)).startswith("eval_7_scales+flip_")
    # A window's default stride is half the window: the same options, the same name.
    assert name(window_size=(48, 48)) == name(window_size=(48, 48), window_stride=(24, 24)) != name(
        window_size=(48, 48), window_stride=(16, 16))
    # Stable across runs and versions, as the README quotes them.
    assert results_name(3000, evaluation_options(cityscapes.get_config())) == "eval_3000_window+stride_6e8ea464.json"
    assert name(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True) == "eval_7_scales+flip_63b6c651.json"
