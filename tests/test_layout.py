"""The package's shape, as the README's layout section describes it: layers whose imports only point down,
light modules that do not pull in tensorflow_datasets, and functions short enough to read at once."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gcn_jax"
# Lower layers never import higher ones; within a layer only a subpackage's own modules import each other.
LAYERS = {"gcn_jax.errors": 0, "gcn_jax.xla_flags": 0, "gcn_jax.huge_pages": 0, "gcn_jax.labels": 1,
          "gcn_jax.images": 1, "gcn_jax.parallel": 1, "gcn_jax.progress": 1, "gcn_jax.models": 2, "gcn_jax.data": 2,
          "gcn_jax.evaluation": 3, "gcn_jax.training": 4, "gcn_jax.cli": 5, "gcn_jax.segmenter": 5,
          "gcn_jax.study": 5}
MAX_FUNCTION_LINES = 60


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage (gcn_jax.models) or top-level module (gcn_jax.parallel)."""
    return ".".join(module.split(".")[:2])


def _imports(path: pathlib.Path) -> set[str]:
    """Every gcn_jax module ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("gcn_jax.") and _unit(name) in LAYERS}


def test_imports_only_point_down_the_layers():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert {_unit(_module_name(p)) for p in modules if _module_name(p) != "gcn_jax"} == set(LAYERS)
    upward = []
    for path in modules:
        importer = _module_name(path)
        if importer == "gcn_jax":
            continue
        for imported in _imports(path):
            a, b = _unit(importer), _unit(imported)
            if a != b and LAYERS[b] >= LAYERS[a]:
                upward.append(f"{importer} imports {imported}")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module", ["gcn_jax.training.state", "gcn_jax.evaluation.metrics",
                                    "gcn_jax.evaluation.inference", "gcn_jax.models", "gcn_jax.cli"])
def test_light_modules_do_not_import_tensorflow_datasets(module):
    code = f"import {module}, sys; print('tensorflow_datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)
