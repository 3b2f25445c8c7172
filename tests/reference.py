"""Independent numpy references (float64, no jax) and torchvision-style fixtures for the model tests.

Everything here is written from torchvision's definitions (layer names, shapes, paddings), not from the
project's code, so that the tests compare two separate implementations.
"""

from __future__ import annotations

import math

import numpy as np

TORCHVISION_LAYERS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def conv2d(x, w, stride=(1, 1), pad=((0, 0), (0, 0)), bias=None):
    """Cross-correlation of x (N, H, W, I) with a torch-layout weight w (O, I, kh, kw)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    w = np.asarray(w, np.float64)
    o, i, kh, kw = w.shape
    sh, sw = stride
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, o))
    for a in range(kh):
        for b in range(kw):
            patch = x[:, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw, :]
            out += patch @ w[:, :, a, b].T
    if bias is not None:
        out += bias
    return out


def sym(p):
    return ((p, p), (p, p))


def batchnorm(x, sd, name, eps=1e-5):
    scale = sd[f"{name}.weight"] / np.sqrt(sd[f"{name}.running_var"] + eps)
    return (x - sd[f"{name}.running_mean"]) * scale + sd[f"{name}.bias"]


def relu(x):
    return np.maximum(x, 0)


def maxpool3x3s2(x):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for a in range(3):
        for b in range(3):
            out = np.maximum(out, x[:, a : a + 2 * (ho - 1) + 1 : 2, b : b + 2 * (wo - 1) + 1 : 2, :])
    return out


def resnet_forward(sd, depth, x):
    """torchvision ResNet in eval mode on x (N, H, W, 3); returns the outputs of layer1..layer4."""
    kind, layers = TORCHVISION_LAYERS[depth]
    y = relu(batchnorm(conv2d(x, sd["conv1.weight"], (2, 2), sym(3)), sd, "bn1"))
    y = maxpool3x3s2(y)
    outs = []
    for li, n in enumerate(layers):
        for b in range(n):
            p = f"layer{li + 1}.{b}"
            s = 2 if li > 0 and b == 0 else 1
            if kind == "basic":
                z = relu(batchnorm(conv2d(y, sd[f"{p}.conv1.weight"], (s, s), sym(1)), sd, f"{p}.bn1"))
                z = batchnorm(conv2d(z, sd[f"{p}.conv2.weight"], (1, 1), sym(1)), sd, f"{p}.bn2")
            else:
                z = relu(batchnorm(conv2d(y, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                z = relu(batchnorm(conv2d(z, sd[f"{p}.conv2.weight"], (s, s), sym(1)), sd, f"{p}.bn2"))
                z = batchnorm(conv2d(z, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                y = batchnorm(conv2d(y, sd[f"{p}.downsample.0.weight"], (s, s)), sd, f"{p}.downsample.1")
            y = relu(z + y)
        outs.append(y)
    return outs


def torchvision_state_dict(depth: int, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """A random state dict with torchvision's ResNet keys and shapes (including fc and num_batches_tracked).

    Conv weights are He-scaled and BN statistics plausible, so activations stay O(1) through the network.
    """
    rng = np.random.default_rng(seed)
    kind, layers = TORCHVISION_LAYERS[depth]
    sd: dict[str, np.ndarray] = {}

    def conv(name, o, i, k):
        sd[f"{name}.weight"] = (rng.standard_normal((o, i, k, k)) * np.sqrt(1.0 / (i * k * k))).astype(dtype)

    def bn(name, c):
        sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(dtype)
        sd[f"{name}.bias"] = rng.uniform(-0.2, 0.2, c).astype(dtype)
        sd[f"{name}.running_mean"] = rng.uniform(-0.2, 0.2, c).astype(dtype)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(dtype)
        sd[f"{name}.num_batches_tracked"] = np.array(1000, np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
        for b in range(n):
            p = f"layer{li + 1}.{b}"
            stride = 2 if li > 0 and b == 0 else 1
            if kind == "basic":
                out = planes
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                out = planes * 4
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", out, planes, 1)
                bn(f"{p}.bn3", out)
            if stride != 1 or inplanes != out:
                conv(f"{p}.downsample.0", out, inplanes, 1)
                bn(f"{p}.downsample.1", out)
            inplanes = out
    sd["fc.weight"] = rng.standard_normal((1000, inplanes)).astype(dtype) * 0.01
    sd["fc.bias"] = np.zeros(1000, dtype)
    return sd


def torch_layout(kernel):
    """flax conv kernel (kh, kw, I, O) -> torch (O, I, kh, kw)."""
    return np.transpose(np.asarray(kernel, np.float64), (3, 2, 0, 1))


def gcn_block(p, x):
    """Figure 2B from a flax param dict: (kx1 -> 1xk) + (1xk -> kx1), 'same' padding, no bias."""
    q = p["left_kx1"]["kernel"].shape[0] // 2
    tall, wide = ((q, q), (0, 0)), ((0, 0), (q, q))
    left = conv2d(conv2d(x, torch_layout(p["left_kx1"]["kernel"]), pad=tall), torch_layout(p["left_1xk"]["kernel"]),
                  pad=wide)
    right = conv2d(conv2d(x, torch_layout(p["right_1xk"]["kernel"]), pad=wide),
                   torch_layout(p["right_kx1"]["kernel"]), pad=tall)
    return left + right


def boundary_refinement(p, s):
    """Figure 2C: S + conv3x3(ReLU(conv3x3(S)))."""
    r = relu(conv2d(s, torch_layout(p["conv1"]["kernel"]), pad=sym(1), bias=np.asarray(p["conv1"]["bias"])))
    return s + conv2d(r, torch_layout(p["conv2"]["kernel"]), pad=sym(1), bias=np.asarray(p["conv2"]["bias"]))


def upsample2x(kernel, x, target):
    """Stride-2 transposed convolution written as a scatter: coarse pixel (i, j) adds kernel[a, b] (I -> O) to
    fine pixel (2i + c - a, 2j + c - b), c = k // 2 (so an odd kernel's centre tap lands on 2i). The input
    is first edge-extended by one pixel at the bottom/right; the result is cropped to `target`."""
    kernel = np.asarray(kernel, np.float64)
    k = kernel.shape[0]
    c = k // 2
    x = np.concatenate([x, x[:, -1:]], 1)
    x = np.concatenate([x, x[:, :, -1:]], 2)
    n, h, w, _ = x.shape
    y = np.zeros((n, 2 * h + 2 * k, 2 * w + 2 * k, kernel.shape[3]))  # offset k so negative indices fit
    for i in range(h):
        for j in range(w):
            for a in range(k):
                for b in range(k):
                    y[:, k + 2 * i + c - a, k + 2 * j + c - b] += x[:, i, j] @ kernel[a, b]
    return y[:, k : k + target[0], k : k + target[1]]


def gcn_decoder(params, features, height, width):
    """Figure 2A's decoder from a flax param dict of GCNSegmentation, on the four backbone features."""
    s = [boundary_refinement(params[f"br_res{i}"], gcn_block(params[f"head_res{i}"], np.asarray(f, np.float64)))
         for i, f in zip((2, 3, 4, 5), features)]
    y = s[3]
    for skip, stride in ((s[2], 16), (s[1], 8), (s[0], 4)):
        y = boundary_refinement(params[f"br_s{stride}"],
                                upsample2x(params[f"up_s{stride}"]["kernel"], y, skip.shape[1:3]) + skip)
    half = (math.ceil(height / 2), math.ceil(width / 2))
    y = boundary_refinement(params["br_s2"], upsample2x(params["up_s2"]["kernel"], y, half))
    return boundary_refinement(params["br_s1"], upsample2x(params["up_s1"]["kernel"], y, (height, width)))


def equations(jaxpr):
    """Every equation of ``jaxpr``, those of the jaxprs nested in it (calls, custom gradients) included."""
    for e in jaxpr.eqns:
        yield e
        for p in e.params.values():
            sub = getattr(p, "jaxpr", None)
            if sub is not None:
                yield from equations(getattr(sub, "jaxpr", sub))
