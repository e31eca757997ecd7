"""The `cuda` backend of gan_loss: gpu-marked parity, gradient and opcheck tests that run
as they are on a CUDA machine (the build check that every op has a CUDA kernel lives in
tests/test_bn_act_cuda.py)."""

from __future__ import annotations

import pytest
import torch

import fastgan
from fastgan.functional import gan_loss

KINDS = ["minimax", "ns", "lsgan", "hinge", "wgan", "rpgan"]


def _fake_size(kind, sizes):
    return sizes[0] if kind == "rpgan" else sizes[1]  # rpgan pairs r[i] with f[i]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5),
                                       (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("sizes", [(1, 1), (37, 5), (100_000, 70_001)])
def test_cuda_matches_reference(kind, reduction, dtype, tol, sizes):
    r64 = torch.randn(sizes[0], dtype=torch.float64, device="cuda") * 3
    f64 = torch.randn(_fake_size(kind, sizes), dtype=torch.float64, device="cuda") * 3
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
    f = torch.randn(_fake_size(kind, (7, 5)), dtype=torch.float64, device="cuda",
                    requires_grad=True)

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


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["d", "g", "both"])
def test_cuda_rpgan_gradients_and_opcheck(which):
    """rpgan: g_loss reaches the real logits too; each loss alone and both, odd size."""
    r0 = torch.randn(333, dtype=torch.float64, device="cuda") * 3
    f0 = torch.randn(333, dtype=torch.float64, device="cuda") * 3
    res = {}
    for backend in ("cuda", "reference"):
        r, f = r0.clone().requires_grad_(), f0.clone().requires_grad_()
        with fastgan.use_backend(backend):
            out = gan_loss(r, f, "rpgan")
        loss = {"d": out.d_loss, "g": out.g_loss, "both": out.d_loss + 2 * out.g_loss}[which]
        loss.backward()
        res[backend] = (r.grad, f.grad)
    for a, b in zip(res["cuda"], res["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    r = r0.float().requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.gan_loss_forward.default,
                          (r, f0.float(), "rpgan", "mean", 1.0))
    gd = torch.tensor(1.0, device="cuda")
    for mask in ([True, True], [False, True], [True, False]):
        torch.library.opcheck(torch.ops.fastgan.gan_loss_backward.default,
                              (gd, gd, r0.float(), f0.float(), "rpgan", "sum", 1.0, mask))
