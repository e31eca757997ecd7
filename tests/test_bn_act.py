"""Fused BatchNorm2d + LeakyReLU: parity with eager nn.BatchNorm2d + nn.LeakyReLU and with
the reference, gradients, registration, errors, layouts and backends."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import fastgan
from fastgan import _ext
from fastgan.functional import batch_norm_act
from fastgan.ops import bn_act as bn_act_op

from _testutil import assert_close_scaled, randomise_bn

HAVE_C = _ext.ext_loaded()
needs_c = pytest.mark.skipif(not HAVE_C, reason=f"fastgan._C not loaded: {_ext.ext_error()}")
BACKENDS = ["cpu", "reference"] if HAVE_C else ["reference"]

SHAPES = [(3, 33, 9, 11), (2, 5, 1, 1), (4, 7, 3, 5), (8, 16, 4, 4), (2, 3, 17, 64)]


def test_extension_loaded():
    """The README's setup builds fastgan._C; a build that silently fails must not pass CI."""
    assert HAVE_C, _ext.ext_error()
    assert hasattr(torch.ops.fastgan, "bn_act_forward")


def _eager(C, slope, dtype, **bn_kw):
    return nn.Sequential(nn.BatchNorm2d(C, dtype=dtype, **bn_kw), nn.LeakyReLU(slope)).train()


def _fused_from(eager):
    bn = eager[0]
    floats = [t for t in bn.state_dict().values() if t.is_floating_point()]
    m = fastgan.nn.BatchNormAct2d(bn.num_features, eps=bn.eps, momentum=bn.momentum,
                                  affine=bn.affine, track_running_stats=bn.track_running_stats,
                                  negative_slope=eager[1].negative_slope,
                                  dtype=floats[0].dtype if floats else None)
    m.load_state_dict(bn.state_dict())
    m.train(bn.training)
    return m


def _input(shape, dtype, channels_last, mean=0.0, std=1.0):
    x = (torch.randn(shape, dtype=torch.float64) * std + mean).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _run(module, x, grad, steps=1):
    """Forward + backward `steps` times; returns outputs, input grads and param grads."""
    outs, gxs = [], []
    for _ in range(steps):
        xi = x.detach().clone().requires_grad_()
        y = module(xi)
        y.backward(grad)
        outs.append(y.detach())
        gxs.append(xi.grad)
    params = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    return outs, gxs, params


