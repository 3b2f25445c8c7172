"""Speed of a config's model on the devices present: training and inference images/s, step time, compile
time, XLA's FLOPs per image, achieved FLOP/s and MFU, peak memory. Prints a table; --json writes the figures.

    python -m benchmarks.train_step --config configs/synthetic.py
    python -m benchmarks.train_step --config configs/voc.py --config.model.backbone=resnet50 \\
        --config.crop_size=256,256 --config.global_batch_size=2 --reps 5 --steps 3

The batch is random images and labels of the config's crop size and global batch (no input pipeline: this
measures the device step; benchmarks/input_pipeline.py measures the data). Compilation and --warmup steps are
left out; then --reps timed repetitions of --steps steps each, every repetition ending when the device is
done; the median step time and the spread (min-max) over repetitions are reported.

--part locates a gap (benchmarks/torch_peer.py --part is its PyTorch peer): `model` (default) times the
config's network (training: the train step with loss, gradients and optimizer update), `backbone` its ResNet
alone (training: forward and backward of the sum of the four stage outputs, BN in training mode), `deconv` one
x2 deconvolution of config.model.num_classes channels from ceil(H/2) x ceil(W/2) to the crop size H x W, the
network's last one (training: forward and backward of the sum of its output, gradients of kernel and input).
Inference is the forward pass in each case, compiled with the options evaluation gets
(`gcn_jax.xla_flags.forward_options()`).

FLOPs come from XLA's cost analysis of the step's program as traced, before compilation: the whole batch's
arithmetic, on any number of devices, and counted also where the compiler hands operations to a library that its
cost analysis does not see (the inference programs' oneDNN convolutions, `gcn_jax.xla_flags.FORWARD_OPTIONS`). MFU
divides the achieved FLOP/s by a peak: --peak (FLOP/s per device) if given; else, on CPU, a float32 matmul
measured here (the best of several 2048x2048 products per core-set XLA uses); else the nominal datasheet peak of
a known accelerator for the compute dtype (`NOMINAL_PEAKS`). Peak memory is the device's `memory_stats()`
where it has them (GPU, TPU), else the process's peak resident memory (CPU).

--fit_batch replaces config.global_batch_size with the largest multiple of the device count (times
`grad_accum_steps`) whose train step fits in --fit_memory_fraction of each device's memory
(`memory_stats()["bytes_limit"]`, which GPUs and TPUs report; on CPU it is an error): the bytes per device are
XLA's memory analysis of the compiled train step (arguments, outputs not donated, temporaries), so the search
compiles but runs no step (`benchmarks/fit_batch.py`). It compiles at 1 and 2 images per device (and
micro-batch), follows the straight line through the last two batches tried, and checks its estimate and the
next batch up (a secant search inside the bracket found so far): about four compilations when memory grows
linearly with the batch. Inference is then timed at the same batch.
"""

import json
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from gcn_jax import cli, errors, parallel, xla_flags
from gcn_jax.images import model_input, size_pair
from gcn_jax.models import build_model
from gcn_jax.models.blocks import Deconv2x
from gcn_jax.models.resnet import ResNet
from gcn_jax.training import optimizer, state as state_lib
from gcn_jax.training.config_checks import check_config

try:
    from benchmarks import cpu_breakdown, fit_batch
except ImportError:  # run as a script (compare_torch.py runs it so): this file's folder is on sys.path
    import cpu_breakdown
    import fit_batch

cli.define_config_flag("Config file (configs/*.py); any --config.KEY=VALUE override applies.")
flags.DEFINE_integer("warmup", 2, "Steps run after compilation and before timing.")
flags.DEFINE_integer("reps", 5, "Timed repetitions.")
flags.DEFINE_integer("steps", 3, "Steps per repetition.")
flags.DEFINE_float("peak", None, "Peak FLOP/s of one device for the MFU (default: measured on CPU, nominal else).")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
flags.DEFINE_enum("mode", "both", ["train", "infer", "both"], "What to time.")
flags.DEFINE_enum("part", "model", ["model", "backbone", "deconv"], "The whole model, its ResNet alone, or one "
                  "x2 deconvolution to the crop size (see the module docstring).")
flags.DEFINE_float("cpu_breakdown", 0, "Then sample each timed program for this many seconds with Linux perf "
                   "and print where its CPU time went (benchmarks/cpu_breakdown.py); 0: not.")
flags.DEFINE_bool("fit_batch", False, "Time at the largest global batch whose train step fits the devices' memory "
                  "(GPU/TPU; see the module docstring) instead of config.global_batch_size.")
