"""A plain-PyTorch peer of gcn_jax's GCNSegmentation, to measure the JAX/PyTorch speed ratio on one machine.

    python benchmarks/torch_peer.py --backbone resnet50 --kernel-size 15 --size 256 --batch 2 --reps 5 --steps 3
    python benchmarks/torch_peer.py --part backbone --mode train --json torch.json

The network computes exactly the function of `gcn_jax/models/segmentation.py` at the standard backbone width
(64; `model.backbone_width` has no peer here) (tests/test_torch_peer.py loads
a flax model's variables into it and compares the logits): the torchvision-layout ResNet with its explicit
paddings (stem 7x7/2 pad 3, max-pool 3x3/2 pad 1, every 3x3 pad 1: stage maps of ceil(H/s) x ceil(W/s),
corner-aligned), a GCN head per stage (two separable k x 1 / 1 x k branches, no bias), the Boundary Refinement
blocks (conv3x3-ReLU-conv3x3 with bias, residual) and the x2 deconvolutions (edge-replicate by one pixel at the
bottom/right, a stride-2 transposed conv whose centre tap lands on the output pixel, crop to the target).
Module names follow the flax ones (`backbone.layer1.0.conv1` <-> `backbone/layer1_0/conv1`), which makes
`state_dict_from_flax` mechanical. Written with PyTorch's own modules as a PyTorch user would write it; torch
is optional (requirements-bench.txt) and this file never imports jax.

It is timed like benchmarks/train_step.py: random images and labels of one size, --warmup steps, then --reps
repetitions of --steps steps; the median step time, the min-max spread over repetitions, images/s and the
process's peak resident memory; --json writes the figures under the same key names as train_step.py's
(`train` / `infer`: `step_s`, `step_s_median`, `step_s_min`, `step_s_max`, `images_per_s`). Training is
`model.train()`, cross-entropy ignoring label 255 and SGD with momentum 0.9 and weight decay 5e-4 on conv
kernels only, at a constant learning rate 0.01 (configs/default.py's optimizer; the poly schedule is a scalar
and costs nothing); inference is `model.eval()` under `torch.inference_mode()`.

--part backbone times the ResNet alone (training: forward and backward of the sum of its four stage outputs,
BN in training mode), --part deconv one x2 deconvolution of --num-classes channels from ceil(H/2) x ceil(W/2)
to H x W (the network's last one; training: forward and backward of the sum of its output), as
train_step.py --part does; they help to locate a gap.

Threads: torch.set_num_threads(the cores this process may use), as XLA's CPU client uses them all (--threads
to change). Memory format: channels-last (NHWC) by default, the faster of the two here: on the 2-core
development machine (resnet50, k=15, 256², batch 2, one thread, the machine busy with other work) it trained
and inferred about 10% faster than NCHW in alternated runs; --no-channels-last runs NCHW. torch's OpenMP
threads degrade badly on a machine that is busy with other processes (a training step 5-10 times slower with 2
threads than with 1 there), so time it on a quiet machine.

On a GPU: --device cuda (cuDNN's autotuner on, `torch.backends.cudnn.benchmark`; each repetition ends when the
GPU is done; peak memory is `torch.cuda.max_memory_allocated`). --amp runs the forward pass and the loss under
`torch.autocast` to bfloat16 (PyTorch's automatic mixed precision: float32 parameters and optimizer, bfloat16
convolutions; no loss scaling, which bfloat16 does not need), the peer of train_step.py's
`--config.model.dtype=bfloat16`. Both run on CPU too (autocast to bfloat16 on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EXIT_OUT_OF_MEMORY = 4  # the exit code when the device runs out of memory (compare_torch.py retries smaller)
# (block type, blocks per stage) of the plain ResNets of gcn_jax.models.resnet.RESNET_SPECS.
RESNET_SPECS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STAGES = ("res2", "res3", "res4", "res5")
IGNORE_LABEL = 255


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free conv with torchvision's padding (k // 2) and a BN of eps 1e-5, momentum 0.1 (flax's 0.9)."""
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, width, 3, stride)
        self.conv2, self.bn2 = conv_bn(width, width, 3)
        self.downsample = nn.Sequential(*conv_bn(cin, width, 1, stride)) if stride != 1 or cin != width else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 carrying the stride (v1.5), 1x1 expand x4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = conv_bn(width, out, 1)
        self.downsample = nn.Sequential(*conv_bn(cin, out, 1, stride)) if stride != 1 or cin != out else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet trunk returning res-2..res-5 (strides 4, 8, 16, 32; ceil(H/s) x ceil(W/s) each)."""

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        if arch not in RESNET_SPECS:
            raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(RESNET_SPECS)}")
        kind, counts = RESNET_SPECS[arch]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.conv1, self.bn1 = conv_bn(3, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, (count, width) in enumerate(zip(counts, STAGE_WIDTHS)):
            blocks = []
            for i in range(count):
                blocks.append(block(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.channels = tuple(w * block.expansion for w in STAGE_WIDTHS)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's (and gcn_jax's) initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return tuple(features)


class GlobalConvBlock(nn.Module):
    """GCN block (Fig. 2B): (k x 1 then 1 x k) + (1 x k then k x 1), to `classes` channels, no bias."""

    def __init__(self, cin: int, classes: int, k: int):
        super().__init__()
        p = k // 2
        self.left_kx1 = nn.Conv2d(cin, classes, (k, 1), padding=(p, 0), bias=False)
        self.left_1xk = nn.Conv2d(classes, classes, (1, k), padding=(0, p), bias=False)
        self.right_1xk = nn.Conv2d(cin, classes, (1, k), padding=(0, p), bias=False)
        self.right_kx1 = nn.Conv2d(classes, classes, (k, 1), padding=(p, 0), bias=False)

    def forward(self, x):
        return self.left_1xk(self.left_kx1(x)) + self.right_kx1(self.right_1xk(x))


class BoundaryRefinement(nn.Module):
    """BR block (Fig. 2C): S + conv3x3(ReLU(conv3x3(S))), with bias; the second conv starts at zero."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