# ---------------------------------------------------------------------------
# Parity with eager modules

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_parity_train_then_eval(backend, shape, dtype, tol, channels_last):
    C = shape[1]
    eager = _eager(C, 0.2, dtype)
    randomise_bn(eager[0])
    fused = _fused_from(eager)
    x = _input(shape, dtype, channels_last, mean=1.0, std=3.0)
    g = _input(shape, dtype, channels_last)
    with fastgan.use_backend(backend):
        fo, fg, fp = _run(fused, x, g, steps=3)
        fused.eval()
        fo_e, fg_e, _ = _run(fused, x, g)
    eo, eg, ep = _run(eager, x, g, steps=3)
    eager.eval()
    eo_e, eg_e, _ = _run(eager, x, g)
    for a, b in zip(fo + fg + fo_e + fg_e, eo + eg + eo_e + eg_e):
        assert_close_scaled(a, b, tol)
        if channels_last and min(shape[2:]) > 1 and shape[1] > 1:
            assert a.is_contiguous(memory_format=torch.channels_last)
    for k in ep:
        assert_close_scaled(fp[k.replace("0.", "")], ep[k], tol * 10)
    sd_f, sd_e = fused.state_dict(), eager[0].state_dict()
    assert sd_f.keys() == sd_e.keys()
    for k in sd_e:
        assert_close_scaled(sd_f[k], sd_e[k], tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("slope,momentum,affine,track", list(itertools.product(
    [0.0, 0.01, 0.2], [0.1, None], [True, False], [True, False])))
def test_parity_options(backend, slope, momentum, affine, track):
    shape = (3, 6, 5, 7)
    eager = _eager(shape[1], slope, torch.float64, momentum=momentum, affine=affine,
                   track_running_stats=track)
    randomise_bn(eager[0])
    fused = _fused_from(eager)
    x = _input(shape, torch.float64, False, mean=-0.5, std=2.0)
    g = _input(shape, torch.float64, False)
    for training in (True, False):
        eager.train(training)
        fused.train(training)
        with fastgan.use_backend(backend):
            fo, fg, fp = _run(fused, x, g, steps=3)
        eo, eg, ep = _run(eager, x, g, steps=3)
        for a, b in zip(fo + fg, eo + eg):
            assert_close_scaled(a, b, 1e-9)
        for k in ep:
            assert_close_scaled(fp[k.replace("0.", "")], ep[k], 1e-9)
        for k, v in eager[0].state_dict().items():
            assert_close_scaled(fused.state_dict()[k], v, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_bf16_error_at_most_twice_eager(backend, channels_last, training, param_dtype):
    """bf16 (large mean, small std): error against an fp64 reference within 2x eager's."""
    shape = (4, 12, 9, 11)
    ref = _eager(shape[1], 0.2, torch.float64)
    randomise_bn(ref[0])
    ref.train(training)
    eager = copy.deepcopy(ref).to(param_dtype)
    fused = _fused_from(ref).to(param_dtype)
    fused.train(training)
    x = _input(shape, torch.bfloat16, channels_last, mean=100.0, std=5.0)
    g = _input(shape, torch.bfloat16, channels_last)
    ro, rg, rp = _run(ref, x.double(), g.double())
    eo, eg, ep = _run(eager, x, g)
    with fastgan.use_backend(backend):
        fo, fg, fp = _run(fused, x, g)

    def err(a, b):
        return (a.double() - b.double()).abs().max().item()

    slack = 1e-3  # a couple of bf16 ulps of O(1) values, for ties where eager is exact
    assert err(fo[0], ro[0]) <= 2 * err(eo[0], ro[0]) + slack
    assert err(fg[0], rg[0]) <= 2 * err(eg[0], rg[0]) + slack * rg[0].abs().max().item()
    for k in ep:
        kf = k.replace("0.", "")
        assert err(fp[kf], rp[k]) <= 2 * err(ep[k], rp[k]) + slack * rp[k].abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_mean_fp32_statistics(backend):
    """Statistics must not be a naive sum of squares: |mean| >> std in fp32."""
    x = _input((8, 4, 16, 16), torch.float32, False, mean=1e4, std=1.0)
    rm, rv = torch.zeros(4), torch.ones(4)
    with fastgan.use_backend(backend):
        y = batch_norm_act(x, rm, rv, None, None, True, 1.0, 1e-5, 0.2)
    ref, *_ = bn_act_op.reference_forward(x.double(), None, None, None, None, True, 0.1, 1e-5,
                                          0.2)
    assert_close_scaled(y, ref, 2e-3)  # input rounding (ulp(1e4) = 1e-3) bounds what is achievable
    var64 = x.double().var(dim=(0, 2, 3), unbiased=True)
    assert_close_scaled(rv, var64, 1e-5)


@needs_c
def test_fp16_cpu_matches_reference():
    x = _input((3, 5, 7, 9), torch.float16, True, mean=2.0, std=3.0)
    w, b = torch.rand(5) + 0.5, torch.randn(5)
    with fastgan.use_backend("cpu"):
        y = batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, 0.2)
    ref, *_ = bn_act_op.reference_forward(x.double(), w.double(), b.double(), None, None, True,
                                          0.1, 1e-5, 0.2)
    assert_close_scaled(y, ref, 4e-3)
    assert y.dtype == torch.float16


@needs_c
@pytest.mark.parametrize("shape", [(2, 3, 512, 520), (4, 64, 32, 32), (8, 64, 64, 64)])
def test_layout_paths_agree_with_reference(shape):
    """Covers the NCHW streaming path (a channel larger than the cache block), the
    cache-blocked path, the NHWC paths with and without non-temporal stores (outputs of
    8 MiB and more, 64-byte rows), and non-dense (sliced) input."""
    x = _input(shape, torch.float32, False, mean=0.3, std=2.0)
    g = torch.randn_like(x)
    C = shape[1]
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, ::2]):
        xi = inp.detach().requires_grad_()
        with fastgan.use_backend("cpu"):
            y = batch_norm_act(xi, None, None, w, b, True, 0.1, 1e-5, 0.2)
        (gx,) = torch.autograd.grad(y, xi, g[:, :, : inp.shape[2]])
        xr = inp.double().requires_grad_()
        yr, *_ = bn_act_op.reference_forward(xr, w.double(), b.double(), None, None, True,
                                             0.1, 1e-5, 0.2)
        (gr,) = torch.autograd.grad(yr, xr, g[:, :, : inp.shape[2]].double())
        assert_close_scaled(y, yr, 2e-5)
        assert_close_scaled(gx, gr, 2e-5)


