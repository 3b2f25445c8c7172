"""Import ImageNet ResNet weights from torchvision / timm state dicts saved as .safetensors or .npz.

The mapping is mechanical because the flax modules carry torchvision's names (`resnet.py`):

    flax (collection, path)                          torch key                       layout
    params/layer1_0/conv1/kernel  (H, W, I, O)   <-> layer1.0.conv1.weight         (O, I, H, W)
    params/bn1/scale, params/bn1/bias            <-> bn1.weight, bn1.bias
    batch_stats/bn1/mean, batch_stats/bn1/var    <-> bn1.running_mean, bn1.running_var
    params/fc/kernel  (I, O)                     <-> fc.weight                     (O, I)

Matching is strict: every backbone parameter and statistic must be in the file with the right shape, and
every tensor in the file must be used, except the ImageNet classifier (`fc.*`) and BN's
`num_batches_tracked` counters. Anything else is reported in one `WeightImportError` that lists all
missing, unexpected and mis-shaped keys. The segmentation heads are never touched: they keep their fresh
initialisation.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gcn_jax.errors import InputError, NotFoundError

IGNORE_BN_COUNTERS = ("*num_batches_tracked",)
# A segmentation backbone has no ImageNet classifier: the file's `fc.*` is expected and left unused.
DEFAULT_IGNORE = ("fc.*", *IGNORE_BN_COUNTERS)


class WeightImportError(InputError):
    """A weights file that does not fit the model; the message lists every problem."""


def _module_key(path: Sequence[str]) -> str:
    # 'layer1_0' -> 'layer1.0', 'downsample_1' -> 'downsample.1'
    return ".".join(re.sub(r"^(.*)_(\d+)$", r"\1.\2", p) for p in path)


def _torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, Any]:
    """Torch key for a flax leaf, and the transpose from torch layout to flax layout (None: as is)."""
    *module, leaf = path
    mod = _module_key(module)
    if collection == "batch_stats":
        names = {"mean": "running_mean", "var": "running_var"}
        if leaf not in names:
            raise KeyError(f"unexpected batch statistic {'/'.join(path)}")
        return f"{mod}.{names[leaf]}", None
    if leaf == "kernel":
        return f"{mod}.weight", "kernel"
    if leaf == "scale":
        return f"{mod}.weight", None
    if leaf == "bias":
        return f"{mod}.bias", None
    raise KeyError(f"no torch name for parameter {'/'.join(path)}")


def _to_flax(array: np.ndarray, transform) -> np.ndarray:
    if transform == "kernel":
        if array.ndim == 4:  # (O, I, H, W) -> (H, W, I, O)
            return np.transpose(array, (2, 3, 1, 0))
        if array.ndim == 2:  # (O, I) -> (I, O)
            return array.T
    return array


def _to_torch(array: np.ndarray, transform) -> np.ndarray:
    if transform == "kernel":
        if array.ndim == 4:
            return np.transpose(array, (3, 2, 0, 1))
        if array.ndim == 2:
            return array.T
    return array


def _subtree(variables: Mapping, collection: str, root: Sequence[str]) -> dict:
    tree = variables.get(collection, {})
    for key in root:
        if key not in tree:
            return {}
        tree = tree[key]
    return traverse_util.flatten_dict(dict(tree))


def export_state_dict(variables: Mapping, root: Sequence[str] = ("backbone",)) -> dict[str, np.ndarray]:
    """The torch-layout state dict of a subtree of `variables` (e.g. to save an own ResNet-GCN backbone)."""
    out = {}
    for collection in ("params", "batch_stats"):
        for path, value in _subtree(variables, collection, root).items():
            name, transform = _torch_name(collection, path)
            out[name] = np.ascontiguousarray(_to_torch(np.asarray(value, np.float32), transform))
    return out


def check_weights_file(path: str | os.PathLike) -> None:
    """The file exists, is of a format `read_state_dict` reads (.safetensors or .npz) and starts like one (the
    safetensors JSON header, the .npz zip directory), without reading the tensors: cheap enough for the
    up-front config check. Else `NotFoundError` or `WeightImportError` saying what to do."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NotFoundError(f"weights file {path!r} does not exist")
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        raise WeightImportError(
            f"{path}: PyTorch pickles are not read directly; convert once with "
            f"`python tools/convert_pth.py {path} {os.path.splitext(path)[0]}.safetensors` (needs torch)"
        )
    if not path.endswith((".safetensors", ".npz")):
        raise WeightImportError(f"{path}: unknown weights format; expected a .safetensors or .npz file")
    if path.endswith(".npz") and not zipfile.is_zipfile(path):
        raise WeightImportError(f"{path}: not a readable .npz file (an .npz is a zip archive; this is not one)")
    if path.endswith(".safetensors"):
        _check_safetensors_header(path)