def bilinear_weight(size: int, channels: int) -> torch.Tensor:
    """(channels, channels, size, size) x2 bilinear upsampling, diagonal in channels (FCN's upsample_filt)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(size) - center) / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = torch.from_numpy(np.outer(taps, taps)).float()
    return weight


class Deconv2x(nn.ConvTranspose2d):
    """x2 transposed conv of gcn_jax's `Deconv2x`: the input edge-replicated by one pixel at the bottom/right,
    padding k - 1 - k//2 so that tap k//2 (of the flax kernel; torch's is flipped) lands on each output pixel,
    the result cropped at the bottom/right to `target`. Initialised to bilinear upsampling, no bias."""

    def __init__(self, channels: int, kernel_size: int = 3):
        if kernel_size < 2:
            raise ValueError(f"deconv kernel_size must be >= 2, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, stride=2, padding=kernel_size - 1 - kernel_size // 2,
                         bias=False)
        with torch.no_grad():
            self.weight.copy_(bilinear_weight(kernel_size, channels))

    def forward(self, x, target: tuple[int, int]):
        y = super().forward(F.pad(x, (0, 1, 0, 1), mode="replicate"))
        return y[:, :, : target[0], : target[1]]


class GCNSegmentation(nn.Module):
    """Figure 2A, as gcn_jax's GCNSegmentation with head 'gcn': per-stage GCN head + BR, then from res-5 five
    deconvolutions (the res-4, res-3, res-2 scores added after the first three), a BR after each. NCHW logits
    at the input resolution."""

    def __init__(self, num_classes: int = 21, backbone: str = "resnet50", kernel_size: int = 15,
                 use_br: bool = True, deconv_kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        c = num_classes
        self.use_br = use_br
        self.backbone = ResNet(backbone)
        for stage, cin in zip(STAGES, self.backbone.channels):
            setattr(self, f"head_{stage}", GlobalConvBlock(cin, c, kernel_size))
        for stride in (16, 8, 4, 2, 1):
            setattr(self, f"up_s{stride}", Deconv2x(c, deconv_kernel_size))
        if use_br:
            for name in (*STAGES, "s16", "s8", "s4", "s2", "s1"):
                setattr(self, f"br_{name}", BoundaryRefinement(c))

    def refine(self, x, name: str):
        return getattr(self, f"br_{name}")(x) if self.use_br else x

    def forward(self, images):
        height, width = images.shape[2:]
        features = self.backbone(images)
        scores = [self.refine(getattr(self, f"head_{s}")(f), s) for s, f in zip(STAGES, features)]
        x = scores[3]
        for skip, stride in zip((scores[2], scores[1], scores[0]), (16, 8, 4)):
            x = self.refine(getattr(self, f"up_s{stride}")(x, skip.shape[2:]) + skip, f"s{stride}")
        x = self.refine(self.up_s2(x, ((height + 1) // 2, (width + 1) // 2)), "s2")
        return self.refine(self.up_s1(x, (height, width)), "s1")


def state_dict_from_flax(variables: dict) -> dict[str, torch.Tensor]:
    """A state dict of this module from gcn_jax variables ({'params', 'batch_stats'} of numpy-convertible
    arrays): names `layer1_0` -> `layer1.0`, `downsample_0` -> `downsample.0`; conv kernels HWIO -> OIHW;
    deconv kernels flipped and HWIO -> (in, out, H, W) (a transposed conv correlates with the flipped kernel);
    BN scale -> weight, mean / var -> running_mean / running_var. `num_batches_tracked` is not included."""
    leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}
    state = {}

    def walk(tree, path):
        for key, value in tree.items():
            if isinstance(value, Mapping):
                walk(value, (*path, key))
                continue
            names = [p.replace("_", ".", 1) if p.startswith(("layer", "downsample_")) else p for p in path]
            array = np.asarray(value, np.float32)
            if key == "kernel" and path[-1].startswith("up_s"):
                array = array[::-1, ::-1].transpose(2, 3, 0, 1)
            elif key == "kernel":
                array = array.transpose(3, 2, 0, 1)
            state[".".join([*names, leaf_names[key]])] = torch.from_numpy(np.ascontiguousarray(array))

    for collection in ("params", "batch_stats"):
        walk(dict(variables.get(collection, {})), ())
    return state


def sgd(model: nn.Module, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
    """configs/default.py's optimizer: SGD with momentum, weight decay on conv kernels only (not on biases
    or BN), added to the gradient before momentum as in gcn_jax.training.optimizer."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                           lr=lr, momentum=momentum)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_part(args):
    """(module, input tensor, forward(x) -> output or tuple of outputs, labels or None) for --part."""
    height, width = args.size
    rng = torch.Generator().manual_seed(0)
    if args.part == "deconv":
        module = Deconv2x(args.num_classes)
        x = torch.randn(args.batch, args.num_classes, (height + 1) // 2, (width + 1) // 2, generator=rng)
        return module, x, lambda m, v: m(v, (height, width)), None
    x = torch.randn(args.batch, 3, height, width, generator=rng)
    if args.part == "backbone":
        return ResNet(args.backbone), x, lambda m, v: m(v), None
    model = GCNSegmentation(args.num_classes, args.backbone, args.kernel_size, not args.no_br)
    labels = torch.randint(0, args.num_classes, (args.batch, height, width), generator=rng)
    return model, x, lambda m, v: m(v), labels


def timed(run, reps: int, steps: int, synchronize=lambda: None) -> list[float]:
    """Seconds per step of ``reps`` repetitions of ``steps`` calls of ``run``, each repetition ending with
    ``synchronize()`` (CUDA runs asynchronously; CPU ops are synchronous)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps):
            run()
        synchronize()
        times.append((time.perf_counter() - start) / max(steps, 1))  # steps 0: a warm-up of nothing
    return times


def autocast(args):
    """The forward pass's context: autocast to bfloat16 with --amp, else float32 as it is."""
    return torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=args.amp)


