"""Dense-CRF post-processing (config.eval.crf, Table 7's "+CRF"): it moves a prediction that overlaps an image edge
onto the edge, evaluation and prediction use it when it is on and are exactly what they were when it is off, its
results get their own file name, and a missing pydensecrf2 is reported up front with the install command."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default, synthetic
from gcn_jax import Segmenter, parallel, xla_flags
from gcn_jax.data.datasets import load_source
from gcn_jax.errors import InputError
from gcn_jax.evaluation import crf, evaluate, export, metrics, prediction
from gcn_jax.evaluation.evaluate import Evaluator, evaluation_options, results_name
from gcn_jax.images import model_input, normalize
from gcn_jax.training.checkpoints import load_variables
from gcn_jax.training.config_checks import ConfigError, check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = default.get_config().eval.crf_params  # DeepLab-v2's published values, as shipped
EDGE, SHIFT, HEIGHT, WIDTH = 32, 5, 40, 64


def _two_regions(colours=((40, 90, 160), (200, 170, 60))):
    """An image of two flat colours meeting at column EDGE, its label (0 left, 1 right), and coarse network
    probabilities whose boundary is SHIFT columns right of the edge (0.8 for the class it favours)."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, :EDGE], image[:, EDGE:] = colours
    columns = np.arange(WIDTH)
    label = np.broadcast_to(columns >= EDGE, (HEIGHT, WIDTH)).astype(np.int32)
    right = np.broadcast_to(np.where(columns >= EDGE + SHIFT, 0.8, 0.2), (HEIGHT, WIDTH)).astype(np.float32)
    return image, label, np.stack([1 - right, right], axis=-1)


def _first_right_column(classes):
    return sorted({int(np.flatnonzero(row)[0]) for row in classes})


def test_crf_moves_a_boundary_that_overlaps_an_edge_onto_the_edge():
    image, label, coarse = _two_regions()
    assert _first_right_column(coarse.argmax(-1)) == [EDGE + SHIFT]
    assert np.mean(coarse.argmax(-1) == label) == 1 - SHIFT / WIDTH  # 0.921875: 5 of 64 columns wrong

    marginals = crf.refine(image, coarse, PARAMS)
    assert marginals.shape == (HEIGHT, WIDTH, 2) and marginals.dtype == np.float32
    np.testing.assert_allclose(marginals.sum(-1), 1.0, atol=1e-5)
    assert _first_right_column(marginals.argmax(-1)) == [EDGE]
    assert np.mean(marginals.argmax(-1) == label) == 1.0
    # The band between the edge and the coarse boundary changed sides with confidence.
    assert marginals[:, EDGE:EDGE + SHIFT, 1].min() > 0.9

    # Without a colour edge there is nothing to move to: the boundary stays where the network put it.
    flat, _, _ = _two_regions(colours=((120, 120, 120), (120, 120, 120)))
    assert _first_right_column(crf.refine(flat, coarse, PARAMS).argmax(-1)) == [EDGE + SHIFT]


def test_refine_labels_runs_the_crf_on_each_image_s_unpadded_box():
    image, label, coarse = _two_regions()
    pad = (HEIGHT + 8, WIDTH + 16)
    images = np.full((2, *pad, 3), 255, np.uint8)  # padding of another colour the CRF must not see
    probabilities = np.zeros((2, *pad, 2), np.float32)
    probabilities[..., 1] = 1.0
    valid = np.zeros((2, *pad), bool)
    images[0, :HEIGHT, :WIDTH], probabilities[0, :HEIGHT, :WIDTH], valid[0, :HEIGHT, :WIDTH] = image, coarse, True
    labels = crf.refine_labels(images, probabilities, valid, PARAMS)  # example 1 is a padding example
    assert labels.dtype == np.int32 and labels.shape == (2, *pad)
    np.testing.assert_array_equal(labels[0, :HEIGHT, :WIDTH], label)
    np.testing.assert_array_equal(labels[0, HEIGHT:], 1)  # padding: the plain argmax
    np.testing.assert_array_equal(labels[1], 1)


def _crf_config(config, **params):
    config = config.copy_and_resolve_references()
    config.eval.crf = True
    for key, value in params.items():
        config.eval.crf_params[key] = value
    return config


