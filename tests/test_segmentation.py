"""The segmentation network of Figure 2A: structure, output resolution for any input size, ablation heads,
mixed precision, and construction from the configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cityscapes, default, voc
from gcn_jax.models import GCNSegmentation, ResNet, build_model, stage_channels
from gcn_jax.models.summary import abstract_variables, count_params
from tests import reference

C = 21


def param_shapes(model, hw=(64, 64)):
    return abstract_variables(model, (1, *hw, 3))["params"]


def logits_shape(model, hw):
    v = abstract_variables(model, (1, *hw, 3))
    return jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, *hw, 3))), v)


@pytest.mark.parametrize("hw", [(512, 512), (500, 375), (375, 500), (97, 131), (1, 1), (33, 64)])
def test_logits_have_the_input_resolution(hw):
    out = logits_shape(build_model(voc.get_config().model), hw)
    assert out.shape == (1, *hw, C) and out.dtype == jnp.float32


def test_figure2_has_4_gcn_9_br_5_deconvs():
    params = param_shapes(GCNSegmentation(C, "resnet50", kernel_size=15))
    assert sorted(k for k in params if k.startswith("head_")) == ["head_res2", "head_res3", "head_res4", "head_res5"]
    assert all(set(params[f"head_res{i}"]) == {"left_kx1", "left_1xk", "right_1xk", "right_kx1"} for i in (2, 3, 4, 5))
    assert len([k for k in params if k.startswith("br_")]) == 9
    assert len([k for k in params if k.startswith("up_")]) == 5
    assert set(params) - {"backbone"} == {
        *(f"head_res{i}" for i in (2, 3, 4, 5)), *(f"br_res{i}" for i in (2, 3, 4, 5)),
        "br_s16", "br_s8", "br_s4", "br_s2", "br_s1", "up_s16", "up_s8", "up_s4", "up_s2", "up_s1"}


def test_voc_model_parameter_count():
    # ResNet-152 trunk + 4 GCN heads (no bias) + 9 BR (two 3x3 C->C convs with bias) + 5 C->C 3x3 deconvs.
    trunk = 60_192_808 - (2048 * 1000 + 1000)
    k = 15
    heads = sum(2 * k * (c * C + C * C) for c in (256, 512, 1024, 2048))
    br = 9 * 2 * (9 * C * C + C)
    deconv = 5 * 9 * C * C
    params = param_shapes(build_model(voc.get_config().model))
    assert count_params(params) == trunk + heads + br + deconv == 60_707_593


def test_decoder_dataflow_matches_figure2a():
    # An independent numpy decoder (scatter-style deconvolutions) on the model's own backbone features, with
    # every parameter perturbed so that no initial symmetry (bilinear deconvs, zero biases) hides a wiring
    # error such as a BR before the addition or swapped skips. 97x131 (odd, not a multiple of 32) exercises
    # every crop; a batch of 2 checks that examples stay apart.
    h, w = 97, 131
    x = np.random.default_rng(0).standard_normal((2, h, w, 3)).astype(np.float32)
    model = GCNSegmentation(5, "resnet18", kernel_size=3)
    v = model.init(jax.random.key(0), x)
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(np.float32), v["params"])
    got = np.asarray(model.apply({"params": params, "batch_stats": v["batch_stats"]}, x))
    features = ResNet("resnet18").apply({"params": params["backbone"], "batch_stats": v["batch_stats"]["backbone"]}, x)
    want = reference.gcn_decoder(params, features, h, w)
    assert got.shape == want.shape == (2, h, w, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_br_off_removes_all_nine_blocks():
    on = param_shapes(GCNSegmentation(C, "resnet18", kernel_size=5))
    off = param_shapes(GCNSegmentation(C, "resnet18", kernel_size=5, use_br=False))
    assert not [k for k in off if k.startswith("br_")]
    assert count_params(on) - count_params(off) == 9 * 2 * (9 * C * C + C)


@pytest.mark.parametrize("head, k, per_stage", [
    ("gcn", 7, lambda c: 2 * 7 * (c * C + C * C)),
    ("conv", 5, lambda c: 5 * 5 * c * C),
    ("stack", 7, lambda c: 9 * (c * c + c * c + c * C)),
    ("base", 15, lambda c: c * C),
])
def test_ablation_heads(head, k, per_stage):
    model = GCNSegmentation(C, "resnet18", head=head, kernel_size=k, use_br=False)
    params = param_shapes(model)
    for stage, c in zip(("res2", "res3", "res4", "res5"), stage_channels("resnet18")):
        assert count_params(params[f"head_{stage}"]) == per_stage(c), stage
    assert logits_shape(model, (70, 90)).shape == (1, 70, 90, C)


def test_per_stage_kernel_sizes():
    params = param_shapes(GCNSegmentation(C, "resnet18", kernel_size=(15, 11, 9, 7)))
    assert params["head_res2"]["left_kx1"]["kernel"].shape[0] == 15
    assert params["head_res5"]["left_kx1"]["kernel"].shape[0] == 7


@pytest.mark.parametrize("kwargs, match", [
    ({"kernel_size": 14}, "kernel_size for res2 must be a positive odd integer.*14"),
    ({"kernel_size": (15, 11, 8, 7)}, "kernel_size for res4 must be a positive odd integer.*8"),
    ({"kernel_size": (15, 11)}, "one int or 4 ints"),
    ({"backbone": "resnet51"}, "unknown backbone 'resnet51'"),
    ({"head": "dense"}, "unknown head 'dense'"),
    ({"backbone_width": 0}, "backbone width \\(model.backbone_width\\) must be a positive int .*got 0"),
])
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GCNSegmentation(C, **{"backbone": "resnet18", **kwargs})


def test_unbatched_images_are_rejected():
    model = GCNSegmentation(C, "resnet18", kernel_size=3)
    with pytest.raises(ValueError, match=r"images must be \(batch, height, width, channels\), got shape \(32, 32, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_bfloat16_logits_close_to_float32():
    # Inference mode, as used for evaluation. (In train mode BN normalises with batch statistics; at random
    # initialisation such a deep BN network amplifies any perturbation, so a float32 run with input noise
    # of bf16's size diverges as much. That is a property of the random network, not of the precision.)
    x = jax.random.normal(jax.random.key(1), (2, 64, 80, 3))
    f32 = GCNSegmentation(C, "resnet18", kernel_size=7)
    bf16 = GCNSegmentation(C, "resnet18", kernel_size=7, dtype=jnp.bfloat16)
    variables = f32.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    a, b = f32.apply(variables, x), bf16.apply(variables, x)
    assert b.dtype == jnp.float32
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert rel < 2e-2
    # and the bf16 model really convolves in bf16 everywhere: backbone, heads, BR and deconvolutions
    jaxpr = jax.make_jaxpr(lambda v, x: bf16.apply(v, x))(variables, x)
    def dtypes(primitive):
        return [str(e.outvars[0].aval.dtype) for e in reference.equations(jaxpr.jaxpr) if e.primitive.name == primitive]

    # ResNet-18 (incl. 3 projections), 4 GCN x 2 (their other two are `LineConv` products), 9 BR x 2, 5 deconvs x
    # 4 phases
    assert dtypes("conv_general_dilated") == ["bfloat16"] * (20 + 4 * 2 + 9 * 2 + 5 * 4)
    assert dtypes("dot_general") == ["bfloat16"] * (4 * 2)


def test_configs_build_the_papers_models():
    m = build_model(voc.get_config().model)
    assert (m.backbone, m.head, m.kernel_size, m.use_br, m.num_classes) == ("resnet152", "gcn", 15, True, 21)
    m = build_model(cityscapes.get_config().model)
    assert (m.kernel_size, m.num_classes) == (25, 19)
    cfg = default.get_config()
    cfg.model.stage_kernel_sizes = (15, 13, 11, 9)
    cfg.model.dtype = "bfloat16"
    m = build_model(cfg.model)
    assert m.stage_kernel_sizes() == (15, 13, 11, 9) and m.dtype == jnp.bfloat16
    cfg.model.backbone_width = 16
    v = abstract_variables(build_model(cfg.model), (1, 64, 64, 3))["params"]
    assert v["backbone"]["conv1"]["kernel"].shape == (7, 7, 3, 16)
    assert v["head_res5"]["left_kx1"]["kernel"].shape == (9, 1, 8 * 16 * 4, 21)  # res-5 of a width-16 ResNet-152, k=9
    cfg.model.dtype = "float16"
    with pytest.raises(ValueError, match="model.dtype must be one of .*'float16'"):
        build_model(cfg.model)
