"""gcn_jax against its PyTorch peer in one run: benchmarks/train_step.py and benchmarks/torch_peer.py with the
same settings, run alternately as subprocesses for --rounds rounds; a table per mode of each side's images/s
(median over rounds, and the range), the ratio of the two medians and the paired ratio (the median over rounds
of each round's JAX / torch, which a drift of the machine from round to round moves less).

    python benchmarks/compare_torch.py                     # resnet50, GCN k=15, BR on, 21 classes, 256², batch 2
    python benchmarks/compare_torch.py --part backbone --mode train --rounds 5
    python benchmarks/compare_torch.py --backbone resnet18 --size 64 --reps 2 --steps 1 --rounds 1
    python benchmarks/compare_torch.py --torch-args="--no-channels-last --threads 1" -- --peak=1e11
    python benchmarks/compare_torch.py --device cuda --amp --fit-batch --backbone resnet152 --size 512 --rounds 1

The JAX side is `train_step.py --config configs/voc.py` with --config.model.backbone, .kernel_size,
.num_classes, .use_br, --config.crop_size and --config.global_batch_size set from the flags here (float32, or
bfloat16 with --amp; SGD with momentum 0.9 and weight decay, as the torch side); arguments after `--` are added
to its command line (e.g. more --config overrides; not model.backbone_width, which the peer does not have).
XLA's environment (XLA_FLAGS) is inherited. --torch-args go to torch_peer.py. Both sides run with the same C
library settings: where gcn_jax's commands would ask glibc for huge pages (`gcn_jax.huge_pages`;
GCN_JAX_HUGE_PAGES=0: not), both sides get GLIBC_TUNABLES with glibc.malloc.hugetlb=1, and the table says so.
Rounds alternate which side starts (JAX-torch, torch-JAX, ...), so a slow drift of the machine touches both
alike; run it on a quiet machine. Each run is a fresh process with its own warm-up (--warmup, --reps, --steps
as in train_step.py). torch is optional: `pip install -r requirements-bench.txt`.

On a GPU: --device cuda runs the peer there (JAX uses the GPU it finds); --amp makes the comparison bfloat16
(`--config.model.dtype=bfloat16` against the peer's autocast to bfloat16); --fit-batch runs the first JAX side
with train_step.py's --fit_batch (the largest batch that fits the GPU's memory) and every later run, torch's
included, with the batch it found (--batch is then ignored). Where the peer runs out of memory (exit code 4),
its runs halve their batch until one fits, and the table names both batches. Each run's printed output shows as
it comes; its messages (stderr) where it fails.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from gcn_jax import huge_pages  # noqa: E402 (gcn_jax from this checkout)

TORCH_OUT_OF_MEMORY = 4  # torch_peer.EXIT_OUT_OF_MEMORY (that file imports torch, which this one does not need)


class PeerOutOfMemory(Exception):
    pass


def jax_command(args, json_path: str, extra: list[str]) -> list[str]:
    h, w = args.size
    return [sys.executable, os.path.join(HERE, "train_step.py"), "--config", os.path.join(ROOT, "configs", "voc.py"),
            f"--config.model.backbone={args.backbone}", f"--config.model.kernel_size={args.kernel_size}",
            f"--config.model.num_classes={args.num_classes}", f"--config.model.use_br={not args.no_br}",
            f"--config.crop_size={h},{w}", f"--config.global_batch_size={args.batch}", f"--part={args.part}",
            f"--mode={args.mode}", f"--warmup={args.warmup}", f"--reps={args.reps}", f"--steps={args.steps}",
            f"--json={json_path}", *(["--config.model.dtype=bfloat16"] if args.amp else []), *extra]


def torch_command(args, json_path: str) -> list[str]:
    h, w = args.size
    return [sys.executable, os.path.join(HERE, "torch_peer.py"), "--backbone", args.backbone,
            "--kernel-size", str(args.kernel_size), "--num-classes", str(args.num_classes), "--size", str(h), str(w),
            "--batch", str(args.torch_batch or args.batch), "--part", args.part, "--mode", args.mode,
            "--warmup", str(args.warmup), "--reps", str(args.reps), "--steps", str(args.steps), "--json", json_path,
            "--device", args.device, *(["--amp"] if args.amp else []), *(["--no-br"] if args.no_br else []),
            *shlex.split(args.torch_args)]


def run_side(name: str, command: list[str], json_path: str, env: dict[str, str]) -> dict:
    """Run one benchmark process in ``env``, its stdout shown as it comes; return its JSON. Raises
    `PeerOutOfMemory` when the peer runs out of memory."""
    print(f"$ {shlex.join(command)}", flush=True)
    proc = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**env, "PYTHONUNBUFFERED": "1"})
    if name == "torch" and proc.returncode == TORCH_OUT_OF_MEMORY:
        raise PeerOutOfMemory((proc.stderr.strip().splitlines() or ["torch_peer.py: out of memory"])[-1])
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(json_path) as f:
        return json.load(f)


def run_peer(args, json_path: str, env: dict[str, str]) -> dict:
    """The peer's run; out of memory, again with half the batch (``args.torch_batch``) until one fits."""
    while True:
        try:
            return run_side("torch", torch_command(args, json_path), json_path, env)
        except PeerOutOfMemory as e:
            batch = args.torch_batch or args.batch
            if batch == 1:
                sys.exit(f"torch ran out of memory even with one image: {e}")
            args.torch_batch = batch // 2
            print(f"== {e}\n== torch's runs from here on: batch {args.torch_batch}", flush=True)


