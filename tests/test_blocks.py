"""The GCN block, BR, the ablation heads and the deconvolution: parameter counts from the paper's tables and
outputs against an independent numpy computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcn_jax.models import (
    BoundaryRefinement,
    Deconv2x,
    GlobalConvBlock,
    StackedConvHead,
    bilinear_kernel,
    make_head,
)
from gcn_jax.models.blocks import LineConv, deconv_phase
from gcn_jax.models.summary import abstract_variables, count_params
from tests import reference

RES5 = (1, 16, 16, 2048)  # res-5 of a 512x512 input


def head_params(kind, k, width=None):
    head = make_head(kind, 21, k, stack_width=width)
    return count_params(abstract_variables(head, RES5)["params"])


@pytest.mark.parametrize("k, expected", [(3, 260_694), (5, 434_490), (7, 608_286), (9, 782_082), (15, 1_303_470)])
def test_gcn_params_match_table2(k, expected):
    assert head_params("gcn", k) == expected


@pytest.mark.parametrize("k, expected", [(3, 387_072), (5, 1_075_200), (7, 2_107_392), (9, 3_483_648)])
def test_trivial_conv_params_match_table2(k, expected):
    assert head_params("conv", k) == expected


@pytest.mark.parametrize("m, expected", [(2048, 75_884_544), (1024, 28_505_088), (210, 4_307_310)])
def test_stack_params_match_table4(m, expected):
    assert head_params("stack", 7, m) == expected


def test_stack_default_width_is_input_channels():
    # Table 3's k=7 stack is Table 4's m=2048 row.
    assert head_params("stack", 7) == 75_884_544


def test_stack_depth_follows_receptive_field():
    # floor(k/2) 3x3 convs: k=11 -> 5 convs.
    v = abstract_variables(StackedConvHead(21, 11, width=64), (1, 8, 8, 32))
    assert sorted(v["params"]) == ["conv1", "conv2", "conv3", "conv4", "conv5"]


def test_base_head_is_1x1():
    assert head_params("base", 15) == 2048 * 21


@pytest.mark.parametrize("k", [0, 2, 4, 14, -3])
def test_even_or_nonpositive_k_is_a_clear_error(k):
    with pytest.raises(ValueError, match="odd"):
        GlobalConvBlock(21, k)
    with pytest.raises(ValueError, match="odd"):
        make_head("conv", 21, k)


def test_unknown_head_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown head 'dense'"):
        make_head("dense", 21, 7)


def test_gcn_equals_two_separable_branches():
    k, c, classes = 7, 5, 3
    x = np.random.default_rng(0).standard_normal((2, 11, 13, c)).astype(np.float32)
    block = GlobalConvBlock(classes, k)
    params = block.init(jax.random.key(0), x)["params"]
    got = np.asarray(block.apply({"params": params}, x))
    assert params["left_kx1"]["kernel"].shape == (k, 1, c, classes)
    assert params["left_1xk"]["kernel"].shape == (1, k, classes, classes)
    assert "bias" not in params["left_kx1"]
    np.testing.assert_allclose(got, reference.gcn_block(params, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(15, 1), (1, 15), (3, 1), (1, 1)])
@pytest.mark.parametrize("use_bias", [False, True])
def test_line_conv_is_flax_conv(shape, use_bias):
    # A GCN block's first convs (from the backbone's wide features) are one matrix product and a shifted sum:
    # the same parameters and initial values, outputs and gradients as nn.Conv. 6 x 5 is smaller than k = 15,
    # as res-5 is on small images: most taps fall on the zero padding.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 5, 8)), jnp.float32)
    p = (shape[0] // 2, shape[1] // 2)
    ours = LineConv(3, shape, use_bias)
    ref = nn.Conv(3, shape, padding=((p[0], p[0]), (p[1], p[1])), use_bias=use_bias)
    v = ours.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, v, ref.init(jax.random.key(1), x))
    v = jax.tree.map(lambda a: a + 0.1, v)  # a bias that is not zero
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
    if shape != (1, 1):  # the tap order matters: the flipped kernel gives another map
        flipped = jax.tree.map(lambda a: a[::-1, ::-1] if a.ndim == 4 else a, v)
        assert not np.allclose(ours.apply(flipped, x), ref.apply(v, x), atol=1e-2)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 5, 3)), jnp.float32)
    grads = [jax.grad(lambda v, x, m=m: jnp.vdot(m.apply(v, x), cot), argnums=(0, 1))(v, x) for m in (ours, ref)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)


def test_line_conv_refuses_a_square_kernel():
    with pytest.raises(ValueError, match="k x 1 or 1 x k"):
        LineConv(3, (3, 3)).init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))


def test_line_conv_lays_out_its_kernel_once_its_input_exists():
    # line_conv lays each kernel out as one (C, k*O) matrix on every call. Left free, XLA's CPU compiler schedules
    # those copies first, before the stem's convolution, and runs them beside the backbone's first convolutions,
    # which made the ResNet-50 network's forward pass 4% slower on a 2-core CPU; tied to the block's input, each
    # head's work starts after the backbone stage that feeds it (res-2's head after layer1, ..., res-5's after
    # layer4).
    from gcn_jax import xla_flags
    from gcn_jax.models.segmentation import GCNSegmentation

    if jax.default_backend() != "cpu":
        pytest.skip("a property of XLA's CPU schedule")
    model = GCNSegmentation(num_classes=5, backbone="resnet18", kernel_size=7)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = abstract_variables(model, images.shape)
    program = jax.jit(model.apply, compiler_options=xla_flags.forward_options()).lower(variables, images).compile()
    entry = program.as_text().split("\nENTRY ")[1].splitlines()  # in XLA's schedule

    def lines(pattern):
        found = [i for i, line in enumerate(entry) if pattern in line]
        assert found, f"no instruction of {pattern} in the compiled program"
        return found

    for stage in (2, 3, 4, 5):
        head = lines(f"/head_res{stage}/")
        assert [i for i in head if "/transpose" in entry[i]], "no kernel layout copy left to check"
        assert min(head) > max(lines(f"/backbone/layer{stage - 1}_")), stage


def test_gcn_bias_is_optional():
    v = abstract_variables(GlobalConvBlock(21, 3, use_bias=True), RES5)
    assert count_params(v["params"]) == 260_694 + 4 * 21


def test_boundary_refinement_is_residual():
    x = np.random.default_rng(1).standard_normal((1, 9, 10, 4)).astype(np.float32)
    br = BoundaryRefinement()
    params = br.init(jax.random.key(0), x)["params"]
    # The second conv starts at zero; give it weights so the residual branch is really exercised.
    rng = np.random.default_rng(2)
    params = {**params, "conv2": {"kernel": rng.standard_normal((3, 3, 4, 4)).astype(np.float32) * 0.3,
                                  "bias": rng.standard_normal(4).astype(np.float32)}}
    got = np.asarray(br.apply({"params": params}, x))
    np.testing.assert_allclose(got, reference.boundary_refinement(params, x), rtol=1e-4, atol=1e-4)
    assert np.abs(got - x).max() > 0.1


def test_boundary_refinement_starts_as_identity():
    # Nine chained BR blocks with a random second conv blow a fresh model's logits up (see BoundaryRefinement).
    x = np.random.default_rng(1).standard_normal((1, 9, 10, 4)).astype(np.float32)
    br = BoundaryRefinement()
    variables = br.init(jax.random.key(0), x)
    np.testing.assert_array_equal(np.asarray(br.apply(variables, x)), x)
    assert np.abs(np.asarray(variables["params"]["conv1"]["kernel"])).max() > 0  # the first conv is random


def test_bilinear_kernels():
    for size, taps in ((3, [0.5, 1.0, 0.5]), (4, [0.25, 0.75, 0.75, 0.25])):
        np.testing.assert_allclose(bilinear_kernel(size, 1)[:, :, 0, 0], np.outer(taps, taps))
    k = bilinear_kernel(3, 4)
    assert k[1, 1, 2, 2] == 1.0 and k[1, 1, 2, 3] == 0.0  # diagonal in channels


def test_deconv_at_init_interpolates_on_the_backbone_grid():
    # Coarse pixel i sits on fine pixel 2i (the ResNet's alignment): a linear ramp must come out as the
    # same ramp sampled twice as densely, exactly, with the last row/column held at the border value.
    n = 6
    ramp = np.arange(n, dtype=np.float32)
    x = (ramp[:, None] * 3 + ramp[None, :] * 0.5)[None, :, :, None] * np.ones((1, 1, 1, 2), np.float32)
    up = Deconv2x(2)
    variables = up.init(jax.random.key(0), x, (2 * n, 2 * n))
    y = np.asarray(up.apply(variables, x, (2 * n, 2 * n)))
    fine = np.arange(2 * n) / 2.0
    expected = fine[:, None] * 3 + fine[None, :] * 0.5
    np.testing.assert_allclose(y[0, :-1, :-1, 0], expected[:-1, :-1], atol=1e-5)
    # Last row: (x[n-1] + x[n-1]) / 2 = x[n-1] (edge-replicated), not half of it (zero padding).
    np.testing.assert_allclose(y[0, -1, 0::2, 1], x[0, -1, :, 1], atol=1e-5)


def test_deconv_crops_to_target_and_rejects_impossible_targets():
    x = jnp.ones((1, 5, 7, 3))
    up = Deconv2x(3)
    v = up.init(jax.random.key(0), x, (9, 13))
    assert up.apply(v, x, (9, 13)).shape == (1, 9, 13, 3)
    assert up.apply(v, x, (10, 14)).shape == (1, 10, 14, 3)
    with pytest.raises(ValueError, match="cannot map"):
        up.apply(v, x, (11, 14))


def test_even_deconv_kernel_is_shifted_by_a_quarter_pixel():
    # The documented reason for the odd default: the 4-tap kernel, as PyTorch's ConvTranspose2d(4, 2, 1) and
    # FCN use it, samples coarse position i - 1/4 at output pixel 2i.
    x = np.arange(8, dtype=np.float32)[None, :, None, None] * np.ones((1, 1, 3, 1), np.float32)
    up = Deconv2x(1, kernel_size=4)
    v = up.init(jax.random.key(0), x, (16, 6))
    y = np.asarray(up.apply(v, x, (16, 6)))[0, :, 1, 0]
    np.testing.assert_allclose(y[2:14:2], np.arange(1, 7) - 0.25, atol=1e-5)


def dilated_deconv(x, kernel, target):
    """Deconv2x as it was first written, kept as the reference of the phase computation: a convolution of the
    edge-extended input dilated with zeros (lhs_dilation=2), cropped to `target`."""
    k = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    lo = k // 2
    hi = max(0, k - 2 - lo)
    y = jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding=((lo, hi), (lo, hi)),
                                     lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, : target[0], : target[1], :]


def test_deconv_phases_pick_the_taps_of_each_output_parity():
    # k=3 (centre 1): even outputs take tap 1 from pixel i; odd outputs taps 0, 2 from i, i+1.
    assert deconv_phase(3, 0) == (1, 0) and deconv_phase(3, 1) == (0, 0)
    # k=4 (centre 2): even outputs taps 0, 2 from i-1, i; odd outputs taps 1, 3 from i, i+1.
    assert deconv_phase(4, 0) == (0, -1) and deconv_phase(4, 1) == (1, 0)
    # in general: output 2i+p gets tap t from the dilated input's position 2i + p + t - k//2, if that is even
    for k in range(2, 10):
        for p in (0, 1):
            t0, first = deconv_phase(k, p)
            got = {t: first + j for j, t in enumerate(range(t0, k, 2))}
            want = {t: (p + t - k // 2) // 2 for t in range(k) if (p + t - k // 2) % 2 == 0}
            assert got == want


def _deconv_case(k, size, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, *size, c)), jnp.float32)
    # random, so asymmetric in every axis and across channels: a wrong tap, phase or transpose shows
    kernel = jnp.asarray(rng.standard_normal((k, k, c, c)), jnp.float32)
    return x, kernel


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7])  # 7: taps reach 2 pixels on, past the edge copy
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (1, 1)])
@pytest.mark.parametrize("crop", [0, 1, "half"])  # target 2h x 2w, (2h-1) x (2w-1), h x w
def test_deconv_by_phases_equals_the_dilated_convolution(k, size, crop):
    x, kernel = _deconv_case(k, size)
    h, w = size
    target = (h, w) if crop == "half" else (2 * h - crop, 2 * w - crop)
    up = Deconv2x(3, kernel_size=k)
    assert up.init(jax.random.key(0), x, target)["params"]["kernel"].shape == (k, k, 3, 3)

    def new(x, kernel):
        return up.apply({"params": {"kernel": kernel}}, x, target)

    def old(x, kernel):
        return dilated_deconv(x, kernel, target)

    got, want = new(x, kernel), old(x, kernel)
    assert got.shape == want.shape == (2, *target, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if min(size) > 1:  # the comparison can tell taps apart: the flipped kernel makes another map
        assert not np.allclose(got, old(x, kernel[::-1, ::-1]), atol=1e-2)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(want.shape), jnp.float32)
    grads = [jax.grad(lambda x, kern, f=f: jnp.vdot(f(x, kern), cot), argnums=(0, 1))(x, kernel) for f in (new, old)]
    for name, a, b in zip(("input", "kernel"), *grads):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=f"gradient with respect to the {name}")


def test_deconv_in_bfloat16_computes_in_bfloat16_and_stays_close():
    x, kernel = _deconv_case(3, (6, 7), c=8)
    up = Deconv2x(8, dtype=jnp.bfloat16)
    def f(x, kernel):
        return up.apply({"params": {"kernel": kernel}}, x, (12, 13))

    got = f(x, kernel)
    assert got.dtype == jnp.bfloat16
    convs = [e for e in reference.equations(jax.make_jaxpr(f)(x, kernel).jaxpr)
             if e.primitive.name == "conv_general_dilated"]
    assert [str(e.outvars[0].aval.dtype) for e in convs] == ["bfloat16"] * 4  # one per phase
    want = dilated_deconv(x, kernel, (12, 13))
    rel = float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want))
    assert 0 < rel < 2e-2


def test_deconv_exports_with_symbolic_sizes():
    # The model is exported with symbolic batch, height and width (evaluation/export.py): the phase
    # interleave and the crop must not need concrete sizes.
    up = Deconv2x(3, kernel_size=4)
    _, kernel = _deconv_case(4, (1, 1))
    b, h, w = jax.export.symbolic_shape("b, h, w")

    def f(x):
        return up.apply({"params": {"kernel": kernel}}, x, (2 * x.shape[1] - 1, 2 * x.shape[2]))

    exported = jax.export.export(jax.jit(f))(jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32))
    for size in ((5, 7), (6, 6)):
        x, _ = _deconv_case(4, size)
        target = (2 * size[0] - 1, 2 * size[1])
        np.testing.assert_allclose(exported.call(x), dilated_deconv(x, kernel, target), rtol=1e-5, atol=1e-5)
