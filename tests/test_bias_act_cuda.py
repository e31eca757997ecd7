"""The CUDA kernels of bias_act (csrc/cuda/bias_act.cu), called as the registered ops
torch.ops.fastgan.bias_act_forward / bias_act_backward on CUDA tensors: gpu-marked parity
with the reference (fastgan/ops/bias_act_reference.py) computed in fp64 from the same
inputs, for every activation, dtype and layout the kernels take apart (contiguous around
`dim`, channels_last, inner == 1, any other layout made contiguous, no bias), clamp,
order-2 backward, grad_b and output_mask, and fp64 gradcheck / gradgradcheck through the
C++ autograd."""

from __future__ import annotations

import pytest
import torch

from _testutil import assert_close_scaled
from fastgan import _ext
from fastgan.ops.bias_act_reference import ACTIVATIONS
from fastgan.ops.bias_act_reference import bias_act as reference

ACTS = list(ACTIVATIONS)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# forward: the kernel rounds once from fp32 (fp64) math, the oracle is fp64
FWD_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3,
           torch.bfloat16: 8e-3}
# backward: also the derivative read from the saved (rounded) y
BWD_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2,
           torch.bfloat16: 6e-2}

# (name, shape, dim, how x is laid out): every path of the kernels. Dense layouts run in
# place (the kernels view them in memory order), a non-dense x is made contiguous.
LAYOUTS = [
    ("nchw", (3, 5, 7, 9), 1, "contiguous"),              # backward columns (inner 63)
    ("nchw_rows", (2, 8, 16, 16), 1, "contiguous"),       # rows, vectorised
    ("nchw_rows_odd", (2, 3, 17, 19), 1, "contiguous"),   # rows, scalar (inner 323)
    ("cl", (2, 16, 5, 3), 1, "channels_last"),            # inner 1, vectorised forward
    ("cl_odd", (3, 6, 5, 7), 1, "channels_last"),         # inner 1, channels % V != 0
    ("fc", (37, 24), 1, "contiguous"),                    # inner 1
    ("dim0", (5, 4, 3), 0, "contiguous"),
    ("last_dim", (4, 3, 6), 2, "contiguous"),
    ("cl_dim2", (2, 3, 4, 5), 2, "channels_last"),        # bias along H of NHWC memory
    ("cl_dim3", (2, 3, 4, 5), 3, "channels_last"),
    ("permuted", (4, 6, 5, 8), 1, "transposed"),          # dense, H and W swapped in memory
    ("sliced", (4, 6, 5, 8), 1, "sliced"),                # not dense: made contiguous
    ("no_bias", (3, 5, 7, 9), None, "contiguous"),
    ("no_bias_cl", (2, 6, 3, 5), None, "channels_last"),
]


def _ops():
    assert _ext.ext_loaded(), f"fastgan._C is not loaded: {_ext.ext_error()}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::bias_act_forward", "CUDA"), \
        "fastgan._C was built without CUDA kernels"
    return torch.ops.fastgan


