"""Convert a PyTorch ResNet checkpoint (.pth/.pt) into a .safetensors state dict that gcn-jax reads.

    python tools/convert_pth.py resnet152-394f9c45.pth resnet152.safetensors

Needs torch (CPU is enough) and safetensors; nothing from gcn-jax or jax. Accepts a bare state dict or a
training checkpoint that nests it under 'state_dict', 'model' or 'model_state'; strips a 'module.' prefix
(DataParallel). Tensors are stored as float32 in torch layout, under torch's names: the mapping to flax
happens when loading (gcn_jax/models/pretrained.py).
"""

from __future__ import annotations

import argparse
import os
import sys

NESTED_KEYS = ("state_dict", "model", "model_state", "model_state_dict")


def extract_state_dict(obj, source: str) -> dict:
    import torch

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: no state dict of tensors found (top-level type {type(obj).__name__})")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def convert(src: str, dst: str) -> int:
    """Writes `dst`; returns the number of tensors. `dst` is written atomically (no partial file)."""
    import torch
    from safetensors.numpy import save_file

    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} does not exist")
    obj = torch.load(src, map_location="cpu", weights_only=True)
    state = extract_state_dict(obj, src)
    arrays = {}
    for k, v in state.items():
        v = v.detach().cpu()
        arrays[k] = (v.float() if v.is_floating_point() else v).contiguous().numpy()
    tmp = dst + ".tmp"
    save_file(arrays, tmp)
    os.replace(tmp, dst)
    return len(arrays)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="input .pth / .pt file")
    parser.add_argument("dst", help="output .safetensors file")
    args = parser.parse_args(argv)
    if not args.dst.endswith(".safetensors"):
        parser.error(f"output must end in .safetensors, got {args.dst!r}")
    try:
        n = convert(args.src, args.dst)
    except ImportError as e:
        print(f"convert_pth: needs torch and safetensors installed ({e})", file=sys.stderr)
        return 1
    print(f"wrote {n} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
