"""bias_act (fastgan.functional, fastgan.nn.BiasAct): each activation against its formula
written out here, defaults, dims, gain/alpha/clamp, gradients to second order, dtypes,
layouts and every error message, on the reference and the compiled CPU backend; then the
compiled op against the reference (every activation x dtype x layout), its registration
(opcheck, torch.compile) and what it saves for backward. The Triton backend:
tests/test_bias_act_triton.py; CUDA: tests/test_bias_act_cuda.py."""

from __future__ import annotations

import math

import pytest
import torch

import fastgan
from fastgan import functional as FG
from fastgan.nn import BiasAct
from fastgan.ops import bias_act as ba_ops
from fastgan.ops import bias_act_reference

needs_ext = pytest.mark.skipif("cpu" not in ba_ops.KERNELS,
                               reason="fastgan._C was built without the bias_act op")
BACKENDS = [pytest.param("cpu", marks=needs_ext), "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with fastgan.use_backend(request.param):
        yield request.param

S2 = math.sqrt(2.0)
SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


def _sig(x):
    return 1 / (1 + torch.exp(-x))


# name -> (formula of act(x, alpha), default alpha, default gain)
FORMULAS = {
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: torch.where(x > 0, x, 0 * x), 0.0, S2),
    "lrelu": (lambda x, a: torch.where(x > 0, x, a * x), 0.2, S2),
    "tanh": (lambda x, a: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
             0.0, 1.0),
    "sigmoid": (lambda x, a: _sig(x), 0.0, 1.0),
    "elu": (lambda x, a: torch.where(x > 0, x, torch.exp(x) - 1), 0.0, 1.0),
    "selu": (lambda x, a: SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1)),
             0.0, 1.0),
    # torch's softplus (NVlabs uses it): linear above 20
    "softplus": (lambda x, a: torch.where(x > 20, x, torch.log(1 + torch.exp(x))), 0.0, 1.0),
    "swish": (lambda x, a: x * _sig(x), 0.0, S2),
}
ACTS = list(FORMULAS)


def _away_from_zero(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64) * 3 + 0.05
    return torch.where(torch.rand(*shape, generator=g) < 0.5, -x, x)


def test_defaults_table():
    from fastgan.ops.bias_act import ACTIVATIONS

    assert list(ACTIVATIONS) == ACTS
    for name, (_, alpha, gain) in FORMULAS.items():
        assert ACTIVATIONS[name].def_alpha == alpha and ACTIVATIONS[name].def_gain == gain