def on_device(module: nn.Module, x: torch.Tensor, args) -> tuple[nn.Module, torch.Tensor]:
    """``module`` and ``x`` on --device, channels-last unless --no-channels-last."""
    module, x = module.to(args.device), x.to(args.device)
    if args.channels_last:
        module, x = module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return module, x


def bench_train(args) -> dict:
    module, x, forward, labels = make_part(args)
    module, x = on_device(module, x, args)
    module.train()
    if args.part == "model":
        opt = sgd(module)
        labels = labels.to(args.device)

        def run():
            opt.zero_grad(set_to_none=True)
            with autocast(args):
                loss = F.cross_entropy(forward(module, x), labels, ignore_index=IGNORE_LABEL)
            loss.backward()
            opt.step()
    else:
        if args.part == "deconv":
            x.requires_grad_(True)  # mid-network, the deconvolution's input gradient is needed too

        def run():
            module.zero_grad(set_to_none=True)
            x.grad = None
            with autocast(args):
                out = forward(module, x)
                total = sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,)))
            total.backward()

    return time_it(run, args)


def bench_infer(args) -> dict:
    module, x, forward, _ = make_part(args)
    module, x = on_device(module, x, args)
    module.eval()

    def run():
        with torch.inference_mode(), autocast(args):
            forward(module, x)

    return time_it(run, args)


