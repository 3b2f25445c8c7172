"""`from gcn_jax import Segmenter`: the Python inference API gives what predict.py writes, for files, arrays,
batches and lists, with the run's inference options or others."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from gcn_jax import Segmenter
from gcn_jax.data.datasets import load_source
from gcn_jax.errors import InputError
from gcn_jax.images import normalize
from gcn_jax.training.checkpoints import load_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def images(run_40, tmp_path_factory):
    config = run_40[0]
    folder = tmp_path_factory.mktemp("images")
    source = load_source("synthetic_shapes/tiny", "validation", config.data.data_dir)
    originals = [np.asarray(source[i]["image"]) for i in range(3)]
    originals.append(originals[0][:37, :41])  # another size
    paths = []
    for i, image in enumerate(originals):
        paths.append(str(folder / f"image{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return originals, paths


@pytest.mark.slow
def test_segmenter_gives_the_masks_predict_py_writes(run_40, images, tmp_path):
    _, workdir, _ = run_40
    originals, paths = images
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "predict.py", "--workdir", workdir, "--checkpoint=40",
                             f"--output={out}", *paths], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    written = [np.asarray(Image.open(out / f"image{i}_mask.png")) for i in range(len(paths))]

    segmenter = Segmenter.from_workdir(workdir, checkpoint=40)
    assert segmenter.step == 40 and segmenter.class_names[:2] == ("background", "disc")
    for mask, path, image in zip(written, paths, originals):
        np.testing.assert_array_equal(segmenter(path), mask)  # a file
        np.testing.assert_array_equal(segmenter(image), mask)  # an array
    for mask, predicted in zip(written, segmenter(paths)):  # a list of files of two sizes
        assert predicted.dtype == np.uint8
        np.testing.assert_array_equal(predicted, mask)
    batch = segmenter(np.stack(originals[:3]))  # one batch: another compilation, so near-ties may differ
    assert batch.shape == (3, 48, 64) and np.mean(batch == np.stack(written[:3])) > 0.999


def test_probabilities_and_the_options_of_inference(run_40, images):
    config, workdir, _ = run_40
    image = images[0][0]
    model, variables, _ = load_variables(config, workdir, 40)
    logits = np.asarray(jax.jit(model.apply)(variables, normalize(np.stack([image, image[:, ::-1]]))))

    classes, probabilities = Segmenter.from_workdir(workdir, checkpoint=40)(image, probabilities=True)
    assert probabilities.shape == (48, 64, 6) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, jax.nn.softmax(logits[0]), atol=1e-5)
    np.testing.assert_array_equal(classes, np.argmax(probabilities, axis=-1))

    flipped = Segmenter.from_workdir(workdir, checkpoint=40, flip=True)
    assert flipped.config.eval.flip and not config.eval.flip
    _, averaged = flipped(image, probabilities=True)  # the image and its mirror, mirrored back
    expected = (jax.nn.softmax(logits[0]) + jax.nn.softmax(logits[1])[:, ::-1]) / 2
    np.testing.assert_allclose(averaged, expected, atol=1e-5)


def test_bad_input_is_named(run_40, tmp_path):
    _, workdir, _ = run_40
    with pytest.raises(InputError, match=r"does not exist: pass config="):
        Segmenter.from_workdir(str(tmp_path))
    segmenter = Segmenter.from_workdir(workdir, checkpoint=40)
    with pytest.raises(InputError, match=r"expected an RGB image .* got an array of shape \(48, 64\) and dtype"):
        segmenter(np.zeros((48, 64), np.uint8))
    with pytest.raises(InputError, match="no checkpoint for step 7"):
        Segmenter.from_workdir(workdir, checkpoint=7)
