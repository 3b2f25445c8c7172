"""The project's default XLA flags: added unless the user set them, and computing what XLA computes without them."""

import functools
import os
import subprocess
import sys
import warnings
from importlib import metadata

import numpy as np
import pytest

from gcn_jax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN = "--xla_cpu_experimental_ynn_fusion_type="
REGION = "--xla_cpu_copy_insertion_use_region_analysis="
DEFAULTS = f"{YNN}dot,reduce {REGION}true"
# Each default is set only with a jaxlib at least as new as it was measured with (0.12 for both); the tests that
# expect them all skip on an older one (the jax 0.11 of some GPU images), where they are not set, by design.
NEEDS_EVERY_DEFAULT = pytest.mark.skipif(xla_flags.with_defaults("", metadata.version("jaxlib")) != DEFAULTS,
                                         reason="this jaxlib does not get every default flag")


def test_defaults_are_added_after_the_users_own_flags():
    assert xla_flags.with_defaults("", "0.12.0.1") == DEFAULTS
    assert xla_flags.with_defaults("--xla_force_host_platform_device_count=2 ", "0.13.1") == (
        f"--xla_force_host_platform_device_count=2 {DEFAULTS}")


def test_a_flag_the_user_set_is_left_as_set_even_empty():
    assert xla_flags.with_defaults(f"{YNN}dot", "0.12.0") == f"{YNN}dot {REGION}true"
    assert xla_flags.with_defaults(f"{REGION}false {YNN}", "0.12.0") == f"{REGION}false {YNN}"


def test_a_jaxlib_older_than_the_one_measured_gets_no_flag_it_may_not_know():
    assert xla_flags.with_defaults("", "0.8.2") == ""
    assert xla_flags.with_defaults("--xla_dump_to=/tmp/x", "0.11.9") == "--xla_dump_to=/tmp/x"


@NEEDS_EVERY_DEFAULT
def test_the_environment_variable_turns_the_defaults_off():
    environ = {xla_flags.OPT_OUT: "0", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    xla_flags.set_defaults(environ)
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    environ = {}
    xla_flags.set_defaults(environ)
    assert environ["XLA_FLAGS"] == DEFAULTS


def save_logits_and_grads(path) -> None:
    """Eval-mode logits and parameter gradients of a small GCN network (BatchNorm from running statistics, so
    the comparison is well conditioned), the parameters after two SGD-momentum steps that update their donated
    inputs in place (what the copy-insertion flag changes), and the XLA_FLAGS in force, saved to ``path``."""
    import jax
    import jax.numpy as jnp

    from gcn_jax.models.segmentation import GCNSegmentation

    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 45, 61, 3)), jnp.float32)
    model = GCNSegmentation(num_classes=5, backbone="resnet18", kernel_size=7)
    variables = jax.jit(model.init)(jax.random.key(0), images)

    def loss(params):
        logits = model.apply({**variables, "params": params}, images)
        return jnp.mean(logits ** 2), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def sgd(params, momentum):
        grads = jax.grad(lambda p: loss(p)[0])(params)
        momentum = jax.tree.map(lambda m, g: 0.9 * m + g, momentum, grads)
        return jax.tree.map(lambda p, m: p - 0.1 * m, params, momentum), momentum

    params, momentum = jax.tree.map(jnp.copy, variables["params"]), jax.tree.map(jnp.zeros_like, grads)
    for _ in range(2):
        params, momentum = sgd(params, momentum)
    np.savez(path, os.environ.get("XLA_FLAGS", ""), logits, *jax.tree.leaves(grads), *jax.tree.leaves(params))


def _load(path) -> tuple[str, list[np.ndarray]]:
    with np.load(path) as f:
        return str(f["arr_0"]), [f[f"arr_{i}"] for i in range(1, len(f.files))]


@NEEDS_EVERY_DEFAULT
def test_the_network_computes_the_same_with_and_without_the_defaults(tmp_path):
    save_logits_and_grads(tmp_path / "with.npz")  # this process imported gcn_jax before JAX started
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    subprocess.run([sys.executable, "-c", "import sys; from tests.test_xla_flags import save_logits_and_grads; "
                    "save_logits_and_grads(sys.argv[1])", str(tmp_path / "without.npz")],
                   env={**env, xla_flags.OPT_OUT: "0"}, cwd=ROOT, capture_output=True, timeout=300, check=True)
    (flags_a, with_flags), (flags_b, without) = _load(tmp_path / "with.npz"), _load(tmp_path / "without.npz")
    assert YNN in flags_a and REGION in flags_a and YNN not in flags_b and REGION not in flags_b
    assert len(with_flags) == len(without) > 100
    for a, b in zip(with_flags, without, strict=True):  # the logits, every gradient, every updated parameter
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max() + 1e-12)


ONEDNN = xla_flags.ONEDNN


