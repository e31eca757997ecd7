"""Shared test setup: the header names the CPU kernels in use; the `gpu` marker skips
without a CUDA device."""

from __future__ import annotations

import pytest
import torch


def pytest_report_header(config):
    from fastgan import _ext

    if not _ext.ext_loaded():
        return f"fastgan._C not loaded: {_ext.ext_error()}"
    return f"fastgan CPU kernels: {_ext.cpu_capability()} (built: " \
           f"{', '.join(_ext.build_info()['cpu_capabilities'])})"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _metrics_cache(tmp_path_factory):
    """Reference statistics of the metrics go to a per-session folder, not ~/.cache
    (computed once per test session, shared by the tests that need them)."""
    import os

    old = os.environ.get("FASTGAN_CACHE")
    os.environ["FASTGAN_CACHE"] = str(tmp_path_factory.mktemp("fastgan-cache"))
    yield
    if old is None:
        os.environ.pop("FASTGAN_CACHE", None)
    else:
        os.environ["FASTGAN_CACHE"] = old
