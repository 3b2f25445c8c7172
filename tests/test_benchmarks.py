"""benchmarks/layers.py runs and reports each rewritten layer beside the form it replaces, and
benchmarks/cpu_breakdown.py sorts a program's CPU time by where it went (the figures themselves are for the
README, never asserted)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layers_benchmark_prints_both_forms_of_each_layer():
    out = subprocess.run([sys.executable, "-m", "benchmarks.layers", "--batch", "1", "--kernel-size", "3",
                          "--reps", "1", "--iters", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    layer = re.compile(r"\s*(line_conv|max_pool|conv|stem|pointwise) ")
    rows = [line.split() for line in out.stdout.splitlines() if layer.match(line)]
    pairs = {(r[0], r[2]) for r in rows}
    assert pairs == {("line_conv", "LineConv"), ("line_conv", "nn.Conv"), ("max_pool", "ours"),
                     ("max_pool", "nn.max_pool"), ("conv", "Conv"), ("conv", "nn.Conv"), ("stem", "Conv"),
                     ("stem", "nn.Conv"), ("pointwise", "ours"), ("pointwise", "einsum")}
    # 4 stages x 2 orientations, the max-pool; 3x3: 4 + 3 strided + 2 BR; the 7x7 stem; 1x1: 6
    assert len(rows) == 2 * 8 + 2 + 2 * 9 + 2 + 2 * 6
    for r in rows:  # ms per call, forward and forward + backward
        assert float(r[3]) > 0 and float(r[5]) > 0


# `perf report --stdio --no-children -n --sort sym` lines as this project's programs give them (AMD EPYC,
# jaxlib 0.12, oneDNN's kernels named through ONEDNN_JIT_PROFILE=2), one or two per category, below perf's header.
SAMPLED = [  # (samples, [.] user or [k] kernel, symbol)
    (4230, ".", "ynn::dot_fp32_5x64x1_1x16x1_avx512"),
    (1900, ".", "jit_brgemm_kernel_t.54"),
    (316, ".", "jit_uni_reorder_kernel_f32.58"),
    (291, ".", "std::_Function_handler<void (long, long), dnnl::impl::cpu::x64::jit_uni_reorder_t::omp_driver_2d("
               "int, int, int, char const*, char*, void const*, void const*, int, int, int*) const::$_0>::_M_invoke"),
    (93, ".", "dnnl::impl::cpu::x64::brgemm_1x1_convolution_fwd_t<(dnnl::impl::cpu::x64::cpu_isa_t)880>::exec_ker"),
    (5248, ".", "jit_avx512_common_gemm_f32_xbyak_gemm.9"),
    (3079, ".", "Eigen::internal::gemm_pack_colmajor_block<float, long, Eigen::internal::TensorContractionSubMapper<"
                "float, long, 0, Eigen::TensorEvaluator<Eigen::TensorReshapingOp<Eigen::DSizes<long, 2> const, "
                "Eigen::TensorImagePatchOp<-1l, -1l, Eigen::TensorMap<Eigen::Tensor<float const, 4, 1, long>, 16, "
                "Eigen::MakePointer> const> const> const, Eigen::ThreadPoolDevice>, Eigen::array<long, 1ul>, "
                "Eigen::array<long, 1ul>, 8, true, false, 0, Eigen::MakePointer>, 0>::operator()"),
    (372, ".", "ynn::sum_kn_fp32_avx512"),
    (102, ".", "0x00007f08c01970ec"),
    (184, "k", "clear_page_erms"),
    (144, ".", "_int_malloc"),
    (245, ".", "Eigen::ThreadPoolTempl<tsl::thread::EigenEnvironment>::GlobalSteal"),
    (6, ".", "PyObject_GetAttr"),
]
PERF_REPORT = "# Samples: 17K of event 'cpu-clock'\n# Overhead       Samples  Symbol\n#\n" + "".join(
    f"    {100 * n / 16210:5.2f}%  {n:12d}  [{mark}] {symbol}\n" for n, mark, symbol in SAMPLED)


def test_cpu_breakdown_sorts_perf_s_symbols_into_libraries_and_roles():
    from benchmarks import cpu_breakdown as cb

    assert cb.parse_report(PERF_REPORT) == {
        "YNNPACK matrix products": 4230, "oneDNN convolutions": 1900 + 93, "oneDNN weight reorders": 316 + 291,
        "GEMM of Eigen's contractions and convolutions": 5248, "Eigen's packing of GEMM blocks and patches": 3079,
        "YNNPACK other (reductions, element-wise)": 372, "XLA's compiled loops (fusions)": 102,
        "kernel (page faults, scheduling)": 184, "memory allocation and copies": 144,
        "thread pools and runtime": 245, "other": 6}


def test_cpu_breakdown_gives_shares_of_the_cores_time_and_cpu_ms_per_step():
    from benchmarks import cpu_breakdown as cb

    # 2 cores sampled for 2 s at RATE/s: 4 * RATE samples possible; a step took 0.25 s
    r = cb.summarize({"a": 2 * cb.RATE, "b": cb.RATE}, steps=8, step_s=0.25, seconds=2, cores=2)
    cats = r["categories"]
    assert cats["a"]["share"] == 0.5 and cats["b"]["share"] == 0.25 and cats["idle"]["share"] == 0.25
    # a: 2 * RATE samples in 2 s, one core's whole time, so 250 CPU ms in each 250 ms step
    assert cats["a"]["cpu_ms_per_step"] == pytest.approx(250) and cats["idle"]["cpu_ms_per_step"] == pytest.approx(125)
    assert (r["samples"], r["steps"]) == (3 * cb.RATE, 8)
    # more samples than rate x seconds x cores (perf ran a little longer): nothing idle, shares sum to 1
    over = cb.summarize({"a": 5 * cb.RATE}, steps=1, step_s=1.0, seconds=2, cores=2)["categories"]
    assert over["a"]["share"] == 1 and over["idle"]["share"] == 0


def _train_step(*args, env=None):
    return subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--config", "configs/synthetic.py",
                           "--config.crop_size=64,64", "--config.global_batch_size=2", "--reps", "1", "--steps",
                           "1", "--warmup", "1", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)


def test_cpu_breakdown_without_perf_is_an_error_that_says_what_to_install():
    r = _train_step("--cpu_breakdown", "1", env={**os.environ, "PATH": "/nonexistent"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: --cpu_breakdown samples the process with Linux perf, which is not on PATH" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("perf") is None, reason="Linux perf is not installed")
def test_cpu_breakdown_names_onednn_s_kernels_in_the_inference_program(tmp_path):
    from gcn_jax import xla_flags

    probe = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", str(tmp_path / "probe.data"), "--", "true"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("perf may not sample here: " + probe.stderr[-300:])
    if xla_flags.ONEDNN not in xla_flags.forward_options("cpu"):
        pytest.skip("this jaxlib's inference programs do not call oneDNN")
    out = tmp_path / "bench.json"
    r = _train_step("--cpu_breakdown", "3", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())
    for mode in ("train", "infer"):
        b = figures[mode]["cpu_breakdown"]
        assert b["steps"] > 0 and b["samples"] > 0
        assert f"{mode}: CPU time by where it went" in r.stdout
    # The inference program's convolutions are oneDNN's kernels, named through the map oneDNN writes
    # (ONEDNN_JIT_PROFILE=2), which must outlive the training program's breakdown: without names they count as
    # XLA's own loops, and only oneDNN's compiled driver code (2% of the samples at this size) as its
    # convolutions. Named, they took 17-60% of the cores here, depending on what else ran (pytest's other worker).
    infer = figures["infer"]["cpu_breakdown"]["categories"]
    assert infer["oneDNN convolutions"]["share"] > 0.05, infer
    # training's convolutions are Eigen's, whose GEMM is a oneDNN kernel named through the same map
    train = figures["train"]["cpu_breakdown"]["categories"]
    assert train["GEMM of Eigen's contractions and convolutions"]["share"] > 0.05, train


LINEAR = lambda b: 3e9 + 1.5e9 * b  # noqa: E731  (bytes per device at batch b: state + activations)


@pytest.mark.parametrize("bytes_at, limit, step", [
    (LINEAR, 100e9, 1), (LINEAR, 100e9, 8), (LINEAR, 4.5e9, 1), (LINEAR, 1e15, 2),
    (lambda b: 3e9 + 1.5e9 * b + 0.004e9 * b * b, 100e9, 1),  # faster than linear
    (lambda b: 3e9 + 4e9 * b ** 0.7, 100e9, 1),  # slower
    (lambda b: 3e9 + 1.5e9 * b + (20e9 if b > 30 else 0), 100e9, 1),  # a jump (another algorithm's workspace)
    (lambda b: math.inf if b > 40 else LINEAR(b), 100e9, 1),  # beyond 40 the compiler runs out of memory
    (LINEAR, 1e15, 3),  # 3 devices: the cap (4096) is no multiple of 3
], ids=["linear", "linear-8-devices", "one-fits", "capped", "superlinear", "sublinear", "jump", "compile-oom",
        "3-devices"])
def test_the_batch_search_finds_the_largest_batch_that_fits(bytes_at, limit, step):
    from benchmarks import fit_batch

    tried = []
    found = fit_batch.largest_fitting(lambda b: tried.append(b) or bytes_at(b), limit, step, most=4096)
    fitting = [b for b in range(step, 4097, step) if bytes_at(b) <= limit]
    assert found == max(fitting) and found % step == 0
    assert len(tried) == len(set(tried)) <= 9  # each batch compiled once; 6 with a jump, 8 sublinear, 9 with OOM
    if bytes_at is LINEAR and found < 4096:
        assert len(tried) <= 4  # 1 and 2 per device, the line's estimate and the batch above it


def test_the_batch_search_when_one_image_per_device_does_not_fit_is_an_error():
    from benchmarks import fit_batch
    from gcn_jax import errors

    with pytest.raises(errors.InputError, match="even 4 image.s., one per device"):
        fit_batch.largest_fitting(LINEAR, 8e9, 4)


def test_the_batch_fit_compiles_the_train_step_and_keeps_within_the_limit(tmp_path):
    # On the tests' 4 CPU devices, with a limit halfway between the train step's bytes at 1 and 2 images per
    # device: XLA's memory analysis counts the state, the batch and the temporaries, and the fit is 4 images.
    import jax

    from benchmarks import fit_batch
    from gcn_jax import errors, parallel
    from gcn_jax.training import optimizer, state as state_lib
    from tests.tiny_run import tiny_config

    config, mesh = tiny_config(str(tmp_path)), parallel.make_mesh()
    one, two = (fit_batch.train_step_bytes(config, mesh, b) for b in (4, 8))
    state = state_lib.train_state_shapes(config, mesh, optimizer.make_optimizer(config.optimizer,
                                                                                config.num_train_steps))
    assert one > sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert two - one >= 48 * 48 * 5  # one more image per device: its uint8 pixels, label and mask
    batch, record = fit_batch.fit(config, mesh, 1.0, limit=(one + two) / 2)
    assert batch == 4 and record["bytes_per_device"] == {4: one, 8: two}
    assert fit_batch.fit(config, mesh, 0.5, limit=2 * two)[0] == 8  # the fraction applies to the limit
    with pytest.raises(errors.InputError, match="even 4 image.s., one per device"):
        fit_batch.fit(config, mesh, 1.0, limit=one / 2)


@pytest.mark.parametrize("args, message", [
    (["--fit_batch"], "error: --fit_batch needs the device's memory limit, which cpu does not report"),
    (["--fit_batch", "--fit_memory_fraction", "1.5"], "error: --fit_memory_fraction=1.5: expected a share in (0, 1]"),
    (["--fit_batch", "--part", "backbone"],
     "error: --fit_batch fits the whole model's train step, not --part backbone's"),
], ids=["cpu", "fraction", "part"])
def test_fit_batch_errors_say_what_was_expected(args, message):
    r = _train_step(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr


def test_fit_batch_ignores_a_config_batch_that_does_not_suit_the_devices():
    # The search sets the batch, so the config's (2) on 4 devices is no error: the run gets as far as the search.
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}
    r = _train_step("--fit_batch", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: --fit_batch needs the device's memory limit" in r.stderr, r.stderr[-2000:]
