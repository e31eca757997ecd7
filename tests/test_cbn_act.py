"""Fused conditional BatchNorm2d + LeakyReLU (fastgan.nn.ConditionalBatchNormAct2d): parity
with the eager composite (F.batch_norm without affine, then weight[labels] / bias[labels])
and the reference, gradients, registration, errors, layouts and thread-count determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan import _ext
from fastgan.functional import conditional_batch_norm_act

from _testutil import assert_close_scaled

HAVE_C = _ext.ext_loaded()
needs_c = pytest.mark.skipif(not HAVE_C, reason=f"fastgan._C not loaded: {_ext.ext_error()}")
BACKENDS = ["cpu", "reference"] if HAVE_C else ["reference"]
K = 4  # classes

SHAPES = [(3, 5, 7, 7), (4, 16, 4, 4), (2, 3, 17, 9), (5, 33, 1, 1), (2, 20, 3, 5)]


class EagerCBN(nn.Module):
    """The oracle: nn.BatchNorm2d(affine=False) and per-class affine in plain torch."""

    def __init__(self, C, slope, dtype, momentum=0.1, track=True):
        super().__init__()
        self.bn = nn.BatchNorm2d(C, affine=False, momentum=momentum, track_running_stats=track,
                                 dtype=dtype)
        self.weight = nn.Parameter(torch.empty(K, C, dtype=dtype).uniform_(-1.5, 1.5))
        self.bias = nn.Parameter(torch.empty(K, C, dtype=dtype).uniform_(-0.5, 0.5))
        self.slope = slope

    def forward(self, x, y):
        z = self.bn(x) * self.weight[y][:, :, None, None] + self.bias[y][:, :, None, None]
        return F.leaky_relu(z, self.slope)


def _fused_from(eager):
    bn = eager.bn
    m = fastgan.nn.ConditionalBatchNormAct2d(bn.num_features, K, eps=bn.eps,
                                             momentum=bn.momentum,
                                             track_running_stats=bn.track_running_stats,
                                             negative_slope=eager.slope,
                                             dtype=eager.weight.dtype)
    with torch.no_grad():
        m.weight.copy_(eager.weight)
        m.bias.copy_(eager.bias)
        if bn.track_running_stats:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            m.running_mean.copy_(bn.running_mean)
            m.running_var.copy_(bn.running_var)
    return m


def _input(shape, dtype, channels_last, mean=0.0, std=1.0):
    x = (torch.randn(shape, dtype=torch.float64) * std + mean).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _labels(N):
    return torch.randint(0, K, (N,))


def _run(module, x, y, g, steps=1):
    outs, gxs = [], []
    for _ in range(steps):
        xi = x.detach().clone().requires_grad_()
        out = module(xi, y)
        out.backward(g)
        outs.append(out.detach())
        gxs.append(xi.grad)
    grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    for p in module.parameters():
        p.grad = None
    return outs, gxs, grads


def _buffers(m):
    return {k.replace("bn.", ""): v for k, v in m.named_buffers()}


def test_extension_loaded():
    assert HAVE_C, _ext.ext_error()
    assert hasattr(torch.ops.fastgan, "cbn_act_forward")


# ---------------------------------------------------------------------------
# Parity with the eager composite

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_parity_train_then_eval(backend, shape, dtype, tol, channels_last):
    eager = EagerCBN(shape[1], 0.2, dtype).train()
    fused = _fused_from(eager).train()
    x = _input(shape, dtype, channels_last, mean=1.0, std=3.0)
    g = _input(shape, dtype, channels_last)
    y = _labels(shape[0])
    with fastgan.use_backend(backend):
        fo, fg, fp = _run(fused, x, y, g, steps=2)
        fused.eval()
        fo_e, fg_e, fp_e = _run(fused, x, y, g)
    eo, eg, ep = _run(eager, x, y, g, steps=2)
    eager.eval()
    eo_e, eg_e, ep_e = _run(eager, x, y, g)
    for a, b in zip(fo + fg + fo_e + fg_e, eo + eg + eo_e + eg_e):
        assert_close_scaled(a, b, tol)
        if channels_last and min(shape[2:]) > 1:
            assert a.is_contiguous(memory_format=torch.channels_last)
    assert fp.keys() == ep.keys() == {"weight", "bias"}
    for k in ep:
        assert_close_scaled(fp[k], ep[k], tol * 10)
        assert_close_scaled(fp_e[k], ep_e[k], tol * 10)
    fb, eb = _buffers(fused), _buffers(eager)
    assert fb.keys() == eb.keys()
    for k in eb:
        assert_close_scaled(fb[k], eb[k], tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("slope,momentum,track", [(0.0, 0.1, True), (0.2, None, True),
                                                  (1.0, 0.1, False), (0.01, None, False)])
def test_parity_options(backend, slope, momentum, track):
    shape = (3, 6, 5, 7)
    eager = EagerCBN(shape[1], slope, torch.float64, momentum=momentum, track=track)
    fused = _fused_from(eager)
    x = _input(shape, torch.float64, False, mean=-0.5, std=2.0)
    g = _input(shape, torch.float64, False)
    y = _labels(shape[0])
    for training in (True, False):
        eager.train(training)
        fused.train(training)
        with fastgan.use_backend(backend):
            fo, fg, fp = _run(fused, x, y, g, steps=3)
        eo, eg, ep = _run(eager, x, y, g, steps=3)
        for a, b in zip(fo + fg + list(fp.values()), eo + eg + list(ep.values())):
            assert_close_scaled(a, b, 1e-9)
        fb, eb = _buffers(fused), _buffers(eager)
        for k in eb:
            assert_close_scaled(fb[k], eb[k], 1e-12) if eb[k] is not None else None
        assert fp.keys() == ep.keys()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_batch_of_one(backend, channels_last):
    eager = EagerCBN(5, 0.0, torch.float32).eval()
    fused = _fused_from(eager).eval()
    x = _input((1, 5, 3, 3), torch.float32, channels_last)
    g = _input((1, 5, 3, 3), torch.float32, channels_last)
    y = torch.tensor([2])
    with fastgan.use_backend(backend):
        fo, fg, fp = _run(fused, x, y, g)
    eo, eg, ep = _run(eager, x, y, g)
    for a, b in zip(fo + fg + list(fp.values()), eo + eg + list(ep.values())):
        assert_close_scaled(a, b, 2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_precision(backend, dtype, channels_last):
    """No worse than twice eager's own error against the fp64 composite."""
    shape = (4, 24, 6, 5)
    ref = EagerCBN(shape[1], 0.2, torch.float64).train()
    eager = EagerCBN(shape[1], 0.2, dtype).train()
    eager.load_state_dict(ref.state_dict())
    fused = _fused_from(eager).train()
    with torch.no_grad():
        ref.bn.running_mean.copy_(eager.bn.running_mean)
        ref.bn.running_var.copy_(eager.bn.running_var)
    x = _input(shape, dtype, channels_last, mean=0.5, std=2.0)
    g = _input(shape, dtype, channels_last)
    y = _labels(shape[0])
    with fastgan.use_backend(backend):
        fo, fg, fp = _run(fused, x, y, g)
    eo, eg, ep = _run(eager, x, y, g)
    ro, rg, rp = _run(ref, x.double(), y, g.double())
    for f, e, r in zip(fo + fg + [fp["weight"], fp["bias"]], eo + eg + [ep["weight"], ep["bias"]],
                       ro + rg + [rp["weight"], rp["bias"]]):
        err_f = (f.double() - r).abs().max().item()
        err_e = (e.double() - r).abs().max().item()
        assert err_f <= 2 * err_e + 1e-3 * max(1.0, r.abs().max().item()), (err_f, err_e)


