"""Run-time choice of the CPU kernels' instruction set (csrc/cpu/dispatch.cpp).

One _C holds the CPU kernels compiled for default, AVX2 and AVX-512 (x86-64); the best
this CPU runs is used unless FASTGAN_CPU_CAPABILITY forces one. The choice is made when
_C is loaded, so each forced capability runs in a fresh process: the parity tests of
the CPU kernels run again under every capability this CPU supports besides the one the
main test process uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastgan import _ext

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not _ext.ext_loaded(), reason="fastgan._C is not built")

ALL = ("default", "avx2", "avx512")
# The CPU kernels' parity tests against eager PyTorch (bn_act and gan_loss, every layout
# kernel and dtype), CPU backend only. The blocks call the same kernels through the op.
PARITY = ["tests/test_bn_act.py", "tests/test_gan_loss.py"]


def _python(code: str, capability: str | None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FASTGAN_CPU_CAPABILITY", None)
    if capability is not None:
        env["FASTGAN_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _supported() -> list[str]:
    return list(_ext._C.cpu_capabilities_supported())


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_build_has_every_x86_copy():
    import platform

    built = _ext.build_info()["cpu_capabilities"]
    if platform.machine() in ("x86_64", "AMD64"):
        assert built == list(ALL)
    else:
        assert built == ["default"]


def test_auto_picks_the_best_this_cpu_runs():
    supported = _supported()
    assert supported[0] == "default"
    flags = _cpu_flags()
    if flags and "avx2" in _ext.build_info()["cpu_capabilities"]:
        assert ("avx2" in supported) == ({"avx2", "fma", "f16c"} <= flags)
        assert ("avx512" in supported) == ({"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags)
    r = _python("from fastgan import _ext; print(_ext.cpu_capability())", None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == supported[-1]


@pytest.mark.parametrize("capability", ALL)
def test_forced_capability(capability):
    if capability not in _supported():
        pytest.skip(f"this CPU does not run {capability}")
    code = ("from fastgan import _ext, cli; print(_ext.cpu_capability()); "
            "cli.main(['info'])")
    r = _python(code, capability.upper() if capability == "avx2" else capability)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == capability
    assert f"CPU kernels in use: {capability} (FASTGAN_CPU_CAPABILITY=" in r.stdout


@pytest.mark.parametrize("value, message", [
    ("sse9", "FASTGAN_CPU_CAPABILITY must be default, avx2 or avx512"),
    ("avx512", "needs a CPU with avx512f"),
])
def test_bad_capability_is_a_clear_error(value, message):
    if value in _supported():
        pytest.skip(f"this CPU runs {value}")
    code = ("import warnings; warnings.simplefilter('ignore'); import fastgan; "
            "from fastgan import _ext; print(_ext.ext_loaded()); print(_ext.ext_error())")
    r = _python(code, value)
    assert r.returncode == 0, r.stderr  # import fastgan still works (reference backend)
    loaded, error = r.stdout.splitlines()[:2]
    assert loaded == "False"
    assert message in error and "Traceback" not in error


def _others() -> list[str]:
    if not _ext.ext_loaded():
        return []
    return [c for c in _supported() if c != _ext.cpu_capability()]


@pytest.mark.parametrize("capability", [c for c in ALL if c != "default"] + ["default"])
def test_parity_suite_under(capability):
    """The CPU kernels' parity tests, in a fresh pytest process with the capability forced
    (the main process already ran them under its own)."""
    if capability not in _others():
        pytest.skip(f"{capability} is the capability in use here, or this CPU lacks it")
    env = dict(os.environ, FASTGAN_CPU_CAPABILITY=capability)
    r = subprocess.run(
        # no -q: the header names the capability in use (conftest.pytest_report_header)
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-k",
         "not cuda and not triton", *PARITY],
        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    tail = "\n".join(r.stdout.splitlines()[-15:])
    assert r.returncode == 0, f"parity tests failed under FASTGAN_CPU_CAPABILITY={capability}:\n{tail}\n{r.stderr[-2000:]}"
    assert f"fastgan CPU kernels: {capability}" in r.stdout
    assert " passed" in tail


def _isa_objects() -> list[Path]:
    return sorted(ROOT.glob("build/temp.*/cpu-avx*/csrc/cpu/kernels/*.o"))


@pytest.mark.skipif(not _isa_objects(), reason="no build/ objects of the AVX copies here")
def test_avx_copies_run_nothing_at_load():
    """Loading _C runs the static initialisers of every object, the AVX-512 copy's too,
    on any CPU: the kernels' copies may hold none but libstdc++'s <iostream> one (which
    calls into libstdc++ and uses no vector register)."""
    import shutil

    if shutil.which("objdump") is None:
        pytest.skip("objdump not found")
    allowed = {"_ZNSt8ios_base4InitC1Ev", "_ZNSt8ios_base4InitD1Ev", "__cxa_atexit",
               "__dso_handle", ".bss"}
    for obj in _isa_objects():
        out = subprocess.run(["objdump", "-dr", "--no-show-raw-insn", "-j", ".text.startup",
                              str(obj)], capture_output=True, text=True).stdout
        targets = {line.split()[-1].split("-")[0].split("+")[0]
                   for line in out.splitlines() if "R_X86_64_" in line}
        assert targets <= allowed, f"{obj.name}: static initialiser calls {targets - allowed}"
        assert not any(reg in out for reg in ("%xmm", "%ymm", "%zmm")), obj