@needs_c
@pytest.mark.parametrize("C", [2, 3, 5, 7, 15])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_channels_last_few_channels_matches_reference(C, dtype, tol):
    """channels_last with fewer channels than a vector (the flat, period-wise CPU path):
    tails of rows that do not fill a period, several blocks of rows, eval and train."""
    for shape in ((7, C, 33, 35), (4, C, 64, 64)):
        x = _input(shape, dtype, True, mean=2.0, std=3.0)
        g = torch.randn_like(x)
        w = (torch.rand(C, dtype=dtype) + 0.5).requires_grad_()
        b = torch.randn(C, dtype=dtype).requires_grad_()
        rm, rv = torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
        for training in (True, False):
            stats = (None, None) if training else (rm, rv)
            xi = x.detach().requires_grad_()
            with fastgan.use_backend("cpu"):
                y = batch_norm_act(xi, *stats, w, b, training, 0.1, 1e-5, 0.2)
            assert y.is_contiguous(memory_format=torch.channels_last)
            got = torch.autograd.grad(y, (xi, w, b), g)
            xr = x.detach().double().requires_grad_()
            wr, br = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
            rs = (None, None) if training else (rm.double(), rv.double())
            yr, *_ = bn_act_op.reference_forward(xr, wr, br, *rs, training, 0.1, 1e-5, 0.2)
            ref = torch.autograd.grad(yr, (xr, wr, br), g.double())
            assert_close_scaled(y, yr, tol)
            for a, r in zip(got, ref):
                assert_close_scaled(a, r, tol)


@needs_c
@pytest.mark.parametrize("shape", [(3, 16, 5, 7), (2, 3, 9, 11)])
def test_backward_gradient_in_another_layout(shape):
    """An NCHW gradient for a channels_last input (a channels_last block whose output
    the caller made contiguous): the same bits as the gradient in the input's layout,
    and the input gradient in the input's layout."""
    x = _input(shape, torch.float32, True, mean=0.5, std=2.0)
    C = shape[1]
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    _, mean, var = torch.ops.fastgan.bn_act_forward(x, w, b, None, None, True, 0.1, 1e-5, 0.2)
    g = torch.randn(shape)
    for training in (True, False):
        args = (x, w, b, mean, var, training, 1e-5, 0.2, [True, True, True])
        nchw = torch.ops.fastgan.bn_act_backward(g, *args)
        same = torch.ops.fastgan.bn_act_backward(
            g.contiguous(memory_format=torch.channels_last), *args)
        assert nchw[0].is_contiguous(memory_format=torch.channels_last)
        for a, c in zip(nchw, same):
            assert torch.equal(a, c)


@needs_c
def test_thread_count_does_not_change_results():
    x = _input((6, 10, 13, 17), torch.float32, False, mean=5.0, std=2.0)
    g = torch.randn_like(x)
    results = []
    n0 = torch.get_num_threads()
    try:
        for n in (1, max(2, n0)):
            torch.set_num_threads(n)
            for inp, gi in ((x, g), (x.contiguous(memory_format=torch.channels_last), g)):
                xi = inp.detach().requires_grad_()
                with fastgan.use_backend("cpu"):
                    y = batch_norm_act(xi, None, None, None, None, True, 0.1, 1e-5, 0.2)
                results.append((y, torch.autograd.grad(y, xi, gi)[0]))
    finally:
        torch.set_num_threads(n0)
    k = len(results) // 2
    for (ya, ga), (yb, gb) in zip(results[:k], results[k:]):
        assert torch.equal(ya, yb) and torch.equal(ga, gb)


# ---------------------------------------------------------------------------
# Gradients and registration

def _grad_inputs(channels_last):
    x = _input((3, 4, 5, 3), torch.float64, channels_last, mean=0.5, std=2.0).requires_grad_()
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64).requires_grad_()
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    return x, w, b, rm, rv


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_gradcheck_and_gradgradcheck(backend, training, channels_last, slope):
    x, w, b, rm, rv = _grad_inputs(channels_last)

    def f(x, w, b):
        with fastgan.use_backend(backend):
            return batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, slope)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_without_affine(backend):
    x, *_ = _grad_inputs(False)

    def f(x):
        with fastgan.use_backend(backend):
            return batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, 0.2)

    assert torch.autograd.gradcheck(f, (x,))


@needs_c
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(training, channels_last, dtype):
    x, w, b, rm, rv = _grad_inputs(channels_last)
    x, w, b = (t.detach().to(dtype).requires_grad_() for t in (x, w, b))
    rm, rv = rm.to(dtype), rv.to(dtype)
    # in training the running statistics are updated in place: opcheck checks the mutation
    args = (x, w, b, rm, rv, training, 0.1, 1e-5, 0.2)
    torch.library.opcheck(torch.ops.fastgan.bn_act_forward.default, args)
    y, mean, var = torch.ops.fastgan.bn_act_forward(*args)
    g = torch.randn_like(y)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(torch.ops.fastgan.bn_act_backward.default,
                              (g, x.detach(), w.detach(), b.detach(), mean, var, training, 1e-5,
                               0.2, mask))
    torch.library.opcheck(torch.ops.fastgan.bn_act_forward.default,
                          (x, None, None, None, None, True, 0.1, 1e-5, 0.0))