flags.DEFINE_float("fit_memory_fraction", 0.9, "--fit_batch: the share of each device's memory limit the train "
                   "step may take (the rest: the allocator's fragmentation, library workspaces).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

# Dense datasheet peaks per device, FLOP/s: (float32 without tensor cores, bfloat16 with them).
NOMINAL_PEAKS = {
    "NVIDIA H200": (67e12, 989e12),
    "NVIDIA H100": (67e12, 989e12),
    "NVIDIA A100": (19.5e12, 312e12),
    "NVIDIA L4": (30.3e12, 121e12),
    "TPU v4": (None, 275e12),
    "TPU v5 lite": (None, 197e12),
    "TPU v5": (None, 459e12),
    "TPU v6 lite": (None, 918e12),
}


def flops_of(lowered) -> float:
    """XLA's FLOP count of a lowered program (the global one, all devices together)."""
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def timed(run, reps: int, steps: int) -> list[float]:
    """Seconds per step of ``reps`` repetitions of ``steps`` calls of ``run`` (which returns what to wait on)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps):
            out = run()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / max(steps, 1))  # steps 0: a warm-up of nothing
    return times


def measured_cpu_peak(n: int = 2048, tries: int = 5) -> float:
    """FLOP/s of the best of ``tries`` float32 n x n matmuls on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = min(timed(lambda: matmul(a), tries, 3))
    return 2 * n ** 3 / best


def peak_flops(dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where it comes from)."""
    if FLAGS.peak:
        return FLAGS.peak, "--peak"
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measured_cpu_peak(), "float32 2048² matmul measured here"
    for name, (f32, bf16) in NOMINAL_PEAKS.items():
        if device.device_kind.startswith(name):
            return (bf16 if dtype == "bfloat16" else f32), f"nominal {name} {dtype}"
    return None, f"unknown for {device.device_kind}: pass --peak"


def peak_memory() -> tuple[float, str]:
    """(peak bytes, what was measured)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "process peak RSS"


def random_batch(config, mesh) -> dict:
    """Random images and labels of `fit_batch.batch_shapes`, all pixels valid, on the mesh."""
    rng, shapes = np.random.default_rng(0), fit_batch.batch_shapes(config, config.global_batch_size)
    batch = {"image": rng.integers(0, 256, *shapes["image"]),
             "label": rng.integers(0, config.model.num_classes, *shapes["label"]),
             "mask": np.ones(*shapes["mask"])}
    return parallel.global_batch(mesh, batch)


def compiled_and_timed(fn, args: tuple, run=None) -> dict:
    """Compile ``fn`` for ``args``, run --warmup steps, then time --reps x --steps; ``run(compiled)`` makes the
    call to time (default: ``compiled(*args)``)."""
    start = time.perf_counter()
    lowered = fn.lower(*args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    call = run(compiled) if run else (lambda: compiled(*args))
    timed(call, 1, FLAGS.warmup)
    result = {"compile_s": compile_s, "flops_per_step": flops_of(lowered),
              "step_s": timed(call, FLAGS.reps, FLAGS.steps)}
    if FLAGS.cpu_breakdown > 0:
        result["cpu_breakdown"] = cpu_breakdown.sample(call, FLAGS.cpu_breakdown, len(os.sched_getaffinity(0)))
    return result


def bench_train(config, mesh, batch) -> dict:
    step, tx = fit_batch.train_step(config, mesh)
    state = state_lib.create_train_state(config, mesh, tx)
    holder = {"state": state}  # the state is donated: each call takes the previous call's

    def run(compiled):
        def call():
            holder["state"], metrics = compiled(holder["state"], batch)
            return metrics["loss"]
        return call

    return compiled_and_timed(step, (state, batch), run)


def bench_infer(config, mesh, batch) -> dict:
    model = build_model(config.model)
    variables = state_lib.create_train_state(config, mesh, optimizer.make_optimizer(
        config.optimizer, config.num_train_steps)).variables()
    images = {k: batch[k] for k in ("image", "mask")}

    def logits(variables, images):  # uint8 in, normalised on the device, as evaluation does
        return model.apply(variables, model_input(images["image"], images["mask"]))

    apply = jax.jit(logits, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                    out_shardings=parallel.batch_sharded(mesh), compiler_options=xla_flags.forward_options())
    return compiled_and_timed(apply, (variables, images))


def part_of(config):
    """For --part backbone / deconv: (init(key, x) -> variables, apply(variables, x, train) -> (outputs, BN
    updates), input shape, whether the input's gradient is taken)."""
    height, width = size_pair(config.crop_size, "crop_size")
    batch, dtype = config.global_batch_size, jnp.dtype(config.model.dtype)
    if FLAGS.part == "backbone":
        module = ResNet(config.model.backbone, config.model.frozen_bn, dtype, config.model.backbone_width)

        def apply(variables, x, train):
            if train:
                return module.apply(variables, x, train=True, mutable=["batch_stats"])
            return module.apply(variables, x), {}

        return module.init, apply, (batch, height, width, 3), False
    c = config.model.num_classes
    module = Deconv2x(c, config.model.deconv_kernel_size, dtype)
    return (lambda key, x: module.init(key, x, (height, width)),
            lambda variables, x, train: (module.apply(variables, x, (height, width)), {}),
            (batch, (height + 1) // 2, (width + 1) // 2, c), True)


def bench_part(config, mesh, train: bool) -> dict:
    """--part backbone / deconv: the forward pass, or forward and backward of the sum of the outputs."""
    init, apply, shape, input_grad = part_of(config)
    x = parallel.global_batch(mesh, {"x": np.random.default_rng(0).standard_normal(shape, np.float32)})["x"]
    variables = jax.tree.map(np.asarray, dict(jax.jit(init)(jax.random.key(config.seed), x[:1])))
    variables = parallel.replicate(mesh, variables)

    def train_step(variables, x):
        def loss_fn(params, x):
            out, updates = apply({**variables, "params": params}, x, True)
            return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(out)), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, argnums=(0, 1) if input_grad else 0, has_aux=True)(
            variables["params"], x)
        return loss, grads, updates

    step = train_step if train else (lambda variables, x: apply(variables, x, False)[0])
    fn = jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 compiler_options={} if train else xla_flags.forward_options())
    return compiled_and_timed(fn, (variables, x))


def summarize(result: dict, batch_size: int, num_devices: int, peak: float | None) -> dict:
    median = statistics.median(result["step_s"])
    achieved = result["flops_per_step"] / median
    return {**result, "step_s_median": median, "step_s_min": min(result["step_s"]),
            "step_s_max": max(result["step_s"]), "images_per_s": batch_size / median,
            "flops_per_image": result["flops_per_step"] / batch_size, "achieved_flops_per_s": achieved,
            "mfu": None if not peak else achieved / (peak * num_devices)}


def format_row(name: str, r: dict) -> str:
    mfu = "—" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    return (f"{name:<6} {r['images_per_s']:>9.2f} {1e3 * r['step_s_median']:>10.1f} "
            f"{1e3 * r['step_s_min']:>7.1f}-{1e3 * r['step_s_max']:<7.1f} {r['compile_s']:>9.1f} "
            f"{r['flops_per_image'] / 1e9:>11.2f} {r['achieved_flops_per_s'] / 1e9:>9.1f} {mfu:>6}")


def main(argv):
    cli.start(argv)
    config, mesh = FLAGS.config, parallel.make_mesh()
    if not 0 < FLAGS.fit_memory_fraction <= 1:
        raise errors.InputError(f"--fit_memory_fraction={FLAGS.fit_memory_fraction}: expected a share in (0, 1]")
    if FLAGS.fit_batch and FLAGS.part != "model":
        raise errors.InputError(f"--fit_batch fits the whole model's train step, not --part {FLAGS.part}'s")
    if FLAGS.fit_batch:  # the batch is the search's: the config's may not suit these devices
        with config.unlocked():
            config.global_batch_size = mesh.size * config.optimizer.grad_accum_steps
    check_config(config, mesh.size, jax.process_count(), "train")
    fitted = {}
    if FLAGS.fit_batch:
        batch_size, fitted = fit_batch.fit(config, mesh, FLAGS.fit_memory_fraction)
        with config.unlocked():
            config.global_batch_size = batch_size
    if FLAGS.cpu_breakdown > 0:
        cpu_breakdown.perf_path()  # perf is there, before anything is compiled
        cpu_breakdown.prepare()
    results = {}
    if FLAGS.part == "model":
        batch = random_batch(config, mesh)
        if FLAGS.mode in ("train", "both"):
            results["train"] = bench_train(config, mesh, batch)
        if FLAGS.mode in ("infer", "both"):
            results["infer"] = bench_infer(config, mesh, batch)
    else:
        for mode in ("train", "infer"):
            if FLAGS.mode in (mode, "both"):
                results[mode] = bench_part(config, mesh, mode == "train")
    peak, peak_source = peak_flops(str(config.model.dtype))
    results = {k: summarize(v, config.global_batch_size, mesh.size, peak) for k, v in results.items()}
    memory, memory_source = peak_memory()
    device = jax.devices()[0]
    part = {"model": "", "backbone": "ResNet alone: ", "deconv": "one x2 deconvolution: "}[FLAGS.part]
    print(f"{part}{config.model.backbone} {config.model.head} k={config.model.kernel_size}, "
          f"{config.model.num_classes} classes, batch {config.global_batch_size} of {size_pair(config.crop_size)}, "
          f"{config.model.dtype}; {mesh.size} x {device.device_kind}")
    print(f"{'':<6} {'images/s':>9} {'step ms':>10} {'min-max ms':>15} {'compile s':>9} {'GFLOP/img':>11} "
          f"{'GFLOP/s':>9} {'MFU':>6}")
    for name, r in results.items():
        print(format_row(name, r))
    peak_text = "unknown" if peak is None else f"{peak / 1e9:.1f} GFLOP/s per device"
    print(f"peak: {peak_text} ({peak_source}); peak memory {memory / 2**20:.0f} MiB ({memory_source}); "
          f"median of {FLAGS.reps} x {FLAGS.steps} steps after {FLAGS.warmup} warm-up")
    for name, r in results.items():
        if "cpu_breakdown" in r:
            print(cpu_breakdown.format_table(name, r["cpu_breakdown"]))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"config": json.loads(config.to_json_best_effort()), "device": device.device_kind,
                       "part": FLAGS.part, "num_devices": mesh.size, "peak_flops_per_device": peak,
                       "peak_source": peak_source, "peak_memory_bytes": memory, "memory_source": memory_source,
                       **({"fit_batch": fitted} if fitted else {}), **results}, f, indent=2)
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    cli.run(main)
