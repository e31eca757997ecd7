"""Every Triton kernel compiles for sm_80 and sm_90 without a GPU, spill-free
(fastgan.kernels.aot, in its --quick form; CI runs the full command)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastgan


def test_aot_compiles_without_spills():
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastgan.__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "fastgan.kernels.aot", "--quick"], env=env,
                          capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "no spills" in report, report
    for sm in ("80", "90"):
        assert any(line.split()[-5:-4] == [sm] for line in report.splitlines()), report
