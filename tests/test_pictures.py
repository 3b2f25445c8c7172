"""The pictures of an evaluation: the confusion heat map eval.py writes shows the counts of its JSON, the examples
are chosen reproducibly and the worst are the worst, and training logs per-class IoU and the examples to
TensorBoard."""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import synthetic
from gcn_jax import parallel
from gcn_jax.data.datasets import load_source
from gcn_jax.evaluation import pictures
from gcn_jax.evaluation.evaluate import Evaluator
from gcn_jax.images import normalize
from gcn_jax.labels import IGNORE_LABEL
from gcn_jax.training.checkpoints import load_variables
from gcn_jax.training.config_checks import ConfigError, check_config
from tests.tiny_run import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")


def _cell_colours(picture: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The colour near the top-left corner of each cell (away from the percentage written in its middle)."""
    colours = np.zeros((*cells.shape[:2], 3))
    for (i, j), _ in np.ndenumerate(cells[..., 0]):
        left, top, right, bottom = cells[i, j]
        y, x = top + (bottom - top) // 5, left + (right - left) // 5
        colours[i, j] = picture[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
    return colours


def _expected_colours(normalized: np.ndarray) -> np.ndarray:
    rgba = colormaps[pictures.HEATMAP_COLORMAP](np.nan_to_num(normalized))
    colours = np.round(rgba[..., :3] * 255)
    colours[np.isnan(normalized)] = round(pictures.NO_PIXELS_GREY * 255)
    return colours


@pytest.mark.slow
def test_eval_writes_a_confusion_picture_of_its_json_counts_and_an_example_grid(run_40, tmp_path):
    config, workdir, _ = run_40
    output = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "eval.py", "--workdir", workdir, "--checkpoint=40", f"--output={output}",
                             "--config.eval.examples_random=2", "--config.eval.examples_worst=1"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {tmp_path / 'results_confusion.png'}" in result.stdout
    assert f"wrote {tmp_path / 'results_examples.png'}" in result.stdout
    report = json.loads(output.read_text())
    counts = np.array(report["confusion_matrix"]["counts"])
    # Recomputed from the counts: each row over its label's pixels, as the JSON's row_normalized has it.
    recomputed = counts / counts.sum(axis=1, keepdims=True)
    stored = np.array(report["confusion_matrix"]["row_normalized"], dtype=float)
    np.testing.assert_allclose(stored, recomputed)

    written = np.asarray(Image.open(tmp_path / "results_confusion.png").convert("RGB"))
    title = f"synthetic_shapes/tiny validation, step 40: mIoU {100 * report['miou']:.2f}%"
    drawn = pictures.confusion_heatmap(counts, list(report["per_class_iou"]), title)
    np.testing.assert_allclose(drawn.normalized, recomputed)
    assert written.shape == drawn.image.shape == (490, 610, 3)  # 2.5 + 0.4 * 6 classes = 4.9 in high, 100 dpi
    np.testing.assert_array_equal(written, drawn.image)  # the PNG is this drawing of the JSON's counts
    # Each cell of the PNG has the colour of its share of the label's pixels (a transposed matrix would not).
    colours = _cell_colours(written, drawn.cells)
    np.testing.assert_allclose(colours, _expected_colours(recomputed), atol=2)
    assert np.abs(colours - _expected_colours(recomputed.T)).max() > 20

    grid = Image.open(tmp_path / "results_examples.png")
    # A header line, then 3 examples: a caption line, 48 x 64 px enlarged x3 (to >= 192 px), a gap.
    assert grid.size == (4 * 64 * 3 + 3 * 4, 20 + 3 * (20 + 48 * 3 + 4))


def test_a_class_without_pixels_is_drawn_grey():
    counts = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 8]])
    drawn = pictures.confusion_heatmap(counts, ["a", "b", "c"], "three classes")
    assert np.isnan(drawn.normalized[1]).all()
    np.testing.assert_allclose(drawn.normalized[[0, 2]], [[5 / 6, 1 / 6, 0], [0.2, 0, 0.8]])
    np.testing.assert_allclose(_cell_colours(drawn.image, drawn.cells), _expected_colours(drawn.normalized), atol=2)


def test_example_choice_is_reproducible_and_takes_the_lowest_accuracies():
    rng = np.random.default_rng(3)
    index = np.arange(30)
    counted = rng.integers(50, 100, 30)
    correct = (counted * rng.uniform(0.2, 1.0, 30)).astype(int)
    counted[7] = correct[7] = 0  # nothing counted (all ignored): never among the worst
    correct[[11, 12]], counted[[11, 12]] = 10, 100  # a tie: the lower index first
    per_image = {"index": index, "correct": correct, "counted": counted}
    chosen = pictures.choose_examples(per_image, 5, 6)
    assert chosen["kind"] == ["random"] * 5 + ["worst"] * 6
    random, worst = chosen["index"][:5], chosen["index"][5:]
    assert list(random) == sorted(random)
    # Independently: the 6 lowest accuracies among the images not drawn at random, ties by index.
    accuracy = {i: correct[i] / counted[i] for i in index if counted[i] > 0 and i not in random}
    assert list(worst) == sorted(accuracy, key=lambda i: (accuracy[i], i))[:6]
    np.testing.assert_allclose(chosen["accuracy"][5:], [accuracy[i] for i in worst])
    # The same records whatever order the batches and processes delivered the counts in.
    order = rng.permutation(30)
    shuffled = pictures.choose_examples({k: v[order] for k, v in per_image.items()}, 5, 6)
    np.testing.assert_array_equal(shuffled["index"], chosen["index"])
    # The random records depend on the record indices alone (the same for every checkpoint), not on accuracies.
    other = pictures.choose_examples({**per_image, "correct": counted - correct}, 5, 6)
    np.testing.assert_array_equal(other["index"][:5], random)
    assert set(other["index"][5:]) != set(worst)
    assert len(pictures.choose_examples(per_image, 0, 0)["index"]) == 0
    with pytest.raises(ValueError, match="each record index"):
        pictures.choose_examples({k: np.concatenate([v, v[:1]]) for k, v in per_image.items()}, 1, 1)


def test_the_error_panel_marks_exactly_the_wrong_pixels():
    label = np.array([[0, 1, 1], [2, IGNORE_LABEL, 0]])
    prediction = np.array([[0, 2, 1], [2, 1, 1]])
    image = np.full((2, 3, 3), 100, np.uint8)
    panel = pictures.error_panel(image, label, prediction, num_classes=3)
    red = (panel == pictures.ERROR_RED).all(axis=-1)
    np.testing.assert_array_equal(red, [[False, True, False], [False, False, True]])
    assert tuple(panel[1, 1]) == pictures.IGNORED_GREY
    assert tuple(panel[0, 0]) == (200, 200, 200)  # 0.3 * 100 + 170, grey
    row = pictures.example_row(image, label, prediction, 3, scale=2, gap=4)
    assert row.shape == (4, 4 * 6 + 3 * 4, 3)
    np.testing.assert_array_equal(row[:, 3 * (6 + 4):], np.repeat(np.repeat(panel, 2, 0), 2, 1))
    assert pictures.pixel_accuracy(label, prediction, 3) == pytest.approx(3 / 5)


def test_example_counts_are_checked_with_the_config():
    config = synthetic.get_config()
    config.eval.examples_random, config.eval.examples_worst = -1, 2
    with pytest.raises(ConfigError, match=r"config.eval.examples_random: -1: expected a whole number of examples "
                                          r">= 0 \(0: none\)") as e:
        check_config(config, 1, command="eval")
    assert "examples_worst" not in str(e.value)


def _independent_accuracies(config, model, variables):
    """Every validation image predicted alone at its own size, and its pixel accuracy counted in numpy."""
    source = load_source(config.data.name, config.data.eval_split, config.data.data_dir)
    apply = jax.jit(model.apply)
    accuracies, predictions = {}, {}
    for i in range(len(source)):
        image, label = np.asarray(source[i]["image"]), np.asarray(source[i]["label"])[..., 0]
        predictions[i] = np.argmax(np.asarray(apply(variables, normalize(image)[None]))[0], axis=-1)
        counted = (label < len(CLASSES))
        accuracies[i] = np.sum((predictions[i] == label) & counted) / np.sum(counted)
    return accuracies, predictions


def test_the_worst_examples_have_the_lowest_pixel_accuracy_on_1_and_4_devices(run_40):
    config, workdir, _ = run_40
    config = config.copy_and_resolve_references()
    config.eval.examples_random, config.eval.examples_worst = 2, 3
    model, variables, _ = load_variables(config, workdir, 40)
    accuracies, predictions = _independent_accuracies(config, model, parallel.fetch(variables))
    chosen = {}
    for devices, batch in ((4, 4), (1, 2)):
        mesh = parallel.make_mesh(jax.devices()[:devices])
        config.eval_batch_size = batch
        _, on_mesh, _ = load_variables(config, workdir, 40, mesh)
        evaluator = Evaluator(config, model, mesh)
        summary, per_image = evaluator.evaluate(on_mesh)
        assert list(per_image["index"]) == list(range(10))  # every record once, padding left out
        assert per_image["counted"].sum() == summary["num_pixels"]
        np.testing.assert_allclose(per_image["correct"] / per_image["counted"], [accuracies[i] for i in range(10)],
                                   atol=2e-3)  # a near-tie may flip a pixel between two compilations
        chosen[devices] = pictures.choose_examples(per_image, 2, 3)
        examples = evaluator.examples(on_mesh, chosen[devices]["index"])
        for k, i in enumerate(chosen[devices]["index"]):
            assert examples["index"][k] == i
            assert np.mean(examples["prediction"][k] == predictions[i]) > 0.999
    np.testing.assert_array_equal(chosen[4]["index"], chosen[1]["index"])
    random, worst = chosen[4]["index"][:2], chosen[4]["index"][2:]
    others = sorted((a, i) for i, a in accuracies.items() if i not in random)
    assert list(worst) == [i for _, i in others[:3]]


def test_training_logs_class_iou_and_the_examples_to_tensorboard(run_40):
    config, workdir, summary = run_40
    events = EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    logged = {r["step"]: r for r in read_jsonl(workdir) if "eval/miou" in r}
    assert sorted(logged) == [20, 40]
    for name in CLASSES:
        scalars = events.Scalars(f"eval/iou/{name}")
        assert [s.step for s in scalars] == [20, 40]
        assert [s.value for s in scalars] == pytest.approx([logged[20][f"eval/iou/{name}"],
                                                            logged[40][f"eval/iou/{name}"]])
        assert scalars[-1].value == pytest.approx(summary["per_class_iou"][name])
    images = events.Images("eval/examples")
    assert [i.step for i in images] == [20, 40]
    # The run's evaluation at step 40 drew the grid its checkpoint draws again (4 random + 4 worst of 10).
    picture = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"))
    assert (images[-1].width, images[-1].height) == (picture.shape[1], picture.shape[0]) == (780, 20 + 8 * 168)
    model, variables, _ = load_variables(config, workdir, 40)
    evaluator = Evaluator(config, model, parallel.make_mesh())
    again = evaluator.example_picture(variables, evaluator.evaluate(variables)[1], max_width=1024)
    assert np.mean(np.abs(again.astype(int) - picture)) < 1.0
