"""Where a program's CPU time goes, by sampling it with Linux `perf` while it runs in a loop
(`python -m benchmarks.train_step ... --cpu_breakdown SECONDS`).

`jax.profiler` traces mislead on CPU: XLA runs the train step's Eigen convolutions asynchronously, so their
events cover only their launch, and parallel loops show as gaps (README, "Performance"). `perf record` samples
this process's threads at a fixed rate while they run, so the samples in a function are the CPU time spent
there, and the samples missing from (rate x seconds x cores) are the time the cores did not run this process:
idle, or running something else (another process; the kernel too, where perf may sample user code only).

The samples are grouped by library and role (`CATEGORIES`, matched on the symbol `perf report` gives; a pattern
is a library's naming, so a kernel of the same library in another role lands in the same group: oneDNN's GEMM
as "Eigen's GEMM" also when oneDNN calls it itself). oneDNN writes a perf map of the kernels it generates when
``ONEDNN_JIT_PROFILE=2`` (set before its first kernel is generated: `prepare`), so its convolution and reorder
kernels get names; the code XLA compiles itself has none, so its loops (fusions) show as bare addresses and are
counted as such, with any other code that has no symbol.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import time

import jax

from gcn_jax import errors

RATE = 999  # samples per second per core (an odd rate does not beat with periodic work)
ONEDNN_PERF_MAP = ("ONEDNN_JIT_PROFILE", "2")  # oneDNN: write /tmp/perf-<pid>.map for its generated kernels

# (category, pattern on the symbol), first match wins; a kernel symbol (perf's "[k]") is 'kernel' before these.
CATEGORIES = (
    ("oneDNN weight reorders", re.compile(r"reorder")),
    ("Eigen's packing of GEMM blocks and patches", re.compile(r"gemm_pack")),
    ("GEMM of Eigen's contractions and convolutions", re.compile(r"gemm_f32|xbyak_gemm|sgemm")),
    ("oneDNN convolutions", re.compile(r"brgemm|brg_?conv|jit_\w*conv|dnnl::\S*conv")),
    ("YNNPACK matrix products", re.compile(r"^ynn::dot|ynn::run_dot")),
    ("YNNPACK other (reductions, element-wise)", re.compile(r"^ynn::")),
    ("XLA's compiled loops (fusions)", re.compile(r"^0x[0-9a-f]+$")),
    ("memory allocation and copies", re.compile(r"malloc|free|_int_|memmove|memcpy|memset|unlink_chunk|consolidate")),
    ("thread pools and runtime", re.compile(r"Eigen::|tsl::|slinky|xla::|std::|absl::")),
)
KERNEL = "kernel (page faults, scheduling)"
OTHER = "other"
IDLE = "idle"

_LINE = re.compile(r"^\s*\d+(?:\.\d+)?%\s+(\d+)\s+\[(.)\]\s+(.*?)\s*$")


def classify(symbol: str, kernel: bool = False) -> str:
    """The category of one sampled symbol (``kernel``: perf marked it as the kernel's)."""
    if kernel:
        return KERNEL
    for name, pattern in CATEGORIES:
        if pattern.search(symbol):
            return name
    return OTHER


def parse_report(text: str) -> dict[str, int]:
    """{category: samples} from the lines of `perf report --stdio --no-children -n --sort sym` (percent,
    samples, [.] or [k], symbol)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            category = classify(match.group(3), kernel=match.group(2) == "k")
            counts[category] = counts.get(category, 0) + int(match.group(1))
    return counts


def perf_path() -> str:
    """The `perf` executable, or an error that says how to get it."""
    path = shutil.which("perf")
    if path is None:
        raise errors.InputError("--cpu_breakdown samples the process with Linux perf, which is not on PATH: "
                                "install it (Debian/Ubuntu: the linux-perf or linux-tools package) or leave "
                                "the flag out")
    return path


def prepare(environ=os.environ) -> None:
    """Ask oneDNN for names of its generated kernels (before it generates any), in a map file that it keeps
    writing to and that is removed when the process ends."""
    environ.setdefault(*ONEDNN_PERF_MAP)
    atexit.register(_remove_perf_map)


def sample(call, seconds: float, cores: int) -> dict:
    """Run ``call()`` (which returns what to wait on) in a loop while perf samples this process for
    ``seconds``: `summarize` of the samples, the step time being the loop's (its time over its calls)."""
    perf = perf_path()
    with tempfile.TemporaryDirectory() as tmp:
        data, log = os.path.join(tmp, "perf.data"), os.path.join(tmp, "perf.log")
        with open(log, "w") as messages:  # a file, not a pipe nobody reads while the loop runs
            record = subprocess.Popen([perf, "record", "-e", "cpu-clock", "-F", str(RATE), "-p", str(os.getpid()),
                                       "-o", data, "--", "sleep", str(seconds)],
                                      stdout=messages, stderr=subprocess.STDOUT)
            start, steps = time.perf_counter(), 0
            while record.poll() is None:
                jax.block_until_ready(call())
                steps += 1
            step_s = (time.perf_counter() - start) / max(steps, 1)
        if record.returncode != 0 or not os.path.exists(data):
            raise errors.InputError(f"perf record failed (exit code {record.returncode}): {_tail(log)} (perf may "
                                    "need /proc/sys/kernel/perf_event_paranoid <= 2, or root)")
        # read while this process lives: perf names oneDNN's kernels from the map the process writes
        report = subprocess.run([perf, "report", "--stdio", "--no-children", "-n", "--sort", "sym", "--percent-limit",
                                 "0", "-i", data], capture_output=True, text=True, check=False)
    counts = parse_report(report.stdout)
    if report.returncode != 0 or not counts:
        raise errors.InputError(f"perf report gave no samples (exit code {report.returncode}): "
                                f"{report.stderr.strip()[-500:]}")
    return summarize(counts, steps, step_s, seconds, cores)


def _tail(path: str) -> str:
    with open(path) as f:
        return f.read().strip()[-500:]


def summarize(counts: dict[str, int], steps: int, step_s: float, seconds: float, cores: int) -> dict:
    """{'categories': {category: {'share': of the cores' time, 'cpu_ms_per_step'}}, ...} from each category's
    samples over ``seconds`` on ``cores``; 'idle' is the samples not taken (rate x seconds x cores, or the
    count taken if that is more, minus the count taken). CPU ms per step: the category's CPU seconds per
    second times the step time."""
    taken = sum(counts.values())
    possible = max(RATE * seconds * cores, taken)
    per_step = 1e3 * step_s / (RATE * seconds)
    result = {name: {"share": n / possible, "cpu_ms_per_step": n * per_step} for name, n in counts.items()}
    result[IDLE] = {"share": 1 - taken / possible, "cpu_ms_per_step": (possible - taken) * per_step}
    return {"categories": result, "steps": steps, "step_s": step_s, "seconds": seconds, "samples": taken,
            "cores": cores}


def _remove_perf_map() -> None:
    try:
        os.remove(f"/tmp/perf-{os.getpid()}.map")
    except OSError:
        pass


def format_table(name: str, breakdown: dict) -> str:
    """The categories by CPU time, largest first."""
    rows = sorted(breakdown["categories"].items(), key=lambda kv: -kv[1]["share"])
    lines = [f"{name}: CPU time by where it went ({breakdown['steps']} steps of {1e3 * breakdown['step_s']:.1f} ms "
             f"while perf sampled {breakdown['cores']} cores at {RATE}/s for {breakdown['seconds']:g} s: "
             f"{breakdown['samples']} samples)",
             f"  {'share':>6} {'CPU ms/step':>12}  category"]
    lines += [f"  {100 * r['share']:>5.1f}% {r['cpu_ms_per_step']:>12.1f}  {category}" for category, r in rows]
    return "\n".join(lines)
