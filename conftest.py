"""pytest setup for the whole checkout (tests/conftest.py holds the test suite's own).

bench/ is the package fastgan.bench, so its pytest-benchmark files
(`python -m pytest bench/bench_bn_act.py --benchmark-only`) are imported by that name,
never as a second, top-level `bench` package (bench/__init__.py refuses that name).
`python -m pytest` alone collects tests/ only (pyproject.toml: testpaths).
"""

from __future__ import annotations

import importlib
import pathlib

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parent / "bench"


class BenchModule(pytest.Module):
    """A bench/bench_*.py file, imported as fastgan.bench.<name>."""

    def _getobj(self):
        return importlib.import_module(f"fastgan.bench.{self.path.stem}")


def pytest_collect_directory(path: pathlib.Path, parent):
    # a plain folder, not a Package: pytest would import bench/__init__.py as `bench`
    if path.resolve() == BENCH_DIR:
        return pytest.Dir.from_parent(parent, path=path)
    return None


def pytest_pycollect_makemodule(module_path: pathlib.Path, parent):
    if module_path.resolve().parent == BENCH_DIR:
        return BenchModule.from_parent(parent, path=module_path)
    return None