def _make(shape, fmt, dtype, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    if fmt == "channels_last":
        return x.cuda().contiguous(memory_format=torch.channels_last)
    if fmt == "transposed":
        return x.cuda().transpose(2, 3).contiguous().transpose(2, 3)
    if fmt == "sliced":
        return torch.cat([x, x], dim=-1).cuda()[..., ::2]
    return x.cuda()


def _bias(x, dim, seed=1):
    """A bias for x along dim (None for dim None); where x + b would be exactly 0 (the
    activations' kink, hit by chance in bf16), x is moved off it, in place."""
    if dim is None:
        return None
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(x.shape[dim], generator=g, dtype=torch.float64).to(x.dtype).cuda()
    bb = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x.copy_(torch.where(x.double() + bb.double() == 0, x + 0.5, x))
    return b


# clamps exact in every dtype: a clamped y is then exactly the clamp and saturated in the
# kernel's |y| >= clamp test (a clamp that rounds down in bf16 / fp16 would leave clamped
# values unmasked, with the derivative read at the clamped y: NVlabs' semantics too, but
# not what the fp64 oracle computes)


def _args(act, clamp):
    spec = ACTIVATIONS[act]
    alpha = 0.25 if act == "lrelu" else spec.def_alpha
    return alpha, spec.def_gain * 1.25, -1.0 if clamp is None else float(clamp)


def _ref_tensor(act, clamp, x, y):
    kind = ACTIVATIONS[act].ref
    if kind == "x":
        return x
    if kind == "y" or clamp is not None:
        return y
    return None


def _expected_grads(act, x, b, dim, alpha, gain, clamp, y, g, order):
    """grad_x and grad_b of the given order in fp64 from the reference's autograd, masked
    by |y| < clamp (the kernel's own y for activations that save it, y recomputed from x
    in fp64 for swish)."""
    s = x.double() if b is None else x.double() + b.double().reshape(
        [-1 if i == dim else 1 for i in range(x.ndim)])
    s = s.detach().requires_grad_()
    out = reference(s, None, 1, act, alpha, gain, None)
    (d1,) = torch.autograd.grad(out.sum(), s, create_graph=True)  # gain * act'(s)
    if order == 1:
        gx = g.double() * d1.detach()
    else:
        (d2,) = torch.autograd.grad(d1.sum(), s)  # gain * act''(s)
        if ACTIVATIONS[act].ref == "x":
            gx = g.double() * d2
        else:  # the derivative with respect to y = the one with respect to s / (dy/ds)
            gx = g.double() * d2 / d1.detach()
    if clamp >= 0:
        ysat = reference(s.detach(), None, 1, act, alpha, gain, None) \
            if ACTIVATIONS[act].ref == "x" else y.double()
        # the kernel compares in its compute type: a clamped fp32 y equals float32(clamp)
        c = torch.tensor(clamp, dtype=torch.float64 if x.dtype == torch.float64
                         else torch.float32).double()
        gx = torch.where(ysat.abs() < c, gx, torch.zeros_like(gx))
    gb = None
    if b is not None:
        gb = gx.sum([i for i in range(x.ndim) if i != dim])
    return gx, gb


@pytest.mark.gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
@pytest.mark.parametrize("clamp", [None, 0.75])
def test_forward_matches_reference(act, dtype, layout, clamp):
    ops = _ops()
    _, shape, dim, fmt = layout
    x = _make(shape, fmt, dtype)
    b = _bias(x, dim)
    alpha, gain, c = _args(act, clamp)
    y = ops.bias_act_forward(x, b, 1 if dim is None else dim, act, alpha, gain, c)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    if fmt != "sliced":  # dense: y has x's strides (memory format)
        assert y.stride() == x.stride()
    want = reference(x.double(), None if b is None else b.double(), 1 if dim is None else dim,
                     act, alpha, gain, clamp)
    assert_close_scaled(y, want, FWD_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
@pytest.mark.parametrize("clamp", [None, 0.75])
def test_backward_matches_reference(act, dtype, layout, clamp):
    ops = _ops()
    _, shape, dim, fmt = layout
    d = 1 if dim is None else dim
    x = _make(shape, fmt, dtype)
    b = _bias(x, dim)
    alpha, gain, c = _args(act, clamp)
    y = ops.bias_act_forward(x, b, d, act, alpha, gain, c)
    g = _make(shape, fmt, dtype, seed=2, scale=1.0)
    ref = _ref_tensor(act, clamp, x, y)
    gx, gb = ops.bias_act_backward(g, ref, b, d, act, alpha, gain, c, 1, [True, True])
    want_gx, want_gb = _expected_grads(act, x, b, d, alpha, gain, c, y, g, 1)
    assert gx.shape == x.shape and gx.dtype == x.dtype
    if fmt != "sliced":
        assert gx.stride() == g.stride()
    assert_close_scaled(gx, want_gx, BWD_TOL[dtype])
    if b is None:
        assert gb.numel() == 0
    else:
        assert gb.shape == b.shape and gb.dtype == b.dtype
        assert_close_scaled(gb, want_gb, BWD_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("act", [a for a in ACTS if ACTIVATIONS[a].has_2nd_grad])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1], LAYOUTS[3]],
                         ids=["nchw", "nchw_rows", "cl"])
@pytest.mark.parametrize("clamp", [None, 1.0])
def test_backward_order2_matches_reference(act, dtype, layout, clamp):
    ops = _ops()
    _, shape, dim, fmt = layout
    # |x + b| away from 0 (elu / selu switch there) and from saturation
    x = _make(shape, fmt, torch.float64, scale=1.0)
    x = (torch.sign(x) * (x.abs() + 0.3)).clamp(-2.5, 2.5).to(dtype)
    b = torch.zeros(x.shape[dim], dtype=dtype, device="cuda")
    alpha, gain, c = _args(act, clamp)
    y = ops.bias_act_forward(x, b, dim, act, alpha, gain, c)
    g = _make(shape, fmt, dtype, seed=3, scale=1.0)
    ref = _ref_tensor(act, clamp, x, y)
    gx, gb = ops.bias_act_backward(g, ref, b, dim, act, alpha, gain, c, 2, [True, True])
    want_gx, want_gb = _expected_grads(act, x, b, dim, alpha, gain, c, y, g, 2)
    assert_close_scaled(gx, want_gx, 10 * BWD_TOL[dtype])
    assert_close_scaled(gb, want_gb, 10 * BWD_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["linear", "lrelu", "swish"])
@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1], LAYOUTS[3]],
                         ids=["nchw", "nchw_rows", "cl"])