def test_a_crf_evaluation_has_its_own_results_name():
    config = synthetic.get_config()
    assert evaluation_options(config)["crf"] is None
    assert results_name(7, evaluation_options(config)) == "eval_7.json"  # off: the plain name, as before
    on = evaluation_options(_crf_config(config))
    assert on["crf"] == {"iterations": 10, "pos_weight": 3.0, "pos_xy_std": 1.0, "bi_weight": 4.0,
                         "bi_xy_std": 67.0, "bi_rgb_std": 3.0}
    name = results_name(7, on)
    assert name.startswith("eval_7_crf_") and name.endswith(".json")
    assert name == results_name(7, evaluation_options(_crf_config(config, bi_xy_std=67)))  # 67 == 67.0
    assert name != results_name(7, evaluation_options(_crf_config(config, bi_xy_std=80.0)))
    config.eval.flip = True
    assert results_name(7, evaluation_options(_crf_config(config))).startswith("eval_7_flip+crf_")


def test_bad_crf_parameters_are_config_errors_naming_the_key():
    config = _crf_config(synthetic.get_config(), bi_xy_std=-1.0, iterations=0)
    with pytest.raises(ConfigError, match=r"config.eval.crf_params: iterations = 0: expected a whole number of "
                       r"mean-field steps >= 1"):
        check_config(config, 4, 1, "eval")
    config = _crf_config(synthetic.get_config(), pos_weight=-2.0)
    with pytest.raises(ConfigError, match=r"config.eval.crf_params: pos_weight = -2.0: expected a kernel weight >= 0"):
        check_config(config, 4, 1, "predict")
    check_config(_crf_config(synthetic.get_config()), 4, 1, "eval")
    config.eval.crf = False  # off: its parameters are not used, so not checked
    check_config(config, 4, 1, "eval")


def test_a_missing_pydensecrf2_is_reported_up_front_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r"pydensecrf2.*install it with: pip install -r requirements-crf\.txt"):
        crf.check_installed()
    with pytest.raises(ConfigError, match=r"config.eval.crf: the dense CRF needs the optional package pydensecrf2"):
        check_config(_crf_config(synthetic.get_config()), 4, 1, "eval")
    check_config(synthetic.get_config(), 4, 1, "eval")  # off: never imported
    with pytest.raises(InputError, match=r"pip install -r requirements-crf\.txt"):
        prediction.make_segment_fn(None, None, _crf_config(synthetic.get_config()).eval)