def test_forward_programs_get_onednn_on_cpu_unless_the_user_or_the_opt_out_says_otherwise():
    assert xla_flags.forward_options("cpu", {}, "0.12.0.1") == {ONEDNN: True}
    assert xla_flags.forward_options("gpu", {}, "0.12.0.1") == {}
    assert xla_flags.forward_options("tpu", {}, "0.13.0") == {}
    assert xla_flags.forward_options("cpu", {}, "0.11.9") == {}
    assert xla_flags.forward_options("cpu", {"XLA_FLAGS": f"--{ONEDNN}=false"}, "0.12.0") == {}
    assert xla_flags.forward_options("cpu", {xla_flags.OPT_OUT: "0"}, "0.12.0") == {}


def _needs_onednn():
    if xla_flags.forward_options() != {ONEDNN: True}:  # GCN_JAX_XLA_DEFAULTS=0, the user's XLA_FLAGS, not CPU
        pytest.skip("the forward-only programs get no oneDNN option in this process")


def _onednn_lines(compiled, module: str = "") -> int:
    return sum(1 for line in compiled.as_text().splitlines() if "__onednn$convolution" in line and module in line)


def test_forward_programs_compute_with_onednn_what_xla_computes_without():
    import jax

    from gcn_jax.models.segmentation import GCNSegmentation

    _needs_onednn()
    images = np.random.default_rng(0).standard_normal((4, 45, 61, 3)).astype(np.float32)
    model = GCNSegmentation(num_classes=5, backbone="resnet18", kernel_size=7)
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
    variables = jax.tree.map(lambda v: v + 0.05 * np.random.default_rng(1).standard_normal(v.shape), variables)

    def apply(options):
        return jax.jit(lambda v, x: model.apply(v, x), compiler_options=options).lower(variables, images).compile()

    plain, forward = apply({}), apply(xla_flags.forward_options())
    assert _onednn_lines(plain) == 0
    assert _onednn_lines(forward, "/backbone/") >= 15  # of its 20 (XLA rewrites some of the smallest)
    # the 5 deconvolutions' phases too, which a negative padding (the unused edge row) would keep on Eigen
    assert _onednn_lines(forward, "/up_s") >= 15
    assert not [line for line in forward.as_text().splitlines() if " convolution(" in line and "/up_s" in line]
    a, b = np.asarray(forward(variables, images)), np.asarray(plain(variables, images))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_evaluation_steps_get_onednn_and_the_train_step_does_not(data_dir):
    import jax

    from gcn_jax import parallel
    from gcn_jax.evaluation import evaluate
    from gcn_jax.models import build_model
    from gcn_jax.training import optimizer, state as state_lib
    from tests.tiny_run import tiny_config

    _needs_onednn()
    config, mesh = tiny_config(data_dir), parallel.make_mesh()
    model, tx = build_model(config.model), optimizer.make_optimizer(config.optimizer, config.num_train_steps)
    state = state_lib.create_train_state(config, mesh, tx)
    train_step = state_lib.make_train_step(model, tx, optimizer.learning_rate_schedule(
        config.optimizer, config.num_train_steps), mesh, config.optimizer.grad_accum_steps)
    rng = np.random.default_rng(0)
    batch = parallel.global_batch(mesh, {"image": rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8),
                                         "label": rng.integers(0, 6, (4, 48, 48), dtype=np.uint8),
                                         "mask": np.ones((4, 48, 48), bool), "index": np.arange(4)})
    assert _onednn_lines(train_step.lower(state, {k: batch[k] for k in ("image", "label", "mask")}).compile()) == 0
    variables = state.variables()
    steps = {"eval": evaluate.make_eval_step(model, mesh, 6, config.eval),
             "probability": evaluate.make_probability_step(model, mesh, config.eval),
             "predict": evaluate.make_predict_step(model, mesh, config.eval)}
    # XLA cannot write these programs to the persistent compilation cache (this test session has one); JAX's
    # warning about it is silenced, and only that one
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        with warnings.catch_warnings(record=True) as caught:  # shows each warning again, as filters allow
            for name, step in steps.items():
                inputs = batch if name == "eval" else {k: batch[k] for k in ("image", "mask", "index")}
                assert _onednn_lines(step.lower(variables, inputs).compile(), "/backbone/") >= 10, name
            # the message itself, whether or not a compile above got as far as a cache write (a program XLA
            # compiled earlier in this process is not written again), and another cache-write failure
            warnings.warn("Error writing persistent compilation cache entry for 'jit_step': MemoryError: "
                          "std::bad_alloc", stacklevel=1)
            warnings.warn("Error writing persistent compilation cache entry for 'x': OSError: disk full", stacklevel=1)
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    assert [str(w.message) for w in caught] == [
        "Error writing persistent compilation cache entry for 'x': OSError: disk full"]