def test_backward_output_mask(act, layout):
    ops = _ops()
    _, shape, dim, fmt = layout
    x = _make(shape, fmt, torch.float32)
    b = _bias(x, dim)
    alpha, gain, c = _args(act, 1.5)
    y = ops.bias_act_forward(x, b, dim, act, alpha, gain, c)
    g = _make(shape, fmt, torch.float32, seed=2)
    ref = _ref_tensor(act, 1.5, x, y)
    full_gx, full_gb = ops.bias_act_backward(g, ref, b, dim, act, alpha, gain, c, 1,
                                             [True, True])
    gx, gb = ops.bias_act_backward(g, ref, b, dim, act, alpha, gain, c, 1, [False, True])
    assert gx.numel() == 0 and torch.equal(gb, full_gb)
    gx, gb = ops.bias_act_backward(g, ref, b, dim, act, alpha, gain, c, 1, [True, False])
    assert gb.numel() == 0 and torch.equal(gx, full_gx)
    gx, gb = ops.bias_act_backward(g, ref, None, dim, act, alpha, gain, c, 1, [True, True])
    if act != "swish":  # swish adds b to the saved x
        assert torch.equal(gx, full_gx)
    assert gb.numel() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("shape,fmt", [((16, 64, 64, 64), "contiguous"),
                                       ((16, 64, 64, 64), "channels_last"),
                                       ((2, 3, 300, 301), "contiguous"),
                                       ((4096, 512), "contiguous")])
def test_large_and_deterministic(shape, fmt):
    """Many blocks per channel (grid-stride, several partials), grad_b the same bits on
    every call."""
    ops = _ops()
    x = _make(shape, fmt, torch.float32)
    b = _bias(x, 1)
    y = ops.bias_act_forward(x, b, 1, "lrelu", 0.2, 1.41, -1.0)
    assert_close_scaled(y, reference(x.double(), b.double(), 1, "lrelu", 0.2, 1.41), 2e-6)
    g = _make(shape, fmt, torch.float32, seed=2)
    gx1, gb1 = ops.bias_act_backward(g, y, b, 1, "lrelu", 0.2, 1.41, -1.0, 1, [True, True])
    gx2, gb2 = ops.bias_act_backward(g, y, b, 1, "lrelu", 0.2, 1.41, -1.0, 1, [True, True])
    assert torch.equal(gx1, gx2) and torch.equal(gb1, gb2)
    want_gx, want_gb = _expected_grads("lrelu", x, b, 1, 0.2, 1.41, -1.0, y, g, 1)
    assert_close_scaled(gx1, want_gx, 2e-5)
    assert_close_scaled(gb1, want_gb, 1e-5)


@pytest.mark.gpu
def test_empty_and_errors():
    ops = _ops()
    x = torch.empty(0, 4, 3, 3, device="cuda")
    b = torch.randn(4, device="cuda")
    assert ops.bias_act_forward(x, b, 1, "relu", 0.0, 1.0, -1.0).shape == x.shape
    gx, gb = ops.bias_act_backward(x, x, b, 1, "relu", 0.0, 1.0, -1.0, 1, [True, True])
    assert gx.shape == x.shape and torch.equal(gb, torch.zeros_like(b))
    x = torch.randn(2, 4, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="unknown act"):
        ops.bias_act_forward(x, b, 1, "gelu", 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="b must have shape"):
        ops.bias_act_forward(x, b[:3], 1, "relu", 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.bias_act_forward(x, b.double(), 1, "relu", 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="needs ref"):
        ops.bias_act_backward(x, None, b, 1, "tanh", 0.0, 1.0, -1.0, 1, [True, True])
    with pytest.raises(RuntimeError, match="ref has shape"):
        ops.bias_act_backward(x, x[:1], b, 1, "tanh", 0.0, 1.0, -1.0, 1, [True, True])


@pytest.mark.gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_and_gradgradcheck(act, clamp, channels_last):
    _ops()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2 + 0.1
    x = torch.where(torch.rand(x.shape, generator=g) < 0.5, -x, x).cuda()  # away from 0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    b = (torch.rand(3, generator=g, dtype=torch.float64) * 0.05).cuda()
    x.requires_grad_()
    b.requires_grad_()
    alpha, gain, c = _args(act, clamp)

    def fn(x, b):
        return torch.ops.fastgan.bias_act_forward(x, b, 1, act, alpha, gain, c)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.gpu
def test_opcheck():
    _ops()
    import fastgan.ops.bias_act  # noqa: F401  (registers the fake kernels)

    x = torch.randn(2, 3, 4, 5, device="cuda")
    b = torch.randn(3, device="cuda")
    for xx, bb, dim in ((x, b, 1), (x.contiguous(memory_format=torch.channels_last),
                                    torch.randn(4, device="cuda"), 2)):
        torch.library.opcheck(torch.ops.fastgan.bias_act_forward.default,
                              (xx, bb, dim, "swish", 0.0, 1.4, -1.0))
        torch.library.opcheck(torch.ops.fastgan.bias_act_backward.default,
                              (torch.randn_like(xx), xx, bb, dim, "swish", 0.0, 1.4, -1.0, 1,
                               [True, True]))