@pytest.mark.slow
def test_eval_py_stops_before_loading_a_checkpoint_when_pydensecrf2_is_missing(tmp_path):
    (tmp_path / "pydensecrf").mkdir()
    (tmp_path / "pydensecrf" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    # The workdir has no checkpoint: an error about the package, not about checkpoints, shows the order.
    result = subprocess.run([sys.executable, "eval.py", "--config", "configs/synthetic.py", "--workdir",
                             str(tmp_path), "--config.eval.crf=True"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("config.eval.crf: the dense CRF needs the optional package pydensecrf2, which does not import here "
            "(hidden by the test); install it with: pip install -r requirements-crf.txt") in result.stderr


def test_export_refuses_the_crf_it_cannot_hold():
    with pytest.raises(InputError, match=r"config.eval.crf = True: the dense CRF runs on the host after the network "
                       r".*override with --config.eval.crf=False"):
        export.check_options(_crf_config(synthetic.get_config()).eval)
    export.check_options(synthetic.get_config().eval)


def _old_eval_step(model, mesh, num_classes, eval_config):
    """make_eval_step as it was before the CRF: the reference for 'off is bit-identical'."""
    options = evaluate.inference_options(eval_config)

    def step(variables, batch):
        images = model_input(batch["image"], batch["mask"])  # uint8 from the loader, normalised on the device
        predictions = evaluate._predict(model, variables, images, options)
        counts = metrics.batch_counts(batch["label"], predictions, num_classes, valid=batch["mask"],
                                      boundary_width=eval_config.boundary_width)
        per_image = metrics.image_counts(batch["label"], predictions, num_classes, valid=batch["mask"])
        return counts, {"index": batch["index"], **per_image}

    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, parallel.batch_sharded(mesh)), out_shardings=replicated,
                   compiler_options=xla_flags.forward_options())


def test_evaluation_with_the_crf_off_is_bit_identical_to_the_plain_step(run_40):
    config, workdir, _ = run_40
    mesh = parallel.make_mesh()
    model, variables, _ = load_variables(config, workdir, 40, mesh)
    evaluator = Evaluator(config, model, mesh)
    assert not config.eval.crf and not hasattr(evaluator, "probabilities")
    summary, per_image = evaluator.evaluate(variables)
    old = _old_eval_step(model, mesh, 6, config.eval)
    totals, correct = None, {}
    for _, batch in zip(range(evaluator.num_batches), evaluator.loader):
        arrays = parallel.global_batch(mesh, {k: batch[k] for k in ("image", "label", "mask", "index")})
        counts, images = parallel.fetch(old(variables, arrays))
        totals = metrics.add_counts(totals, counts)
        correct.update((int(i), int(c)) for i, c in zip(images["index"], images["correct"]) if i >= 0)
    assert summary == metrics.summarize(totals, evaluator.class_names)
    assert list(per_image["correct"]) == [correct[i] for i in range(10)]


@pytest.mark.slow
def test_a_crf_evaluation_counts_the_refined_labels(run_40):
    config, workdir, _ = run_40
    config = _crf_config(config)
    config.eval.examples_random, config.eval.examples_worst = 1, 1
    mesh = parallel.make_mesh()
    model, variables, _ = load_variables(config, workdir, 40, mesh)
    evaluator = Evaluator(config, model, mesh)
    summary, per_image = evaluator.evaluate(variables)
    # Independently: each record alone, softmax of the logits, the CRF on the host, numpy counts.
    source = load_source(config.data.name, config.data.eval_split, config.data.data_dir)
    apply = jax.jit(model.apply)
    host = parallel.fetch(variables)
    correct, counted, refined = [], [], {}
    for i in range(len(source)):
        image, label = np.asarray(source[i]["image"]), np.asarray(source[i]["label"])[..., 0].astype(np.int32)
        probabilities = np.asarray(jax.nn.softmax(apply(host, normalize(image)[None])[0], axis=-1))
        refined[i] = crf.refine(image, probabilities, config.eval.crf_params).argmax(-1)
        valid = label < 6
        correct.append(int(np.sum((refined[i] == label) & valid)))
        counted.append(int(np.sum(valid)))
    assert list(per_image["counted"]) == counted and summary["num_pixels"] == sum(counted)
    np.testing.assert_allclose(per_image["correct"], correct, atol=0.002 * max(counted))  # near-ties may flip
    examples = evaluator.examples(variables, [3, 0])
    for k, i in enumerate((3, 0)):
        h, w = refined[i].shape
        assert np.mean(examples["prediction"][k][:h, :w] == refined[i]) > 0.998


@pytest.mark.slow
def test_eval_py_with_crf_records_it_and_segmenter_predicts_with_it(run_40, tmp_path):
    config, workdir, _ = run_40
    output = tmp_path / "crf.json"
    result = subprocess.run([sys.executable, "eval.py", "--workdir", workdir, "--checkpoint=40", f"--output={output}",
                             "--config.eval.crf=True", "--config.eval.crf_params.bi_xy_std=20",
                             "--config.eval.examples_random=0", "--config.eval.examples_worst=0"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CRF on" in result.stdout
    written = json.loads(output.read_text())
    assert written["options"]["crf"] == {"iterations": 10, "pos_weight": 3.0, "pos_xy_std": 1.0, "bi_weight": 4.0,
                                         "bi_xy_std": 20.0, "bi_rgb_std": 3.0}
    assert 0 < written["miou"] <= 1 and written["num_pixels"] == 10 * 48 * 64

    source = load_source(config.data.name, config.data.eval_split, config.data.data_dir)
    images = np.stack([np.asarray(source[i]["image"]) for i in range(2)])
    plain = Segmenter.from_workdir(workdir, 40)
    with_crf = Segmenter.from_workdir(workdir, 40, crf=True)
    assert with_crf.config.eval.crf and not plain.config.eval.crf
    masks, marginals = with_crf(images, probabilities=True)
    _, network = plain(images, probabilities=True)
    for k in range(2):
        expected = crf.refine(images[k], network[k], PARAMS)
        np.testing.assert_allclose(marginals[k], expected, atol=1e-5)
        np.testing.assert_array_equal(masks[k], expected.argmax(-1))
    np.testing.assert_array_equal(with_crf(images[0]), masks[0])

