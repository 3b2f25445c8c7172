"""export.py: a run's inference as a jax.export artifact that jax alone loads and runs, for any batch and image
size, with metadata that names the classes, the conventions and the checkpoint; options it cannot honour are
refused by config key."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcn_jax.data.datasets import dataset_spec
from gcn_jax.errors import InputError, NotFoundError
from gcn_jax.evaluation import export
from gcn_jax.images import IMAGENET_MEAN, IMAGENET_STD, normalize
from gcn_jax.labels import PASCAL_PALETTE
from gcn_jax.models import build_model
from gcn_jax.training.checkpoints import load_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (batch, height, width): two batch sizes at the training crop size, and a size that is not a multiple of 32.
SHAPES = ((1, 48, 64), (3, 48, 64), (2, 37, 53))

# What a user of the artifact runs: jax and numpy, nothing of this project (checked through sys.modules).
LOAD_AND_CALL = """
import sys
import jax
import numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
inputs = np.load(sys.argv[2])
outputs = {}
for name in inputs.files:
    logits, classes = exported.call(inputs[name])
    outputs[name + "_logits"], outputs[name + "_classes"] = np.asarray(logits), np.asarray(classes)
np.savez(sys.argv[3], **outputs)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("gcn_jax", "flax", "optax", "orbax")))
"""


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def exported_run(run_40, tmp_path_factory):
    """export.py on the 40-step run, reading the config the run saved: (config, workdir, export folder)."""
    config, workdir, _ = run_40
    folder = str(tmp_path_factory.mktemp("export") / "out")
    result = _run("export.py", "--workdir", workdir, "--output", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {os.path.join(folder, export.ARTIFACT)}" in result.stdout
    return config, workdir, folder


@pytest.mark.slow
def test_the_artifact_alone_reproduces_the_model_for_any_batch_and_image_size(exported_run, tmp_path):
    config, workdir, folder = exported_run
    rng = np.random.default_rng(0)
    images = {f"b{b}_{h}x{w}": rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8) for b, h, w in SHAPES}
    np.savez(tmp_path / "images.npz", **images)
    result = _run("-c", LOAD_AND_CALL, os.path.join(folder, export.ARTIFACT), str(tmp_path / "images.npz"),
                  str(tmp_path / "outputs.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"  # neither gcn_jax nor flax was imported to run it
    outputs = np.load(tmp_path / "outputs.npz")

    model, variables, _ = load_variables(config, workdir, 40)
    for name, batch in images.items():
        expected = np.asarray(model.apply(variables, normalize(batch)))
        logits, classes = outputs[f"{name}_logits"], outputs[f"{name}_classes"]
        assert logits.dtype == np.float32 and logits.shape == (*batch.shape[:3], config.model.num_classes)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        assert classes.dtype == np.uint8 and classes.shape == batch.shape[:3]
        np.testing.assert_array_equal(classes, np.argmax(logits, axis=-1))
        top2 = np.sort(expected, axis=-1)[..., -2:]
        clear = top2[..., 1] - top2[..., 0] > 1e-3  # pixels whose argmax no rounding can change
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(classes[clear], np.argmax(expected, axis=-1)[clear])


@pytest.mark.slow
def test_the_metadata_names_classes_conventions_and_checkpoint(exported_run):
    config, _, folder = exported_run
    exported, meta = export.load_exported(folder)
    classes = config.model.num_classes
    assert meta["class_names"] == list(dataset_spec("synthetic_shapes/tiny").class_names)
    assert len(meta["class_names"]) == meta["num_classes"] == classes == 6
    assert meta["palette"] == PASCAL_PALETTE[:classes].tolist() and meta["palette"][1] == [128, 0, 0]
    assert meta["checkpoint_step"] == 40
    assert meta["platforms"] == ["cpu", "cuda", "tpu"] == list(exported.platforms)
    assert meta["symbolic_dims"] == ["batch", "height", "width"]
    assert meta["input"]["shape"] == ["batch", "height", "width", 3] and meta["input"]["dtype"] == "uint8"
    assert meta["input"]["channels"] == "RGB" and meta["input"]["value_range"] == [0, 255]
    np.testing.assert_allclose(meta["input"]["normalization"]["mean"], [123.675, 116.28, 103.53], rtol=1e-6)
    np.testing.assert_allclose(meta["input"]["normalization"]["std"], IMAGENET_STD, rtol=1e-6)
    assert [(o["name"], o["shape"], o["dtype"]) for o in meta["outputs"]] == [
        ("logits", ["batch", "height", "width", 6], "float32"), ("classes", ["batch", "height", "width"], "uint8")]
    assert meta["config"]["num_train_steps"] == 40 and meta["config"]["model"]["kernel_size"] == 3
    # The loaded function's own signature says the same.
    assert str(exported.in_avals[0]) == "uint8[batch,height,width,3]"
    assert [str(a) for a in exported.out_avals] == ["float32[batch,height,width,6]", "uint8[batch,height,width]"]
    np.testing.assert_allclose(IMAGENET_MEAN, meta["input"]["normalization"]["mean"])


def test_every_backbone_and_head_exports_for_symbolic_batch_height_and_width():
    from configs import default

    for overrides in ({"backbone": "resnet50_gcn", "head": "stack", "kernel_size": 5, "stack_width": 8},
                      {"backbone": "resnet18", "head": "base", "use_br": False, "deconv_kernel_size": 4,
                       "dtype": "bfloat16", "num_classes": 300}):
        config = default.get_config().model
        config.update(overrides)
        model = build_model(config)
        shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
        exported = export.export_inference(model, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
        classes = "uint8" if config.num_classes <= 256 else "int32"
        assert [str(a) for a in exported.out_avals] == [f"float32[batch,height,width,{config.num_classes}]",
                                                        f"{classes}[batch,height,width]"]


def test_a_folder_without_an_export_is_named(tmp_path):
    with pytest.raises(NotFoundError, match=f"{tmp_path / export.ARTIFACT}: no such file; export.py writes"):
        export.load_exported(str(tmp_path))


def test_inference_options_that_need_a_static_size_are_refused_by_config_key():
    from configs import default

    config = default.get_config()
    export.check_options(config.eval)  # the plain forward pass
    for key, value, words in (("scales", (0.5, 1.0), "config.eval.scales = (0.5, 1.0): multi-scale"),
                              ("flip", True, "config.eval.flip = True: flip averages the probabilities"),
                              ("window_size", (32, 32), "config.eval.window_size = (32, 32): sliding-window")):
        config = default.get_config()
        config.eval[key] = value
        with pytest.raises(InputError, match="export.py exports the plain forward pass") as error:
            export.check_options(config.eval)
        assert str(error.value).startswith(words)


@pytest.mark.slow
def test_a_missing_checkpoint_or_workdir_is_one_line(run_40, tmp_path):
    _, workdir, _ = run_40
    result = _run("export.py", "--workdir", workdir, "--checkpoint=7", "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == (f"error: no checkpoint for step 7 in {workdir}/checkpoints; "
                                               "there are [20, 40]"), result.stderr
    result = _run("export.py", "--workdir", str(tmp_path / "missing"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'missing' / 'config.json'}" in result.stderr
    result = _run("export.py", "--workdir", workdir, "--config.eval.flip=True", "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: config.eval.flip = True: flip averages"), result.stderr
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_a_segmenter_from_the_export_predicts_as_one_from_the_run(exported_run):
    from gcn_jax import Segmenter

    config, workdir, folder = exported_run
    images = np.random.default_rng(3).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    from_run, from_export = Segmenter.from_workdir(workdir, 40), Segmenter.from_export(folder)
    assert from_export.class_names == from_run.class_names and from_export.step == 40
    run_classes, run_probabilities = from_run(images, probabilities=True)
    classes, probabilities = from_export(images, probabilities=True)
    np.testing.assert_allclose(probabilities, run_probabilities, atol=1e-5)
    assert classes.dtype == np.uint8 and np.mean(classes == run_classes) > 0.999  # near-ties may differ
    np.testing.assert_array_equal(from_export(images[1]), classes[1])  # one image, not a batch