def time_it(run, args) -> dict:
    synchronize = (lambda: torch.cuda.synchronize(args.device)) if args.device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    run()
    synchronize()
    first = time.perf_counter() - start
    timed(run, 1, max(args.warmup - 1, 0), synchronize)
    return {"first_step_s": first, "step_s": timed(run, args.reps, args.steps, synchronize)}


def summarize(result: dict, batch_size: int) -> dict:
    median = statistics.median(result["step_s"])
    return {**result, "step_s_median": median, "step_s_min": min(result["step_s"]),
            "step_s_max": max(result["step_s"]), "images_per_s": batch_size / median}


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def size_arg(values: list[int]) -> tuple[int, int]:
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--size takes one or two positive ints, got {values}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", choices=sorted(RESNET_SPECS))
    parser.add_argument("--kernel-size", type=int, default=15, help="k of the GCN heads (odd)")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--no-br", action="store_true", help="without the Boundary Refinement blocks")
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="H [W] of the images")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--part", default="model", choices=["model", "backbone", "deconv"])
    parser.add_argument("--mode", default="both", choices=["train", "infer", "both"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one included)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions")
    parser.add_argument("--steps", type=int, default=3, help="steps per repetition")
    parser.add_argument("--threads", type=int, default=available_cores(),
                        help="torch.set_num_threads (default: the cores this process may use)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory format for model and inputs (default; --no-channels-last: NCHW)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--amp", action="store_true",
                        help="autocast the forward pass and loss to bfloat16 (automatic mixed precision)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.size = size_arg(args.size)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if min(args.reps, args.steps, args.threads) < 1 or args.warmup < 0:
        parser.error("--reps, --steps and --threads must be >= 1, --warmup >= 0")
    try:
        args.device = torch.device(args.device)  # from here on a torch.device (its str in the JSON)
    except RuntimeError as e:
        parser.error(f"--device {args.device!r}: {e}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    return args


def device_name(args) -> str:
    if args.device.type == "cuda":
        return torch.cuda.get_device_name(args.device)
    return platform.processor() or platform.machine()


def peak_memory(args) -> tuple[float, str]:
    """(peak bytes, what was measured), as train_step.py reports it."""
    if args.device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(args.device)), "device max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "process peak RSS"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = {}
    try:
        if args.mode in ("train", "both"):
            results["train"] = bench_train(args)
        if args.mode in ("infer", "both"):
            results["infer"] = bench_infer(args)
    except torch.OutOfMemoryError as e:
        print(f"torch_peer.py: out of memory on {args.device} at --batch {args.batch} (try a smaller --batch): "
              f"{str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(EXIT_OUT_OF_MEMORY)
    results = {k: summarize(v, args.batch) for k, v in results.items()}
    memory, memory_source = peak_memory(args)
    layout = "channels-last" if args.channels_last else "NCHW"
    what = {"model": "GCNSegmentation", "backbone": "ResNet alone", "deconv": "one x2 deconvolution"}[args.part]
    print(f"torch {torch.__version__} {what}: {args.backbone} gcn k={args.kernel_size}, {args.num_classes} classes, "
          f"BR {'off' if args.no_br else 'on'}, batch {args.batch} of {args.size}, "
          f"{'bfloat16 autocast' if args.amp else 'float32'}, {layout}; {args.threads} threads, {device_name(args)}")
    print(f"{'':<6} {'images/s':>9} {'step ms':>10} {'min-max ms':>15} {'first s':>8}")
    for name, r in results.items():
        print(f"{name:<6} {r['images_per_s']:>9.2f} {1e3 * r['step_s_median']:>10.1f} "
              f"{1e3 * r['step_s_min']:>7.1f}-{1e3 * r['step_s_max']:<7.1f} {r['first_step_s']:>8.2f}")
    print(f"peak memory {memory / 2**20:.0f} MiB ({memory_source}); "
          f"median of {args.reps} x {args.steps} steps after {args.warmup} warm-up")
    if args.json:
        settings = {k: str(v) if k == "device" else v for k, v in vars(args).items() if k != "json"}
        with open(args.json, "w") as f:
            json.dump({"framework": "torch", "torch_version": torch.__version__, "settings": settings,
                       "device": device_name(args), "num_threads": args.threads, "peak_memory_bytes": memory,
                       "memory_source": memory_source, **results}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