@needs_c
def test_backward_saves_only_input_and_statistics():
    """What autograd keeps is the input and per-channel tensors, never the output."""
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    m = fastgan.nn.BatchNormAct2d(8)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with fastgan.use_backend("cpu"):
            y = m(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0] is x
    assert all(t.numel() == 8 for t in saved if t is not x)
    assert not any(t.data_ptr() == y.data_ptr() for t in saved)


@needs_c
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_compile_fullgraph(channels_last):
    torch._dynamo.reset()
    eager = _eager(6, 0.2, torch.float32)
    fused = _fused_from(eager)
    compiled = torch.compile(copy.deepcopy(fused), fullgraph=True)
    x = _input((4, 6, 5, 5), torch.float32, channels_last)
    g = torch.randn_like(x)
    with fastgan.use_backend("cpu"):
        co, cg, cp = _run(compiled, x, g, steps=2)
    eo, eg, ep = _run(eager, x, g, steps=2)
    for a, b in zip(co + cg, eo + eg):
        assert_close_scaled(a, b, 2e-5)
    assert_close_scaled(compiled.running_var, eager[0].running_var, 1e-6)
    assert int(compiled.num_batches_tracked) == 2


@needs_c
def test_double_backward_gradient_penalty_matches_eager():
    """create_graph=True (R1 / WGAN-GP style) goes through the differentiable composite."""
    eager = _eager(5, 0.2, torch.float64)
    randomise_bn(eager[0])
    fused = _fused_from(eager)
    x = _input((4, 5, 6, 6), torch.float64, False)
    out = []
    for m in (fused, eager):
        xi = x.clone().requires_grad_()
        with fastgan.use_backend("cpu"):
            y = m(xi)
            (g,) = torch.autograd.grad(y.square().sum(), xi, create_graph=True)
            g.square().sum().backward()
        out.append((g.detach(), [p.grad.clone() for p in m.parameters()]))
    assert_close_scaled(out[0][0], out[1][0], 1e-9)
    # Second-order terms: eager's batchnorm_double_backward and our composite sum in
    # different orders; both pass gradgradcheck, and agree to ~1e-9 relative.
    for a, b in zip(out[0][1], out[1][1]):
        assert_close_scaled(a, b, 1e-7)


# ---------------------------------------------------------------------------
# Module behaviour

def test_state_dict_round_trip_both_ways():
    bn = nn.BatchNorm2d(7)
    randomise_bn(bn)
    fused = fastgan.nn.BatchNormAct2d(7, negative_slope=0.0)
    fused.load_state_dict(bn.state_dict())
    bn2 = nn.BatchNorm2d(7)
    bn2.load_state_dict(fused.state_dict())
    for k, v in bn.state_dict().items():
        assert torch.equal(bn2.state_dict()[k], v)
    assert isinstance(fused, nn.BatchNorm2d)
    assert "BatchNorm" in type(fused).__name__
    assert "negative_slope=0.0" in repr(fused)