def test_functional_matches_composite():
    x = _input((3, 5, 7, 7), torch.float64, False, mean=2.0)
    s = torch.randn(3, 5, dtype=torch.float64)
    b = torch.randn(3, 5, dtype=torch.float64)
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    rm2, rv2 = rm.clone(), rv.clone()
    out = conditional_batch_norm_act(x, s, b, rm, rv, True, 0.3, 1e-3, 0.1)
    want = F.leaky_relu(F.batch_norm(x, rm2, rv2, None, None, True, 0.3, 1e-3)
                        * s[:, :, None, None] + b[:, :, None, None], 0.1)
    assert_close_scaled(out, want, 1e-12)
    assert_close_scaled(rm, rm2, 1e-12)
    assert_close_scaled(rv, rv2, 1e-12)
    # no running statistics: the batch's, even with training=False (F.batch_norm's rule)
    out = conditional_batch_norm_act(x, s, b, training=False)
    want = F.relu(F.batch_norm(x, None, None, None, None, True) * s[:, :, None, None]
                  + b[:, :, None, None])
    assert_close_scaled(out, want, 1e-12)


def test_scale_in_fp32_for_bf16_input():
    """scale / shift may be fp32 with a bf16 input (autocast keeps parameters in fp32)."""
    x = _input((2, 8, 4, 4), torch.bfloat16, False)
    s = torch.randn(2, 8, requires_grad=True)
    b = torch.randn(2, 8, requires_grad=True)
    for backend in BACKENDS:
        with fastgan.use_backend(backend):
            xi = x.clone().requires_grad_()
            out = conditional_batch_norm_act(xi, s, b)
            out.float().sum().backward()
        assert out.dtype == torch.bfloat16 and xi.grad.dtype == torch.bfloat16
        assert s.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
        s.grad = b.grad = None


# ---------------------------------------------------------------------------
# Gradients, registration, compile

