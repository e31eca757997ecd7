"""The `cuda` backend of bn_act: build checks that run anywhere, and gpu-marked parity and
gradient tests that run as they are on a CUDA machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan import _ext
from fastgan.functional import batch_norm_act
from fastgan.ops import bn_act as bn_act_op

from _testutil import assert_close_scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT_CUDA = bool(_ext.build_info().get("cuda"))


def _fastgan_ops() -> list[str]:
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastgan::"))


@pytest.mark.skipif(not BUILT_CUDA, reason="fastgan._C built without CUDA kernels")
def test_every_cpu_kernel_has_a_cuda_kernel():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    cpu_ops = [n for n in _fastgan_ops() if has(n, "CPU")]
    assert cpu_ops, "no fastgan op has a CPU kernel?"
    missing = [n for n in cpu_ops if not has(n, "CUDA")]
    assert not missing, f"ops with a CPU kernel but no CUDA kernel: {missing}"


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.isdir("/usr/local/cuda"),
                    reason="no CUDA toolkit")
def test_cuda_kernels_compile_for_every_default_arch_without_spills():
    """The built _C's cubins when it has CUDA kernels (what ships, and no second CUDA
    build in CI); otherwise every .cu compiled here with nvcc -Xptxas -v."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "check_cuda.py")]
    if BUILT_CUDA:
        cmd += ["--built", _ext._C.__file__]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    print(r.stdout[-6000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "no spills" in r.stdout


# ---------------------------------------------------------------------------
# On a GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-10),
                                       (torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 33, 9, 11), (2, 5, 1, 1), (16, 64, 8, 8)])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_cuda_matches_reference(dtype, tol, channels_last, training, shape, slope):
    C = shape[1]
    x = (torch.randn(shape, device="cuda", dtype=torch.float64) * 3 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    w = torch.rand(C, device="cuda") + 0.5
    b = torch.randn(C, device="cuda")
    rm, rv = torch.randn(C, device="cuda"), torch.rand(C, device="cuda") + 0.5
    outs = {}
    for backend in ("cuda", "reference"):
        xi = x.detach().clone().requires_grad_()
        wi, bi = w.clone().requires_grad_(), b.clone().requires_grad_()
        rmi, rvi = rm.clone(), rv.clone()
        with fastgan.use_backend(backend):
            y = batch_norm_act(xi, rmi, rvi, wi, bi, training, 0.1, 1e-5, slope)
        y.backward(g)
        outs[backend] = (y, xi.grad, wi.grad, bi.grad, rmi, rvi)
    for a, r in zip(outs["cuda"], outs["reference"]):
        assert_close_scaled(a, r, tol)
    if channels_last and min(shape[2:]) > 1:
        assert outs["cuda"][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_gradcheck(training, channels_last):
    x = torch.randn(3, 4, 5, 3, device="cuda", dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = (torch.rand(4, device="cuda", dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, device="cuda", dtype=torch.float64).requires_grad_()
    rm = torch.randn(4, device="cuda", dtype=torch.float64)
    rv = torch.rand(4, device="cuda", dtype=torch.float64) + 0.5

    def f(x, w, b):
        with fastgan.use_backend("cuda"):
            return batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, 0.2)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.gpu
def test_cuda_matches_cpu_kernel_and_opcheck():
    x = torch.randn(8, 16, 7, 7, dtype=torch.float64) * 4 + 50
    w, b = torch.rand(16, dtype=torch.float64) + 0.5, torch.randn(16, dtype=torch.float64)
    y_cpu, m_cpu, v_cpu = torch.ops.fastgan.bn_act_forward(x, w, b, None, None, True, 0.1, 1e-5, 0.2)
    y_gpu, m_gpu, v_gpu = torch.ops.fastgan.bn_act_forward(x.cuda(), w.cuda(), b.cuda(), None,
                                                           None, True, 0.1, 1e-5, 0.2)
    assert_close_scaled(y_gpu, y_cpu, 1e-10)
    assert_close_scaled(v_gpu, v_cpu, 1e-10)
    torch.library.opcheck(torch.ops.fastgan.bn_act_forward.default,
                           (x.cuda(), w.cuda(), b.cuda(), None, None, True, 0.1, 1e-5, 0.2))
    args = (x.cuda().float(), None, None, None, None, True, 0.1, 1e-5, 0.0)
    y, mean, var = torch.ops.fastgan.bn_act_forward(*args)
    torch.library.opcheck(torch.ops.fastgan.bn_act_backward.default,
                          (torch.randn_like(y), args[0], None, None, mean, var, True, 1e-5, 0.0,
                           [True, False, False]))
    ref, *_ = bn_act_op.reference_forward(args[0], None, None, None, None, True, 0.1, 1e-5, 0.0)
    assert_close_scaled(y, ref, 2e-5)


def test_built_extension_carries_every_arch():
    """The built _C holds a cubin for each arch it was built for, and PTX where the list
    says +PTX (read with the cuobjdump that ships in triton's wheel)."""
    from fastgan import _ext

    info = _ext.build_info()
    if not info.get("cuda"):
        pytest.skip("fastgan._C was built without CUDA kernels")
    triton = pytest.importorskip("triton")
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.isfile(tool):
        pytest.skip("no cuobjdump in the triton wheel")
    so = _ext._C.__file__
    elf = subprocess.run([tool, "--list-elf", so], capture_output=True, text=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", so], capture_output=True, text=True).stdout
    for arch in info["cuda_archs"].split(";"):
        sm = arch.replace("+PTX", "").replace(".", "")
        assert f"sm_{sm}.cubin" in elf, (arch, elf)
        if arch.endswith("+PTX"):
            assert f"sm_{sm}.ptx" in ptx, (arch, ptx)