def test_eval_batch_of_one_ok_and_train_batch_of_one_rejected():
    m = fastgan.nn.BatchNormAct2d(3)
    x = torch.randn(1, 3, 1, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(x)
    m.eval()
    assert m(x).shape == x.shape


# ---------------------------------------------------------------------------
# Errors

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_errors(backend):
    rm, rv = torch.zeros(4), torch.ones(4)
    with fastgan.use_backend(backend):
        with pytest.raises(ValueError, match="4-D"):
            batch_norm_act(torch.randn(2, 4, 3), rm, rv, training=True)
        with pytest.raises(ValueError, match=r"running_mean must have shape \(4,\)"):
            batch_norm_act(torch.randn(2, 4, 3, 3), torch.zeros(5), rv, training=True)
        with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
            batch_norm_act(torch.randn(2, 4, 3, 3), rm, rv, weight=torch.ones(3), training=True)
        with pytest.raises(TypeError, match="floating-point"):
            batch_norm_act(torch.ones(2, 4, 3, 3, dtype=torch.int64), rm, rv, training=True)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            batch_norm_act(torch.randn(1, 4, 1, 1), rm, rv, training=True)
        with pytest.raises(ValueError, match="empty"):
            batch_norm_act(torch.randn(0, 4, 3, 3), rm, rv, training=True)
        with pytest.raises(ValueError, match="running_mean is on meta"):
            batch_norm_act(torch.randn(2, 4, 3, 3), rm.to("meta"), rv, training=True)
        with pytest.raises(ValueError, match="negative_slope"):
            batch_norm_act(torch.randn(2, 4, 3, 3), rm, rv, training=True, negative_slope=-1.0)


@needs_c
def test_compiled_op_checks_its_arguments():
    """The C++ op checks too, for callers of torch.ops.fastgan directly."""
    with pytest.raises(RuntimeError, match="weight must have shape"):
        torch.ops.fastgan.bn_act_forward(torch.randn(2, 4, 3, 3), torch.ones(3), None, None,
                                         None, True, 0.1, 1e-5, 0.2)
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.fastgan.bn_act_forward(torch.randn(2, 4), None, None, None, None, True,
                                         0.1, 1e-5, 0.2)


@needs_c
def test_one_autograd_for_every_caller():
    """The module, the functional API and the op itself all record the one C++ node, and
    agree on values and first and second derivatives with the reference backend."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bn = fastgan.nn.BatchNormAct2d(4, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(w), bn.bias.copy_(b)
    ys = [torch.ops.fastgan.bn_act_forward(x, w, b, None, None, True, 0.1, 1e-5, 0.2)[0],
          batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, 0.2), bn(x)]
    assert all(y.grad_fn.name() == "BnActBackward" for y in ys)
    with fastgan.use_backend("reference"):
        ref = batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, 0.2)
    g = torch.randn_like(ref)

    def derivatives(y, params):
        first = torch.autograd.grad(y, (x, *params), g, create_graph=True)
        second = torch.autograd.grad(sum(t.square().sum() for t in first), (x, *params))
        return first + second

    want = derivatives(ref, (w, b))
    for y, params in zip(ys, ((w, b), (w, b), (bn.weight, bn.bias))):
        assert_close_scaled(y, ref, 1e-12)
        for a, c in zip(derivatives(y, params), want):
            assert_close_scaled(a, c, 1e-9)


@needs_c
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_autograd_node_contract(channels_last, affine, training):
    """The C++ node behaves as autograd's own: gradcheck and gradgradcheck in both modes
    and layouts, with and without affine; a second backward without retain_graph raises;
    retain_graph allows it; an input modified in place before backward is caught."""
    torch.manual_seed(0)
    x, w, b, rm, rv = _grad_inputs(channels_last)
    stats = (None, None) if training else (rm, rv)

    def f(x, *wb):
        ww, bb = wb if affine else (None, None)
        y = torch.ops.fastgan.bn_act_forward(x, ww, bb, *stats, training, 0.1, 1e-5, 0.2)[0]
        assert y.grad_fn.name() == "BnActBackward"
        return y

    inputs = (x, w, b) if affine else (x,)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
    y = f(*inputs)
    y.sum().backward(retain_graph=True)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="second time|freed"):
        y.sum().backward()
    xi = x.detach().clone().requires_grad_()
    z = xi * 1.0
    y = f(z, *inputs[1:])
    with torch.no_grad():
        z.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@needs_c
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("slope", [0.0, 0.2, 1.0])
def test_backward_op_is_differentiable(channels_last, training, slope):
    """fastgan::bn_act_backward has its own autograd (what double backward runs): its
    derivatives in grad_out, input, weight and bias pass gradcheck against the kernel's
    finite differences. In training its statistics are those of the input."""
    torch.manual_seed(0)
    x, w, b, rm, rv = _grad_inputs(channels_last)
    go = torch.randn_like(x).requires_grad_()

    def f(go, x, w, b):
        mean, var = rm, rv
        if training:  # the statistics as functions of x, for the finite differences
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        return torch.ops.fastgan.bn_act_backward(go, x, w, b, mean, var, training, 1e-5, slope,
                                                 [True, True, True])

    assert torch.autograd.gradcheck(f, (go, x, w, b))
    args = (go.detach(), x.detach(), w.detach(), b.detach(), rm, rv, training, 1e-5, slope,
            [True, True, True])
    torch.library.opcheck(torch.ops.fastgan.bn_act_backward.default, args)
    torch.library.opcheck(torch.ops.fastgan.bn_act_backward.default,
                          (go, x, w, b) + args[4:], test_utils=["test_autograd_registration"])


@needs_c
def test_momentum_error_is_clear():
    x, w, b = torch.randn(2, 3, 4, 4), torch.rand(3), torch.randn(3)
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="momentum must be in"):
        bn_act_op.forward_with_stats(x, rm, rv, w, b, True, 1.5, 1e-5, 0.2)