def summary(rounds: list[dict]) -> dict:
    """Per mode: each side's images/s median and range over rounds, the ratio of the medians, and each round's
    ratio with their median (the paired ratio)."""
    out = {}
    for mode in ("train", "infer"):
        if mode not in rounds[0]["jax"]:
            continue
        row = {}
        for side in ("jax", "torch"):
            values = [r[side][mode]["images_per_s"] for r in rounds]
            row[side] = {"images_per_s": statistics.median(values), "min": min(values), "max": max(values),
                         "rounds": values}
        row["ratio_jax_over_torch"] = row["jax"]["images_per_s"] / row["torch"]["images_per_s"]
        row["round_ratios"] = [j / t for j, t in zip(row["jax"]["rounds"], row["torch"]["rounds"])]
        row["paired_ratio"] = statistics.median(row["round_ratios"])
        out[mode] = row
    return out


def size_pair(values: list[int]) -> tuple[int, int]:
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--size takes one or two positive ints, got {values}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def parse_args(argv):
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50",
                        choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
    parser.add_argument("--kernel-size", type=int, default=15)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--no-br", action="store_true", help="without the Boundary Refinement blocks")
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="H [W]")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--part", default="model", choices=["model", "backbone", "deconv"])
    parser.add_argument("--mode", default="both", choices=["train", "infer", "both"])
    parser.add_argument("--rounds", type=int, default=3, help="JAX + torch runs, alternating who starts")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="the peer's torch device (cuda on a GPU)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 on both sides (the peer: autocast)")
    parser.add_argument("--fit-batch", action="store_true",
                        help="the first JAX run finds the largest batch that fits (train_step.py --fit_batch); "
                             "every run uses it")
    parser.add_argument("--torch-args", default="", help="more arguments for torch_peer.py, e.g. '--no-channels-last'")
    parser.add_argument("--json", help="also write the rounds and the summary to this JSON file")
    args = parser.parse_args(argv)
    args.torch_batch = None  # the peer's batch where it differs from the JAX side's (out of memory)
    try:
        args.size = size_pair(args.size)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.fit_batch and args.part != "model":
        parser.error(f"--fit-batch fits the whole model's train step, not --part {args.part}'s")
    if any(a.startswith("--config.model.backbone_width") for a in extra):
        parser.error("--config.model.backbone_width: the torch peer is the standard ResNet (width 64) only, so the "
                     "comparison would not be like for like")
    return args, extra


def main(argv=None):
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)  # gcn_jax from this checkout
    env = {**huge_pages.environment(os.environ), "PYTHONPATH": path}  # the same for both sides
    tunables = env.get("GLIBC_TUNABLES", "")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            paths = {side: os.path.join(tmp, f"{side}_{r}.json") for side in ("jax", "torch")}
            order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
            result = {}
            for side in order:
                fit = side == "jax" and args.fit_batch and r == 0  # the first run: round 1 starts with JAX
                print(f"\n== round {r + 1}/{args.rounds}: {side}", flush=True)
                if side == "jax":
                    command = jax_command(args, paths["jax"], [*extra, *(["--fit_batch"] if fit else [])])
                    result[side] = run_side(side, command, paths[side], env)
                else:
                    result[side] = run_peer(args, paths[side], env)
                if fit:
                    args.batch = result[side]["config"]["global_batch_size"]
                    print(f"== every run from here on: batch {args.batch}, the largest that fits", flush=True)
            rounds.append(result)
    table = summary(rounds)
    h, w = args.size
    print(f"\n{args.part}: {args.backbone} gcn k={args.kernel_size}, {args.num_classes} classes, BR "
          f"{'off' if args.no_br else 'on'}, batch {args.batch}"
          f"{f' (torch {args.torch_batch}: out of memory at more)' if args.torch_batch else ''} of {h}x{w}, "
          f"{'bfloat16' if args.amp else 'float32'}, "
          f"torch on {args.device}; images/s, median (min-max) "
          f"over {args.rounds} round(s); GLIBC_TUNABLES={tunables or '(none)'} for both")
    print(f"{'':<6} {'JAX':>22} {'torch':>22} {'JAX/torch':>10} {'paired':>7}")
    for mode, row in table.items():
        cells = [f"{row[s]['images_per_s']:.2f} ({row[s]['min']:.2f}-{row[s]['max']:.2f})" for s in ("jax", "torch")]
        print(f"{mode:<6} {cells[0]:>22} {cells[1]:>22} {row['ratio_jax_over_torch']:>10.2f} "
              f"{row['paired_ratio']:>7.2f}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        with open(args.json, "w") as f:
            json.dump({"settings": {**settings, "jax_extra_args": extra, "glibc_tunables": tunables},
                       "summary": table, "rounds": rounds}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
