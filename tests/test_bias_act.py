"""bias_act (fastgan.functional, fastgan.nn.BiasAct): each activation against its formula
written out here, defaults, dims, gain/alpha/clamp, gradients to second order, dtypes,
layouts and every error message. Only the reference backend exists so far (issue 23)."""

from __future__ import annotations

import math

import pytest
import torch

from fastgan import functional as FG
from fastgan.nn import BiasAct

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
def test_formula_with_defaults(act):
    formula, alpha, gain = FORMULAS[act]
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3
    x[0, 0, 0, :2] = torch.tensor([25.0, -25.0], dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    want = formula(x + b.view(1, 5, 1, 1), alpha) * gain
    torch.testing.assert_close(FG.bias_act(x, b, act=act), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(FG.bias_act(x, act=act), formula(x, alpha) * gain,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1, -3])
def test_any_dim(dim):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    b = torch.randn(x.shape[dim], dtype=torch.float64)
    shape = [1] * 4
    shape[dim] = -1
    want = torch.where(x + b.view(shape) > 0, x + b.view(shape), 0.2 * (x + b.view(shape)))
    torch.testing.assert_close(FG.bias_act(x, b, dim=dim, act="lrelu"), want * S2)
    # a mapping network's (N, C) with dim=1
    x2, b2 = torch.randn(4, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(FG.bias_act(x2, b2, act="linear", gain=0.5), (x2 + b2) * 0.5)


def test_alpha_gain_clamp():
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
def test_gradcheck_second_order(act):
    x = _away_from_zero(2, 3, 2, 3).requires_grad_()
    b = (torch.randn(3, dtype=torch.float64) * 0.01).requires_grad_()  # keeps x + b off 0
    fn = lambda x, b: FG.bias_act(x, b, act=act, gain=1.3, clamp=100.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_clamp_gradient_is_zero_outside():
    x = torch.tensor([-3.0, -1.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    FG.bias_act(x, act="linear", clamp=2.0).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_channels_last_and_dtypes():
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