@pytest.mark.parametrize("act", ACTS)
def test_formula_with_defaults(act, backend):
    formula, alpha, gain = FORMULAS[act]
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3
    x[0, 0, 0, :2] = torch.tensor([25.0, -25.0], dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    want = formula(x + b.view(1, 5, 1, 1), alpha) * gain
    torch.testing.assert_close(FG.bias_act(x, b, act=act), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(FG.bias_act(x, act=act), formula(x, alpha) * gain,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1, -3])
def test_any_dim(dim, backend):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    b = torch.randn(x.shape[dim], dtype=torch.float64)
    shape = [1] * 4
    shape[dim] = -1
    want = torch.where(x + b.view(shape) > 0, x + b.view(shape), 0.2 * (x + b.view(shape)))
    torch.testing.assert_close(FG.bias_act(x, b, dim=dim, act="lrelu"), want * S2)
    # a mapping network's (N, C) with dim=1
    x2, b2 = torch.randn(4, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(FG.bias_act(x2, b2, act="linear", gain=0.5), (x2 + b2) * 0.5)


def test_alpha_gain_clamp(backend):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 4
    b = torch.randn(3, dtype=torch.float64)
    z = x + b.view(1, 3, 1, 1)
    lrelu = torch.where(z > 0, z, 0.1 * z)
    torch.testing.assert_close(FG.bias_act(x, b, act="lrelu", alpha=0.1, gain=1),
                               lrelu)
    # clamp comes after gain
    torch.testing.assert_close(FG.bias_act(x, b, act="lrelu", alpha=0.1, gain=3.0, clamp=2.5),
                               (lrelu * 3.0).clamp(-2.5, 2.5))
    torch.testing.assert_close(FG.bias_act(x, b, act="linear", clamp=0), torch.zeros_like(x))
    # alpha only shapes lrelu (NVlabs' kernels ignore it elsewhere)
    torch.testing.assert_close(FG.bias_act(x, act="elu", alpha=0.5), FG.bias_act(x, act="elu"))


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_second_order(act, backend):
    x = _away_from_zero(2, 3, 2, 3).requires_grad_()
    b = (torch.randn(3, dtype=torch.float64) * 0.01).requires_grad_()  # keeps x + b off 0
    fn = lambda x, b: FG.bias_act(x, b, act=act, gain=1.3, clamp=100.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_clamp_gradient_is_zero_outside(backend):
    x = torch.tensor([-3.0, -1.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    FG.bias_act(x, act="linear", clamp=2.0).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_channels_last_and_dtypes(backend):
    x = torch.randn(2, 6, 5, 7) * 3
    b = torch.randn(6)
    for act in ("lrelu", "swish", "tanh"):
        want = FG.bias_act(x, b, act=act, clamp=3.0)
        got = FG.bias_act(x.to(memory_format=torch.channels_last), b, act=act, clamp=3.0)
        torch.testing.assert_close(got, want)
        ref = FG.bias_act(x.double(), b.double(), act=act, clamp=3.0)
        for dtype, eps in ((torch.float16, 2 ** -10), (torch.bfloat16, 2 ** -7)):
            out = FG.bias_act(x.to(dtype), b.to(dtype), act=act, clamp=3.0)
            assert out.dtype == dtype
            # rounding x, b and the result to dtype: a few eps of the largest value
            assert (out.double() - ref).abs().max().item() <= 4 * eps * 6, (act, dtype)
    # a float32 bias on half input: the result keeps x's dtype
    assert FG.bias_act(x.half(), b, act="lrelu").dtype == torch.float16


def test_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"bias_act: b must have shape \(3,\) to match "
                                         r"dimension dim=1 of x .* got shape \(4,\)"):
        FG.bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"bias_act: b must have shape \(4,\) .* got shape "
                                         r"\(1, 4\)"):
        FG.bias_act(x, torch.zeros(1, 4), dim=2)
    with pytest.raises(ValueError, match="bias_act: unknown act 'gelu'; expected one of "
                                         "'linear', 'relu'"):
        FG.bias_act(x, act="gelu")
    with pytest.raises(ValueError, match="bias_act: clamp must be >= 0 or None, got -1"):
        FG.bias_act(x, clamp=-1)
    with pytest.raises(ValueError, match=r"bias_act: dim must be an int in \[-4, 4\) for 4-D "
                                         "x, got 4"):
        FG.bias_act(x, torch.zeros(3), dim=4)
    with pytest.raises(TypeError, match="bias_act: x must be a Tensor, got list"):
        FG.bias_act([1.0])
    with pytest.raises(TypeError, match="bias_act: x must be a floating-point tensor"):
        FG.bias_act(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="bias_act: gain must be a number or None, got str"):
        FG.bias_act(x, gain="2")
    with pytest.raises(ValueError, match="bias_act: unknown act 'relu6'"):
        BiasAct(3, act="relu6")


def test_module():
    m = BiasAct(3, act="lrelu", clamp=256.0, bias_init=0.5)
    assert [n for n, _ in m.named_parameters()] == ["bias"]
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(m(x), FG.bias_act(x, torch.full((3,), 0.5), act="lrelu",
                                                 clamp=256.0))
    m(x).sum().backward()
    assert m.bias.grad is not None and m.bias.grad.shape == (3,)
    assert list(BiasAct(act="tanh").parameters()) == []
    assert "act='lrelu'" in repr(m)


# ---------------------------------------------------------------------------
# The compiled op against the reference

def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref).abs().max().item() if a.numel() else 0.0


def _fwd_bwd(backend, x, b, dim, act, clamp, upstream):
    x = x.detach().requires_grad_()
    b = b.detach().requires_grad_()
    with fastgan.use_backend(backend):
        y = FG.bias_act(x, b, dim=dim, act=act, clamp=clamp)
        gx, gb = torch.autograd.grad(y, (x, b), upstream.to(y.dtype))
    return y, gx, gb


def _layouts():
    # (shape, dim, channels_last): runs of inner > 1, channels_last rows, 2-D rows (a
    # mapping network's (N, C)), a bias along the last dim, and a single-element inner
    return [((3, 5, 4, 7), 1, False), ((3, 5, 4, 7), 1, True), ((6, 37), 1, False),
            ((2, 3, 5, 6), 3, False), ((4, 3, 1, 1), 1, False)]


@needs_ext
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kernel_matches_reference(act, dtype):
    """Forward, grad_x and grad_b on every layout: fp64 to 1e-10, fp32 to ~1e-6, fp16/bf16
    no worse than twice eager's own error (both measured against fp64) plus one rounding."""
    g = torch.Generator().manual_seed(ACTS.index(act))
    for shape, dim, cl in _layouts():
        x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        b64 = torch.randn(shape[dim], generator=g, dtype=torch.float64)
        up = torch.randn(shape, generator=g, dtype=torch.float64)
        if cl:
            x64, up = (t.contiguous(memory_format=torch.channels_last) for t in (x64, up))
        clamp = 1.5 if act in ("linear", "lrelu", "swish") else None
        want = _fwd_bwd("reference", x64, b64, dim, act, clamp, up)
        got = _fwd_bwd("cpu", x64.to(dtype), b64.to(dtype), dim, act, clamp, up)
        eager = _fwd_bwd("reference", x64.to(dtype), b64.to(dtype), dim, act, clamp, up)
        assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
        if cl:
            assert got[0].is_contiguous(memory_format=torch.channels_last)
        for name, o, w, e in zip(("y", "grad_x", "grad_b"), got, want, eager):
            scale = max(w.abs().max().item(), 1.0)
            if dtype == torch.float64:
                tol = 1e-10 * scale
            elif dtype == torch.float32:
                tol = 2e-6 * scale
            else:
                # plus one rounding of the result to dtype
                tol = 2 * _err(e, w) + torch.finfo(dtype).eps * scale
            assert _err(o, w) <= tol, (name, shape, dim, cl, _err(o, w), tol)


@needs_ext
@pytest.mark.parametrize("act", ACTS)
def test_kernel_second_order_matches_reference(act):
    """Gradients of gradients (an R1 penalty's path) with respect to x and b."""
    x = _away_from_zero(3, 4, 3, 5, seed=7)
    b = torch.randn(4, dtype=torch.float64) * 0.01
    clamp = 2.0 if act in ("linear", "tanh", "swish") else None
    out = {}
    for backend in ("cpu", "reference"):
        xx, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
        with fastgan.use_backend(backend):
            y = FG.bias_act(xx, bb, act=act, clamp=clamp)
            gx, gb = torch.autograd.grad((y.square() + y * y.detach().cos()).sum(), (xx, bb),
                                         create_graph=True)
            penalty = gx.square().sum() + gb.square().sum() * 0.5
            out[backend] = torch.autograd.grad(penalty, (xx, bb), allow_unused=True)
    for got, want in zip(out["cpu"], out["reference"]):
        if want is None or not want.abs().sum():
            assert got is None or not got.abs().sum()
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@needs_ext
def test_third_order_raises():
    x = _away_from_zero(2, 3, 2, 2).requires_grad_()
    with fastgan.use_backend("cpu"):
        y = FG.bias_act(x, act="tanh")
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="third-order gradients of bias_act"):
            ggx.sum().backward()


@needs_ext
@pytest.mark.parametrize("act,saved", [("lrelu", 1), ("swish", 1), ("linear", 0),
                                       ("tanh", 1)])
def test_saves_one_tensor(act, saved):
    """The forward keeps one activation-sized tensor for backward (none for linear)."""
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    b = torch.zeros(8, requires_grad=True)
    big = []

    def pack(t):
        if t.numel() == x.numel():
            big.append(t)
        return t

    with fastgan.use_backend("cpu"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        FG.bias_act(x, b, act=act)
    assert len(big) == saved


@needs_ext
def test_large_parallel_and_deterministic():
    """Pieces cut across long runs and many rows; grad_b does not depend on threads."""
    g = torch.Generator().manual_seed(3)
    for shape, fmt in (((2, 3, 150, 130), torch.contiguous_format),
                       ((4, 64, 40, 40), torch.channels_last)):
        x = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
        b = torch.randn(shape[1], generator=g)
        up = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
        want = _fwd_bwd("reference", x.double(), b.double(), 1, "lrelu", None, up.double())
        threads = torch.get_num_threads()
        try:
            runs = []
            for n in (1, 2):
                torch.set_num_threads(n)
                runs.append(_fwd_bwd("cpu", x, b, 1, "lrelu", None, up))
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(runs[0][2], runs[1][2])
        for o, w in zip(runs[0], want):
            assert _err(o, w) <= 1e-5 * max(w.abs().max().item(), 1.0)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    fwd, bwd = torch.ops.fastgan.bias_act_forward.default, torch.ops.fastgan.bias_act_backward.default
    x = torch.randn(2, 3, 4, 5, dtype=dtype)
    b = torch.randn(3, dtype=dtype)
    for args in ((x.requires_grad_(), b.requires_grad_(), 1, "lrelu", 0.2, 1.4, -1.0),
                 (x.detach().contiguous(memory_format=torch.channels_last), b.detach(), 1,
                  "swish", 0.0, 1.0, 2.0),
                 (x.detach(), None, 1, "tanh", 0.0, 1.0, -1.0)):
        torch.library.opcheck(fwd, args)
    y = fwd(x.detach(), b.detach(), 1, "tanh", 0.0, 1.0, -1.0)
    g = torch.randn_like(y)
    for order in (1, 2):
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(bwd, (g, y, b.detach(), 1, "tanh", 0.0, 1.0, -1.0, order, mask))
    torch.library.opcheck(bwd, (g, None, None, 1, "linear", 0.0, 1.0, -1.0, 1, [True, False]))


@needs_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(x, b):
        return FG.bias_act(FG.bias_act(x, b, act="lrelu"), None, act="tanh", clamp=1.0)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with fastgan.use_backend("cpu"):
        for shape in ((2, 3, 4, 4), (3, 3, 5, 2)):  # a second shape: the dynamic path
            x = torch.randn(shape, requires_grad=True)
            b = torch.randn(3, requires_grad=True)
            got = compiled(x, b)
            want = step(x, b)
            torch.testing.assert_close(got, want)
            gx, gb = torch.autograd.grad(got.sum(), (x, b))
            wx, wb = torch.autograd.grad(want.sum(), (x, b))
            torch.testing.assert_close(gx, wx)
            torch.testing.assert_close(gb, wb)


@needs_ext
def test_kernel_errors():
    fwd = torch.ops.fastgan.bias_act_forward.default
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="unknown act 'gelu'"):
        fwd(x, None, 1, "gelu", 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"b must have shape \(3,\)"):
        fwd(x, torch.zeros(4), 1, "relu", 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="b has dtype Double but x has dtype Float"):
        fwd(x, torch.zeros(3, dtype=torch.float64), 1, "relu", 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="needs the saved tensor ref"):
        torch.ops.fastgan.bias_act_backward(x, None, None, 1, "tanh", 0.0, 1.0, -1.0, 1,
                                            [True, False])


@needs_ext
def test_any_dense_layout_in_place():
    """Any dense x is walked in place and y takes its strides (channels_last with the bias
    along H, a permuted tensor); a non-dense x (a slice) gives a contiguous y."""
    base = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    cases = [(base.contiguous(memory_format=torch.channels_last), 2, True),
             (base.permute(0, 2, 1, 3), 2, True),
             (base.transpose(1, 3), 3, True),
             (base[:, :, 1:4], 1, False)]
    for x, dim, dense in cases:
        b = torch.randn(x.shape[dim], dtype=torch.float64)
        up = torch.randn(x.shape, dtype=torch.float64)
        got = _fwd_bwd("cpu", x, b, dim, "swish", 1.0, up)
        want = _fwd_bwd("reference", x, b, dim, "swish", 1.0, up)
        assert got[0].stride() == (x.stride() if dense else x.contiguous().stride())
        for o, w in zip(got, want):
            torch.testing.assert_close(o, w, rtol=1e-12, atol=1e-12)
