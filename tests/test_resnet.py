"""ResNet backbones: torchvision's parameter counts, stage shapes, BatchNorm behaviour, and the ResNet-GCN
variant of Figure 5 / Table 11."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gcn_jax.models import ResNet, ResNetClassifier, resnet, stage_channels
from gcn_jax.models.summary import abstract_variables, count_params, forward_flops
from tests.reference import conv2d

# torchvision.models.resnetN(): sum(p.numel() for p in model.parameters()), 1000-class head included.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.mark.parametrize("arch, expected", TORCHVISION_PARAMS.items())
def test_param_counts_equal_torchvision(arch, expected):
    with_head = count_params(abstract_variables(ResNetClassifier(arch), (1, 224, 224, 3))["params"])
    trunk = count_params(abstract_variables(ResNet(arch), (1, 224, 224, 3))["params"])
    fc = stage_channels(arch)[-1] * 1000 + 1000
    assert with_head == expected
    assert trunk == expected - fc  # the segmentation backbone has no classifier (ResNet-50: 23,508,032)


def _trunk_params(arch: str, w: int) -> int:
    """Parameters of a ResNet trunk of base width w, counted layer by layer from the architecture (conv
    weights without bias, 2 per BN channel), independently of the module."""
    block, counts = resnet.RESNET_SPECS[arch]
    total, cin = 3 * 7 * 7 * w + 2 * w, w  # conv1 + bn1
    for stage, n in enumerate(counts):
        width = w * 2 ** stage
        cout = width if block == "basic" else 4 * width
        for i in range(n):
            if block == "basic":  # 3x3, 3x3
                total += 9 * cin * width + 9 * width * width + 4 * width
            else:  # 1x1 reduce, 3x3, 1x1 expand
                total += cin * width + 9 * width * width + width * cout + 4 * width + 2 * cout
            if i == 0 and (stage > 0 or cin != cout):  # projection shortcut + BN
                total += cin * cout + 2 * cout
            cin = cout
    return total


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_narrow_backbones_have_the_counted_parameters_and_channels(arch):
    fc = stage_channels(arch)[-1] * 1000 + 1000
    assert _trunk_params(arch, 64) == TORCHVISION_PARAMS[arch] - fc  # the count is torchvision's at width 64
    for w in (16, 8):
        v = abstract_variables(ResNet(arch, width=w), (1, 64, 64, 3))
        assert count_params(v["params"]) == _trunk_params(arch, w)
        classifier = abstract_variables(ResNetClassifier(arch, width=w), (1, 64, 64, 3))["params"]
        assert count_params(classifier) == _trunk_params(arch, w) + stage_channels(arch, w)[-1] * 1000 + 1000
        expansion = 1 if arch == "resnet18" else 4
        assert stage_channels(arch, w) == tuple(expansion * w * m for m in (1, 2, 4, 8))
        out = jax.eval_shape(ResNet(arch, width=w).apply, v, jnp.zeros((1, 97, 131, 3)))
        assert [f.shape for f in out] == [(1, math.ceil(97 / s), math.ceil(131 / s), c)
                                          for s, c in zip((4, 8, 16, 32), stage_channels(arch, w))]
    # A quarter of the width: between 1/16 and 1/12 of the multiply-adds (the stem conv, whose 3 input channels
    # do not narrow, costs a quarter; BN, ReLU and pooling scale with the channels).
    ratio = forward_flops(ResNet(arch, width=16), (1, 224, 224, 3)) / forward_flops(ResNet(arch), (1, 224, 224, 3))
    assert 1 / 16 < ratio < 1 / 12


def test_narrow_resnet_gcn_scales_the_branch_widths():
    v = abstract_variables(ResNet("resnet50_gcn", width=16), (1, 64, 64, 3))["params"]
    assert v["layer3_0"]["conv_a1"]["kernel"].shape == (1, 5, 128, 21)  # m' = 85 x 16/64, rounded; k = 5
    assert v["layer4_0"]["conv_b2"]["kernel"].shape == (1, 7, 32, 32)  # m' = 128 x 16/64; k = 7


@pytest.mark.parametrize("width", [0, -16, 16.0, True])
def test_bad_backbone_width_is_refused(width):
    expected = rf"backbone width \(model.backbone_width\) must be a positive int .*got {width!r}"
    with pytest.raises(ValueError, match=expected):
        ResNet("resnet18", width=width).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("hw", [(97, 131), (224, 224), (500, 375)])
def test_stage_shapes_are_ceil_of_stride(arch, hw):
    v = abstract_variables(ResNet(arch), (2, *hw, 3))
    out = jax.eval_shape(lambda v: ResNet(arch).apply(v, jnp.zeros((2, *hw, 3))), v)
    for f, stride, c in zip(out, (4, 8, 16, 32), stage_channels(arch)):
        assert f.shape == (2, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride), c)


def test_bn_train_mode_updates_running_stats_with_torch_momentum():
    x = np.random.default_rng(0).standard_normal((2, 20, 22, 3)).astype(np.float32)
    model = ResNet("resnet18")
    v = model.init(jax.random.key(0), x)
    _, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
    # bn1 sees conv1's output; torch: running = 0.9 * running + 0.1 * batch statistic (biased here).
    w = np.transpose(np.asarray(v["params"]["conv1"]["kernel"]), (3, 2, 0, 1))
    y = conv2d(x, w, (2, 2), ((3, 3), (3, 3)))
    mean = y.mean(axis=(0, 1, 2))
    var = y.var(axis=(0, 1, 2))
    np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["bn1"]["var"], 0.9 + 0.1 * var, rtol=1e-4)


def test_frozen_bn_uses_running_stats_and_never_updates():
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    v = ResNet("resnet18").init(jax.random.key(0), x)
    frozen = ResNet("resnet18", frozen_bn=True)
    out_train, updates = frozen.apply(v, x, train=True, mutable=["batch_stats"])
    out_eval = frozen.apply(v, x, train=False)
    for a, b in zip(jax.tree_util.tree_leaves(updates["batch_stats"]), jax.tree_util.tree_leaves(v["batch_stats"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(out_train, out_eval):  # the same statistics; training computes 1x1 convs as matmuls
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_resnet_gcn_blocks_follow_table11():
    v = abstract_variables(ResNet("resnet50_gcn"), (1, 224, 224, 3))["params"]
    blocks = {k for k in v if k.startswith("layer")}
    assert sorted(b for b in blocks if b.startswith("layer3")) == [f"layer3_{i}" for i in range(6)]
    assert sorted(b for b in blocks if b.startswith("layer4")) == [f"layer4_{i}" for i in range(3)]
    # res-2 and res-3 unchanged; res-4 k=5, m'=85; res-5 k=7, m'=128, output 2048 channels.
    assert v["layer2_1"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert v["layer3_1"]["conv_a1"]["kernel"].shape == (1, 5, 1024, 85)
    assert v["layer3_1"]["conv_a2"]["kernel"].shape == (5, 1, 85, 85)
    assert v["layer3_1"]["conv_b1"]["kernel"].shape == (5, 1, 1024, 85)
    assert v["layer3_1"]["conv3"]["kernel"].shape == (1, 1, 85, 1024)
    assert v["layer4_0"]["conv_a1"]["kernel"].shape == (1, 7, 1024, 128)
    assert v["layer4_2"]["conv_b2"]["kernel"].shape == (1, 7, 128, 128)
    assert v["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 128, 2048)
    assert "downsample_0" in v["layer4_0"] and "downsample_0" not in v["layer4_1"]
    # every conv has its BN
    assert {"bn_a1", "bn_a2", "bn_b1", "bn_b2", "bn3"} <= set(v["layer3_3"])


def test_resnet_gcn_blocks_have_their_own_weights():
    x = jnp.zeros((1, 64, 64, 3))
    params = jax.jit(ResNet("resnet50_gcn").init)(jax.random.key(0), x)["params"]
    kernels = [np.asarray(params[f"layer4_{i}"]["conv_a2"]["kernel"]) for i in range(3)]
    assert not np.allclose(kernels[1], kernels[2]) and not np.allclose(kernels[0], kernels[1])
    flat = traverse_util.flatten_dict(params)
    # 3 GCN blocks x 4 branch convs in res-5, each a separate leaf
    assert len([p for p in flat if p[0].startswith("layer4") and p[1].startswith("conv_") and p[-1] == "kernel"]) == 12


def test_resnet50_and_resnet50_gcn_cost_about_the_same():
    # Table 6 / Figure 5: both about 3.7 GFLOPs at 224x224 (multiply-adds).
    shape = (1, 224, 224, 3)
    plain = forward_flops(ResNetClassifier("resnet50"), shape) / 2
    gcn = forward_flops(ResNetClassifier("resnet50_gcn"), shape) / 2
    assert 3.5e9 < plain < 4.3e9
    assert abs(gcn - plain) / plain < 0.10


@pytest.mark.parametrize("kernel_size, strides, padding", [
    ((1, 1), 1, 0), ((1, 1), 2, 0), ((3, 3), 2, ((1, 1), (1, 1))), ((7, 7), 2, ((3, 3), (3, 3))),
    ((1, 5), (1, 2), ((0, 0), (2, 2))), ((5, 1), (2, 1), ((2, 2), (0, 0)))])
@pytest.mark.parametrize("pointwise_matmul", [False, True])
def test_the_backbone_conv_is_flax_conv_with_the_same_parameter(kernel_size, strides, padding, pointwise_matmul):
    # In training 1 x 1 convolutions are matrix products (faster gradients on XLA's CPU backend): same kernel
    # parameter, same outputs and gradients as nn.Conv, also strided on odd sizes.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 11, 6)), jnp.float32)
    ours = resnet.Conv(5, kernel_size, strides, padding, pointwise_matmul=pointwise_matmul)
    reference = nn.Conv(5, kernel_size, strides, padding=padding, use_bias=False)
    params = ours.init(jax.random.key(1), x)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, reference.init(jax.random.key(1), x))

    def grads(module):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), argnums=(0, 1))(params, x)

    np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads(ours), grads(reference))


@pytest.mark.parametrize("size", [(9, 11), (8, 8), (1, 1), (2, 3)])
def test_stem_max_pool_is_flax_max_pool_with_the_same_gradient_routing(size):
    # ReLU outputs rounded to quarters: many windows tie (all zeros, or equal maxima). The gradient must go to
    # the same element of each window as XLA's select-and-scatter (the first maximum in row-major order):
    # with integer cotangents the sums are exact, so the gradients must be equal, not just close.
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.round(np.maximum(rng.standard_normal((2, *size, 3)), 0) * 4) / 4, jnp.float32)

    def ref(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    y, back = jax.vjp(resnet.max_pool_3x3_s2, x)
    y_ref, back_ref = jax.vjp(ref, x)
    np.testing.assert_array_equal(y, y_ref)
    cot = jnp.asarray(rng.integers(1, 100, y.shape), jnp.float32)
    np.testing.assert_array_equal(back(cot)[0], back_ref(cot)[0])
    cot = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    np.testing.assert_allclose(back(cot)[0], back_ref(cot)[0], rtol=1e-6, atol=1e-6)


def _pool_gradient_comparisons() -> list[list[str]]:
    """The comparison directions of each computation that holds the max-pool gradient's window comparisons (9
    equalities), in XLA's compiled gradient of relu -> pool."""
    x = jnp.ones((2, 32, 32, 8))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(resnet.max_pool_3x3_s2(jax.nn.relu(x))))))
    computations = re.split(r"\n(?=\S)", grad.lower(x).compile().as_text())
    directions = [re.findall(r" compare\([^\n]*?direction=(\w+)", c) for c in computations]
    return [d for d in directions if d.count("EQ") >= 9]


def test_stem_max_pool_gradient_is_not_fused_into_the_relu_backward(monkeypatch):
    # The stem's pool gradient is one array (an optimization barrier): fused into the ReLU's (and BatchNorm's)
    # backward, XLA's CPU backend ran the whole stem's forward + backward twice as long (README, "Performance";
    # measured there at 2 x 256^2 with BatchNorm, checked here on a small ReLU -> pool). The computation that
    # compares the windows with their maximum must not also compute the ReLU's mask (x > 0).
    if jax.default_backend() != "cpu":
        pytest.skip("checks the fusions of XLA's CPU backend")
    pool = _pool_gradient_comparisons()
    assert pool, "no computation holds the pool gradient's 9 window comparisons"
    assert all(set(d) == {"EQ"} for d in pool), f"the pool gradient's comparisons are fused with others: {pool}"
    # The control: without the barrier, XLA fuses them and the check above sees it (if this fails, XLA no
    # longer fuses the two and the barrier may be unneeded).
    monkeypatch.setattr(jax.lax, "optimization_barrier", lambda x: x)
    unfused = _pool_gradient_comparisons()
    assert any(set(d) != {"EQ"} for d in unfused), f"without the barrier, no other comparison joined: {unfused}"
