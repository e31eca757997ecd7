"""The `cuda` backend of cbn_act (csrc/cuda/cbn_act.cu): gpu-marked parity and gradient
tests that run as they are on a CUDA machine (the compile check of every .cu file for
every arch is tests/test_bn_act_cuda.py's)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _ext
from fastgan.functional import conditional_batch_norm_act

from _testutil import assert_close_scaled

BUILT_CUDA = bool(_ext.build_info().get("cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not BUILT_CUDA, reason="fastgan._C built without CUDA kernels"),
]
K = 4


def _composite(x, y, w, b, rm, rv, training, momentum, slope):
    return F.leaky_relu(F.batch_norm(x, rm, rv, None, None, training, momentum, 1e-5)
                        * w[y][:, :, None, None] + b[y][:, :, None, None], slope)


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (4, 33, 9, 11), (8, 64, 1, 1), (2, 3, 64, 65)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5),
                                       (torch.bfloat16, None), (torch.float16, None)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_parity(shape, dtype, tol, channels_last, training):
    torch.manual_seed(0)
    N, C = shape[:2]
    x = torch.randn(shape, dtype=torch.float64, device="cuda") * 2 + 1
    g = torch.randn(shape, dtype=torch.float64, device="cuda")
    if channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    y = torch.randint(0, K, (N,), device="cuda")
    w = torch.rand(K, C, dtype=torch.float64, device="cuda") + 0.5
    b = torch.randn(K, C, dtype=torch.float64, device="cuda")
    rm0 = torch.randn(C, dtype=torch.float64, device="cuda")
    rv0 = torch.rand(C, dtype=torch.float64, device="cuda") + 0.5

    def run(d, fused):
        rm, rv = rm0.to(d).clone(), rv0.to(d).clone()
        xi = x.to(d).requires_grad_()
        wi, bi = w.to(d).requires_grad_(), b.to(d).requires_grad_()
        if fused:
            with fastgan.use_backend("cuda"):
                out = conditional_batch_norm_act(xi, wi[y], bi[y], rm, rv, training, 0.1, 1e-5,
                                                 0.2)
        else:
            out = _composite(xi, y, wi, bi, rm, rv, training, 0.1, 0.2)
        out.backward(g.to(d))
        return [out, xi.grad, wi.grad, bi.grad, rm, rv]

    ours, eager = run(dtype, True), run(dtype, False)
    ref = run(torch.float64, False)
    for a, e, r in zip(ours, eager, ref):
        if tol is not None:
            assert_close_scaled(a, e, tol)
        else:
            err_e = (e.double() - r).abs().max().item()
            err_a = (a.double() - r).abs().max().item()
            assert err_a <= 2 * err_e + 1e-3 * max(1.0, r.abs().max().item())
    if channels_last and min(shape[2:]) > 1:
        assert ours[0].is_contiguous(memory_format=torch.channels_last)


def test_gradcheck_gradgradcheck():
    x = torch.randn(3, 4, 3, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    s = torch.randn(3, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, device="cuda", requires_grad=True)

    def f(x, s, b):
        with fastgan.use_backend("cuda"):
            return conditional_batch_norm_act(x, s, b, negative_slope=0.2)

    assert torch.autograd.gradcheck(f, (x, s, b))
    assert torch.autograd.gradgradcheck(f, (x, s, b))


def test_opcheck():
    x = torch.randn(3, 5, 4, 3, device="cuda")
    s, b = torch.randn(3, 5, device="cuda"), torch.randn(3, 5, device="cuda")
    rm, rv = torch.zeros(5, device="cuda"), torch.ones(5, device="cuda")
    torch.library.opcheck(torch.ops.fastgan.cbn_act_forward.default,
                          (x.requires_grad_(), s, b, rm, rv, True, 0.1, 1e-5, 0.2))
    _, mean, var = torch.ops.fastgan.cbn_act_forward(x.detach(), s, b, None, None, True, 0.1,
                                                     1e-5, 0.2)
    torch.library.opcheck(torch.ops.fastgan.cbn_act_backward.default,
                          (torch.randn_like(x), x.detach(), s, b, mean, var, True, 1e-5, 0.2,
                           [True, True, True]))


def test_compile_fullgraph():
    torch._dynamo.reset()
    fused = fastgan.nn.ConditionalBatchNormAct2d(32, 10, negative_slope=0.0, device="cuda")
    ref = fastgan.nn.ConditionalBatchNormAct2d(32, 10, negative_slope=0.0, device="cuda")
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(8, 32, 8, 8, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    with fastgan.use_backend("cuda"):
        xa = x.clone().requires_grad_()
        compiled(xa, y).square().sum().backward()
    with fastgan.use_backend("reference"):
        xb = x.clone().requires_grad_()
        ref(xb, y).square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)