def _check_safetensors_header(path: str) -> None:
    """A safetensors file starts with the length of its JSON header (8 bytes, little-endian), then the header."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, 100_000_000):  # safetensors' own limit is 100 MB
            raise WeightImportError(f"{path}: not a readable safetensors file (its first 8 bytes give a header of "
                                    f"{length} bytes in a file of {size})")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise WeightImportError(f"{path}: not a readable safetensors file (its header is not a JSON object)")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a flat {name: array} state dict from .safetensors or .npz (no torch needed)."""
    path = os.fspath(path)
    check_weights_file(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightImportError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        try:
            with np.load(path, allow_pickle=False) as f:
                state = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise WeightImportError(f"{path}: not a readable .npz file ({e})") from e
    return _strip_prefix(state)


def _strip_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # nn.DataParallel / DDP checkpoints prefix every key with 'module.'.
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_backbone(
    variables: Mapping,
    weights: str | os.PathLike | Mapping[str, np.ndarray],
    root: Sequence[str] = ("backbone",),
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> dict:
    """Returns `variables` with the subtree at `root` (params and BN statistics) replaced by the weights.

    Args:
      variables: an initialised variable tree, e.g. `model.init(...)` of `GCNSegmentation`.
      weights: a .safetensors / .npz path, or a {torch name: array} mapping in torch layout.
      root: where the ResNet sits in the tree (`('backbone',)` for `GCNSegmentation`, `()` for a bare ResNet).
      ignore: glob patterns of file keys that may be present without being used.

    Raises:
      WeightImportError listing every missing, unexpected and mis-shaped key.
    """
    source = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "<state dict>"
    state = read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else _strip_prefix(dict(weights))
    expected = {}  # torch name -> (collection, flax path, transform, flax shape)
    for collection in ("params", "batch_stats"):
        for path, value in _subtree(variables, collection, root).items():
            name, transform = _torch_name(collection, path)
            expected[name] = (collection, path, transform, tuple(np.shape(value)))
    if not expected:
        raise WeightImportError(f"the variables have no subtree at {'/'.join(root) or '<root>'} to load into")
    if "conv1.weight" in state and "conv1.weight" in expected:  # the one error to name, not hundreds of shapes
        *_, flax_shape = expected["conv1.weight"]  # (7, 7, 3, width); the file's is (width, 3, 7, 7)
        have, want = np.shape(state["conv1.weight"])[0], flax_shape[-1]
        if have != want:
            raise WeightImportError(
                f"{source}: its backbone has base width {have} (conv1.weight has {have} output channels), the "
                f"model's has {want} (config.model.backbone_width): load weights of the same width (torchvision's "
                "ImageNet ResNets have width 64)")
    loaded = _match(state, expected, ignore, f"{source} does not match the backbone at {'/'.join(root) or '<root>'}")
    out = {k: dict(v) for k, v in variables.items()}
    for collection, leaves in loaded.items():
        if not leaves:
            continue
        flat = traverse_util.flatten_dict(dict(out[collection]))
        for path, value in leaves.items():
            flat[tuple(root) + path] = value
        out[collection] = traverse_util.unflatten_dict(flat)
    return out


def _match(state: Mapping[str, np.ndarray], expected: dict, ignore: Sequence[str], title: str) -> dict:
    """{collection: {flax path: array in flax layout}} for every expected torch name; or one
    `WeightImportError` under ``title`` listing every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not any(fnmatch.fnmatch(k, p) for p in ignore))
    mismatched = []
    loaded: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name in sorted(set(expected) & set(state)):
        collection, path, transform, shape = expected[name]
        array = np.asarray(state[name])
        converted = _to_flax(array, transform)
        if converted.shape != shape:
            want = _to_torch(np.empty(shape, np.uint8), transform).shape
            mismatched.append(f"{name}: file has {tuple(array.shape)}, model expects {tuple(want)}")
            continue
        if not jnp.issubdtype(array.dtype, jnp.floating):  # numpy alone does not know bfloat16
            mismatched.append(f"{name}: file has dtype {array.dtype}, expected a floating-point tensor")
            continue
        loaded[collection][path] = jnp.asarray(converted, jnp.float32)

    if missing or unexpected or mismatched:
        lines = [f"{title}:"]
        for kind, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape/dtype mismatches", mismatched)):
            if items:
                lines.append(f"  {kind} ({len(items)}): " + ", ".join(items))
        if missing and len(missing) == len(expected):
            lines.append("  (no key matched: is this a torchvision/timm ResNet state dict of the same depth?)")
        raise WeightImportError("\n".join(lines))
    return loaded
