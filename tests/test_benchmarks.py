"""benchmarks/layers.py runs and reports each rewritten layer beside the form it replaces (the figures
themselves are for the README, never asserted)."""

import os
import re
import subprocess
import sys

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
