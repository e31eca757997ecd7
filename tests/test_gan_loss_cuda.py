"""The `cuda` backend of gan_loss: gpu-marked parity, gradient and opcheck tests that run
as they are on a CUDA machine (the build check that every op has a CUDA kernel lives in
tests/test_bn_act_cuda.py)."""

from __future__ import annotations

import pytest
import torch

import fastgan
from fastgan.functional import gan_loss

KINDS = ["minimax", "ns", "lsgan", "hinge", "wgan"]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5),
                                       (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("sizes", [(1, 1), (37, 5), (100_000, 70_001)])
def test_cuda_matches_reference(kind, reduction, dtype, tol, sizes):
    r64 = torch.randn(sizes[0], dtype=torch.float64, device="cuda") * 3
    f64 = torch.randn(sizes[1], dtype=torch.float64, device="cuda") * 3
    outs = {}
    for backend in ("cuda", "reference"):
        r = r64.to(dtype).requires_grad_()
        f = f64.to(dtype).requires_grad_()
        with fastgan.use_backend(backend):
            res = gan_loss(r, f, kind, reduction)
        (res.d_loss + res.g_loss).backward()
        outs[backend] = (*res, r.grad, f.grad)
    for a, b in zip(outs["cuda"], outs["reference"]):
        a, b = a.double().cpu(), b.double().cpu()
        assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_gradcheck_and_extremes(kind):
    r = torch.randn(7, dtype=torch.float64, device="cuda", requires_grad=True)
    f = torch.randn(5, dtype=torch.float64, device="cuda", requires_grad=True)

    def fn(r, f):
        with fastgan.use_backend("cuda"):
            res = gan_loss(r, f, kind)
        return res.d_loss, res.g_loss

    assert torch.autograd.gradcheck(fn, (r, f))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.tensor([1e4, -1e4, 0.0], device="cuda").to(dtype).requires_grad_()
        with fastgan.use_backend("cuda"):
            res = gan_loss(x, x.flip(0), kind)
        (res.d_loss + res.g_loss).backward()
        assert all(torch.isfinite(t).all() for t in (*res, x.grad))


@pytest.mark.gpu
def test_cuda_opcheck():
    r = torch.randn(33, device="cuda", requires_grad=True)
    f = torch.randn(17, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.gan_loss_forward.default, (r, f, "ns", "mean", 0.9))
    gd = torch.tensor(1.0, device="cuda")
    torch.library.opcheck(torch.ops.fastgan.gan_loss_backward.default,
                          (gd, gd, r.detach(), f.detach(), "hinge", "sum", 1.0, [True, True]))