@needs_c
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_gradgradcheck(training, channels_last):
    x = _input((3, 4, 3, 5), torch.float64, channels_last, std=2.0).requires_grad_()
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rm = torch.randn(4, dtype=torch.float64)
    rv = torch.rand(4, dtype=torch.float64) + 0.5

    def f(x, s, b):
        with fastgan.use_backend("cpu"):
            return conditional_batch_norm_act(x, s, b, rm.clone(), rv.clone(), training, 0.1,
                                              1e-5, 0.2)

    assert torch.autograd.gradcheck(f, (x, s, b))
    assert torch.autograd.gradgradcheck(f, (x, s, b))


@needs_c
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(channels_last):
    x = _input((3, 5, 4, 3), torch.float32, channels_last)
    s, b = torch.randn(3, 5), torch.randn(3, 5)
    rm, rv = torch.zeros(5), torch.ones(5)
    for training in (True, False):
        torch.library.opcheck(torch.ops.fastgan.cbn_act_forward.default,
                              (x.clone().requires_grad_(), s.clone().requires_grad_(), b, rm, rv,
                               training, 0.1, 1e-5, 0.2))
    _, mean, var = torch.ops.fastgan.cbn_act_forward(x, s, b, None, None, True, 0.1, 1e-5, 0.2)
    for mask in ([True, True, True], [False, True, False], [True, False, False]):
        torch.library.opcheck(torch.ops.fastgan.cbn_act_backward.default,
                              (torch.randn_like(x), x, s, b, mean, var, True, 1e-5, 0.2, mask))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    eager = EagerCBN(6, 0.0, torch.float32).train()
    fused = _fused_from(eager).train()
    ref = _fused_from(eager).train()
    with torch.no_grad():
        fused.running_mean.copy_(eager.bn.running_mean)
        fused.running_var.copy_(eager.bn.running_var)
        ref.load_state_dict(fused.state_dict())
    x = _input((4, 6, 5, 5), torch.float32, False)
    g = _input((4, 6, 5, 5), torch.float32, False)
    y = _labels(4)
    with fastgan.use_backend(backend):
        cm = torch.compile(fused, fullgraph=True, dynamic=False)
        co, cg, cp = _run(cm, x, y, g, steps=2)
        ro, rg, rp = _run(ref, x, y, g, steps=2)
    for a, b in zip(co + cg + list(cp.values()), ro + rg + list(rp.values())):
        assert_close_scaled(a, b, 2e-5)
    for k, v in ref.state_dict().items():
        assert_close_scaled(fused.state_dict()[k], v, 1e-6)


@needs_c
def test_saves_input_not_output():
    """The node keeps the input, scale, shift and C-sized statistics: no output-sized
    tensor besides the input."""
    x = _input((4, 8, 6, 6), torch.float32, False).requires_grad_()
    s = torch.randn(4, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with fastgan.use_backend("cpu"):
            conditional_batch_norm_act(x, s, torch.zeros(4, 8))
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


# ---------------------------------------------------------------------------
# Errors and determinism

def test_errors():
    m = fastgan.nn.ConditionalBatchNormAct2d(4, 3)
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="labels"):
        m(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        m(x, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="labels"):
        m(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels"):
        m(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(2, 4, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="scale must have shape"):
        conditional_batch_norm_act(x, torch.ones(4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shift must have shape"):
        conditional_batch_norm_act(x, torch.ones(2, 4), torch.zeros(2, 5))
    with pytest.raises(TypeError, match="scale must be floating"):
        conditional_batch_norm_act(x, torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="more than 1 value"):
        conditional_batch_norm_act(torch.randn(1, 4, 1, 1), torch.ones(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="negative_slope"):
        conditional_batch_norm_act(x, torch.ones(2, 4), torch.zeros(2, 4), negative_slope=-1.0)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        conditional_batch_norm_act(x, torch.ones(2, 4), torch.zeros(2, 4), torch.zeros(4))
    if HAVE_C:  # the C++ checks, for direct callers of the op
        with pytest.raises(RuntimeError, match="scale must have shape"):
            torch.ops.fastgan.cbn_act_forward(x, torch.ones(4), torch.zeros(2, 4), None, None,
                                              True, 0.1, 1e-5, 0.0)
    assert "num_classes=3" in repr(m) and "negative_slope=0.2" in repr(m)


@needs_c
@pytest.mark.parametrize("channels_last", [False, True])
def test_thread_count_determinism(channels_last):
    # large enough for a thread team and several cache groups / row blocks
    x = _input((8, 48, 24, 24), torch.float32, channels_last, mean=3.0)
    g = _input((8, 48, 24, 24), torch.float32, channels_last)
    s, b = torch.randn(8, 48), torch.randn(8, 48)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xi, si = x.clone().requires_grad_(), s.clone().requires_grad_()
            bi = b.clone().requires_grad_()
            with fastgan.use_backend("cpu"):
                out = conditional_batch_norm_act(xi, si, bi, negative_slope=0.2)
            out.backward(g)
            results.append([out, xi.grad, si.grad, bi.grad])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)
