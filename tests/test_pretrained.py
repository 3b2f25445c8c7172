"""Importing torchvision/timm ImageNet weights: every tensor lands where it belongs (with the right
transpose), the imported network computes what the original computes, and bad files fail clearly."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from gcn_jax.models import (
    IGNORE_BN_COUNTERS,
    GCNSegmentation,
    ResNet,
    ResNetClassifier,
    WeightImportError,
    export_state_dict,
    load_backbone,
)
from gcn_jax.models.summary import abstract_variables
from tests.reference import resnet_forward, torchvision_state_dict

IGNORED = re.compile(r"^fc\.|num_batches_tracked$")


def flax_location(torch_key):
    """The documented mapping, spelled out independently: layer1.0.conv1.weight -> layer1_0/conv1."""
    *module, leaf = torch_key.split(".")
    parts = []
    for m in module:
        if m.isdigit():
            parts[-1] = f"{parts[-1]}_{m}"
        else:
            parts.append(m)
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", (*parts, leaf.removeprefix("running_")), None
    if leaf == "bias":
        return "params", (*parts, "bias"), None
    is_bn = parts[-1].startswith("bn") or parts[-1] == "downsample_1"
    return "params", (*parts, "scale" if is_bn else "kernel"), None if is_bn else (2, 3, 1, 0)


def save(sd, path):
    if str(path).endswith(".npz"):
        np.savez(path, **sd)
    else:
        save_file(sd, str(path))
    return path


@pytest.mark.parametrize("depth, fmt", [(18, "safetensors"), (50, "npz"), (152, "safetensors")])
def test_every_tensor_lands_with_the_right_layout(tmp_path, depth, fmt):
    sd = torchvision_state_dict(depth, seed=depth)
    path = save(sd, tmp_path / f"resnet{depth}.{fmt}")
    model = GCNSegmentation(21, f"resnet{depth}", kernel_size=3)
    variables = abstract_variables(model, (1, 64, 64, 3))  # shapes are all the loader needs
    loaded = load_backbone(variables, path)
    flat = {c: traverse_util.flatten_dict(loaded[c]["backbone"]) for c in ("params", "batch_stats")}

    n_checked = 0
    for key, value in sd.items():
        if IGNORED.search(key):
            continue
        collection, leaf, perm = flax_location(key)
        got = np.asarray(flat[collection][leaf])
        np.testing.assert_array_equal(got, value if perm is None else np.transpose(value, perm))
        n_checked += 1
    assert n_checked == len(flat["params"]) + len(flat["batch_stats"])  # every backbone leaf came from the file


@pytest.mark.parametrize("depth", [18, 50])
def test_imported_network_computes_torchvision_activations(tmp_path, depth):
    # Even sizes that are not multiples of 32: there flax's "SAME" pads (0, 1) where torchvision pads (1, 1)
    # (stem, max-pool, strided 3x3s), so any padding other than torchvision's would shift the maps.
    x = np.random.default_rng(1).standard_normal((1, 44, 38, 3)).astype(np.float32)
    sd = torchvision_state_dict(depth, seed=3)
    model = ResNet(f"resnet{depth}")
    variables = load_backbone(model.init(jax.random.key(0), x), save(sd, tmp_path / "w.safetensors"), root=())
    got = model.apply(variables, x)
    want = resnet_forward(sd, depth, x)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=2e-4 * np.abs(w).max())


def test_imagenet_classifier_imports_whole_state_dict(tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 40, 36, 3)).astype(np.float32)
    sd = torchvision_state_dict(18, seed=4)
    model = ResNetClassifier("resnet18")
    variables = abstract_variables(model, x.shape)
    loaded = load_backbone(variables, save(sd, tmp_path / "w.safetensors"), root=(), ignore=IGNORE_BN_COUNTERS)
    logits = np.asarray(model.apply(loaded, x))
    pooled = resnet_forward(sd, 18, x)[-1].mean(axis=(1, 2))
    np.testing.assert_allclose(logits, pooled @ sd["fc.weight"].T + sd["fc.bias"], rtol=2e-4, atol=1e-5)
    assert set(export_state_dict(loaded, root=())) == {k for k in sd if "num_batches_tracked" not in k}


def test_bfloat16_files_load_as_float32(tmp_path):
    import ml_dtypes

    sd = torchvision_state_dict(18)
    sd = {k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v for k, v in sd.items()}
    variables = abstract_variables(ResNet("resnet18"), (1, 32, 32, 3))
    loaded = load_backbone(variables, save(sd, tmp_path / "bf16.safetensors"), root=())
    got = loaded["params"]["layer1_0"]["conv1"]["kernel"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.transpose(sd["layer1.0.conv1.weight"].astype(np.float32), (2, 3, 1, 0)))


def test_heads_keep_their_initialisation(tmp_path):
    x = jnp.zeros((1, 32, 32, 3))
    model = GCNSegmentation(21, "resnet18", kernel_size=3)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    loaded = load_backbone(variables, save(torchvision_state_dict(18), tmp_path / "w.safetensors"))
    for name in variables["params"]:
        if name != "backbone":
            for a, b in zip(jax.tree_util.tree_leaves(loaded["params"][name]),
                            jax.tree_util.tree_leaves(variables["params"][name])):
                np.testing.assert_array_equal(a, b)
    assert not np.array_equal(loaded["params"]["backbone"]["conv1"]["kernel"],
                              variables["params"]["backbone"]["conv1"]["kernel"])


def test_export_round_trips(tmp_path):
    sd = torchvision_state_dict(18, seed=5)
    variables = abstract_variables(ResNet("resnet18"), (1, 32, 32, 3))
    out = export_state_dict(load_backbone(variables, sd, root=()), root=())
    assert set(out) == {k for k in sd if not IGNORED.search(k)}
    for k, v in out.items():
        np.testing.assert_array_equal(v, sd[k])


def test_dataparallel_prefix_is_stripped(tmp_path):
    sd = {f"module.{k}": v for k, v in torchvision_state_dict(18).items()}
    variables = abstract_variables(ResNet("resnet18"), (1, 32, 32, 3))
    loaded = load_backbone(variables, save(sd, tmp_path / "w.safetensors"), root=())
    np.testing.assert_array_equal(loaded["batch_stats"]["bn1"]["var"], sd["module.bn1.running_var"])


def test_missing_unexpected_and_misshaped_keys_are_all_listed(tmp_path):
    sd = torchvision_state_dict(18)
    del sd["layer2.1.bn2.running_var"]
    sd["layer3.0.conv1.weight"] = sd["layer3.0.conv1.weight"][:, :64]
    sd["layer5.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
    path = save(sd, tmp_path / "broken.safetensors")
    variables = abstract_variables(ResNet("resnet18"), (1, 32, 32, 3))
    with pytest.raises(WeightImportError) as e:
        load_backbone(variables, path, root=())
    msg = str(e.value)
    assert str(path) in msg
    assert "missing keys (1): layer2.1.bn2.running_var" in msg
    assert "unexpected keys (1): layer5.0.conv1.weight" in msg
    assert "layer3.0.conv1.weight: file has (256, 64, 3, 3), model expects (256, 128, 3, 3)" in msg


def test_wrong_depth_is_rejected(tmp_path):
    path = save(torchvision_state_dict(18), tmp_path / "r18.safetensors")
    variables = abstract_variables(ResNet("resnet50"), (1, 32, 32, 3))
    with pytest.raises(WeightImportError, match="missing keys .*layer1.0.conv3.weight"):
        load_backbone(variables, path, root=())


def test_unreadable_and_unsupported_files(tmp_path):
    variables = abstract_variables(ResNet("resnet18"), (1, 32, 32, 3))
    good = save(torchvision_state_dict(18), tmp_path / "w.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(WeightImportError, match="truncated.safetensors: not a readable safetensors file"):
        load_backbone(variables, truncated, root=())
    pth = tmp_path / "resnet18.pth"
    pth.write_bytes(b"\x80\x02")
    with pytest.raises(WeightImportError, match="tools/convert_pth.py"):
        load_backbone(variables, pth, root=())
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_backbone(variables, tmp_path / "nope.safetensors", root=())


def test_weights_of_another_backbone_width_are_refused_by_name(tmp_path):
    """ImageNet weights (width 64) into a narrow backbone (config.model.backbone_width = 16): one error that says
    so, not a list of every mis-shaped array; and a narrow classifier's own weights load into a narrow trunk."""
    path = save(torchvision_state_dict(18), tmp_path / "w64.safetensors")
    narrow = abstract_variables(ResNet("resnet18", width=16), (1, 32, 32, 3))
    with pytest.raises(WeightImportError, match=r"w64.safetensors: its backbone has base width 64 .*the model's has "
                                                r"16 \(config.model.backbone_width\)") as e:
        load_backbone(narrow, path, root=())
    assert "layer1.0" not in str(e.value)
    classifier = jax.jit(ResNetClassifier("resnet18", width=16).init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    state = export_state_dict(classifier, root=())
    assert state["conv1.weight"].shape == (16, 3, 7, 7) and state["fc.weight"].shape == (1000, 128)
    loaded = load_backbone(narrow, save(state, tmp_path / "w16.safetensors"), root=(), ignore=("fc.*",))
    np.testing.assert_array_equal(loaded["params"]["layer4_1"]["conv2"]["kernel"],
                                  classifier["params"]["layer4_1"]["conv2"]["kernel"])
