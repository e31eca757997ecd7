"""Backend selection, the extension loader's fallback, and the `fastgan` command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan import _backend, _ext
from fastgan.functional import batch_norm_act


def _x():
    return torch.randn(2, 3, 4, 4)


def test_available_backends_lists_reference_and_cpu():
    av = fastgan.available_backends()
    assert "reference" in av
    assert ("cpu" in av) == _ext.ext_loaded()
    st = fastgan.backend_status()
    assert set(st) == {"reference", "cpu", "triton", "cuda"}
    for name, (ok, why) in st.items():
        assert ok == (why is None), name


def test_auto_picks_cpu_kernel_for_cpu_tensors():
    if not _ext.ext_loaded():
        pytest.skip("fastgan._C not loaded")
    assert _backend.select("bn_act", torch.device("cpu"), ("cpu",)) == "cpu"
    assert _backend.select("bn_act", torch.device("cpu"), ()) == "reference"


def test_compiled_devices_is_the_choice_select_makes(monkeypatch):
    """The mask the C++ eager fast paths apply (1: CPU, 2: CUDA) follows use_backend()
    and $FASTGAN_BACKEND through select(); forced backends that cannot run, or are
    unknown, leave the device out (the Python path then raises)."""
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    kernels = ("cpu", "cuda")
    cuda = 2 if "cuda" in fastgan.available_backends() else 0
    cpu = 1 if _ext.ext_loaded() else 0
    assert _backend.compiled_devices("op", kernels) == cpu | cuda
    assert _backend.compiled_devices("op", ()) == 0
    with fastgan.use_backend("reference"):
        assert _backend.compiled_devices("op", kernels) == 0
    if cpu:
        with fastgan.use_backend("cpu"):
            assert _backend.compiled_devices("op", kernels) == 1
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert _backend.compiled_devices("op", kernels) == 0
    monkeypatch.setenv("FASTGAN_BACKEND", "fast")
    assert _backend.compiled_devices("op", kernels) == 0
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        _backend.select("op", torch.device("cpu"), kernels)
    monkeypatch.setenv("FASTGAN_BACKEND", "auto")
    assert _backend.compiled_devices("op", kernels) == cpu | cuda


def test_use_backend_context_nests_and_restores():
    assert _backend.requested_backend() == "auto"
    with fastgan.use_backend("reference"):
        assert _backend.requested_backend() == "reference"
        with fastgan.use_backend("auto"):
            assert _backend.requested_backend() == "auto"
        assert _backend.requested_backend() == "reference"
    assert _backend.requested_backend() == "auto"


def test_use_backend_results_agree():
    x = _x()
    with fastgan.use_backend("reference"):
        a = batch_norm_act(x, None, None, training=True)
    b = batch_norm_act(x, None, None, training=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with fastgan.use_backend("fast"):
            pass


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert _backend.requested_backend() == "reference"
    batch_norm_act(_x(), None, None, training=True)
    monkeypatch.setenv("FASTGAN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match=r"\$FASTGAN_BACKEND: unknown backend 'nonsense'"):
        batch_norm_act(_x(), None, None, training=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_forcing_unusable_backend_is_an_error(monkeypatch):
    with pytest.raises(RuntimeError, match="'cuda' is not usable here"):
        with fastgan.use_backend("cuda"):
            pass
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' was forced but is not usable"):
        batch_norm_act(_x(), None, None, training=True)


def test_forcing_backend_without_kernel_for_op_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not fastgan.backend_status()["triton"][0]:
        pytest.skip("triton not installed")
    with fastgan.use_backend("triton"):
        with pytest.raises(RuntimeError, match="has no kernel for this op"):
            _backend.select("some_op", torch.device("cpu"), ("cpu",))


def _run_py(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FASTGAN_BACKEND", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


def test_missing_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings\n"
        "sys.modules['fastgan._C'] = None  # makes `from fastgan import _C` fail\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastgan, torch\n"
        "    import fastgan.functional\n"
        "msgs = [str(x.message) for x in w if 'fastgan._C' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'cpu' not in fastgan.available_backends()\n"
        "y = fastgan.functional.batch_norm_act(torch.randn(2,3,4,4), None, None, training=True)\n"
        "try:\n"
        "    with fastgan.use_backend('cpu'): pass\n"
        "except RuntimeError as e:\n"
        "    assert 'not loaded' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('forcing cpu without _C must fail')\n"
        "print('ok', tuple(y.shape))\n")
    r = _run_py(code)
    assert r.returncode == 0, r.stderr
    assert "ok (2, 3, 4, 4)" in r.stdout


def test_fastgan_info_command():
    r = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    for word in ("fastgan", "torch", "triton", "_C", "reference", "cpu", "cuda"):
        assert word in r.stdout
    if _ext.ext_loaded():
        assert "built: CPU kernels" in r.stdout


def test_fastgan_demo_command_small():
    r = subprocess.run([sys.executable, "-m", "fastgan", "demo", "--batch", "4", "--channels",
                        "8", "--size", "8", "--iters", "3"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "speedup vs eager" in r.stdout


def test_import_stays_light():
    """`import fastgan` loads neither torch._dynamo nor triton (they cost seconds), and
    the backend choice is still a constant for torch.compile."""
    r = _run_py("import sys, fastgan\n"
                "from fastgan import _backend\n"
                "assert 'torch._dynamo' not in sys.modules\n"
                "assert 'triton' not in sys.modules\n"
                "assert _backend.select._dynamo_marked_constant\n"
                "assert _backend.requested_backend._dynamo_marked_constant\n"
                "print('ok')\n")
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


@pytest.mark.parametrize("cap,usable,says", [
    ((7, 5), True, "native kernels (sm_75)"),
    ((9, 0), True, "native kernels (sm_90)"),
    ((8, 7), True, "sm_86 kernels (binary compatible with sm_87)"),
    ((10, 0), True, "PTX of compute_90"),
    ((12, 0), True, "PTX of compute_90"),
    ((7, 0), False, "no kernels for sm_70"),
])
def test_cuda_arch_support(cap, usable, says):
    """What `fastgan info` says and whether the cuda backend runs, per GPU arch, for the
    default build (scripts/cuda_toolkit.py)."""
    from fastgan._ext import cuda_arch_support

    ok, how = cuda_arch_support("7.5;8.0;8.6;8.9;9.0+PTX", cap)
    assert ok == usable and says in how, how
    assert cuda_arch_support("8.0;9.0", (10, 0))[0] is False   # no PTX: nothing for Blackwell
