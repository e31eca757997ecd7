"""Parameter gradients under gradient penalties (R1, WGAN-GP) through converted
discriminators (both convert styles: nn.Sequential and a traced forward) and through
single fused blocks.

A penalty step backpropagates through the first-order gradient (create_graph=True).
Every parameter must then get a gradient exactly where eager gives one: a zero tensor
where eager has zeros (a BatchNorm bias whose only effect on the input gradient is
through the activation's piecewise-constant slope), None where eager has None. An
optimizer skips a None gradient but still moves a parameter with a zero one (Adam's
momentum), so a lazy R1 / GP step would otherwise train differently than eager."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.models import Discriminator, weights_init
from fastgan.nn import BatchNormAct2d, Conv2dBNAct, ConvTranspose2dBNAct
from fastgan.nn.traced import is_traced

from _testutil import randomise_bn

PENALTIES = ("r1", "gp")
TOL = {torch.float64: dict(rtol=1e-8, atol=1e-10), torch.float32: dict(rtol=2e-3, atol=2e-4)}


def _penalty_grads(net: nn.Module, real: torch.Tensor, fake: torch.Tensor, kind: str):
    """The penalty alone, backpropagated as a lazy R1 / GP step does: (penalty, the
    parameters' .grad by name)."""
    net.zero_grad(set_to_none=True)
    if kind == "r1":
        x = real.clone().requires_grad_()
    else:  # WGAN-GP: on random interpolates, pushing the gradient norm to 1
        a = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype,
                       generator=torch.Generator().manual_seed(3))
        x = (a * real + (1 - a) * fake).requires_grad_()
    g, = torch.autograd.grad(net(x).sum(), x, create_graph=True)
    sq = g.flatten(1).square().sum(1)
    pen = sq.mean() if kind == "r1" else ((sq.sqrt() - 1) ** 2).mean()
    pen.backward()
    return pen.detach(), {n: p.grad for n, p in net.named_parameters()}


def _check(fused: nn.Module, eager: nn.Module, shape, kind: str, dtype: torch.dtype) -> dict:
    torch.manual_seed(1)
    real, fake = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    pe, ge = _penalty_grads(eager, real, fake, kind)
    pf, gf = _penalty_grads(fused, real, fake, kind)
    tol = TOL[dtype]
    torch.testing.assert_close(pf, pe, **tol)
    # the same parameters in the same order (the fused modules may name them otherwise)
    assert len(gf) == len(ge)
    for (name, want), got in zip(ge.items(), gf.values()):
        assert (got is None) == (want is None), (
            f"{name}: eager's gradient is {'None' if want is None else 'a tensor'}, "
            f"fastgan's is {'None' if got is None else 'a tensor'}")
        if want is not None:
            scale = max(want.abs().max().item(), 1.0)
            torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                       msg=name)
    return ge


class ExplicitD(nn.Module):
    """A DCGAN-style critic that calls its layers from forward() (converted by tracing),
    with the activation spelled three ways and a linear head."""

    def __init__(self, ndf: int = 4) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, ndf, 4, 2, 1, bias=False)
        self.c1, self.b1 = nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2)
        self.c2, self.b2 = nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4)
        self.c3, self.b3 = nn.Conv2d(ndf * 4, ndf * 4, 3, 1, 1), nn.BatchNorm2d(ndf * 4)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.head = nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False)

    def forward(self, x):
        x = F.leaky_relu(self.inp(x), 0.2)
        x = F.leaky_relu(self.b1(self.c1(x)), 0.2, inplace=True)
        x = self.act(self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        return self.head(x).flatten()


def _zero_grads(grads: dict) -> list[str]:
    return [n for n, g in grads.items() if g is not None and not g.any()]


@pytest.mark.parametrize("kind", PENALTIES)
@pytest.mark.parametrize("style", ["sequential", "traced"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_penalty_through_converted_discriminator(kind, style, dtype):
    torch.manual_seed(0)
    if style == "sequential":
        D, shape = Discriminator(ndf=4, sigmoid=False, image_size=32), (4, 3, 32, 32)
    else:
        D, shape = ExplicitD(), (4, 3, 32, 32)
    D = D.apply(weights_init).to(dtype)
    for m in D.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomise_bn(m)
    Dc = fastgan.convert(D)
    assert is_traced(Dc) == (style == "traced")
    grads = _check(Dc, copy.deepcopy(D), shape, kind, dtype)
    # the case this is about: the last BatchNorm's bias gets zeros in eager
    last_bn = [n for n, m in D.named_modules() if isinstance(m, nn.BatchNorm2d)][-1]
    assert f"{last_bn}.bias" in _zero_grads(grads)


def _block_pair(transposed: bool, slope: float | None, conv_bias: bool):
    """(eager conv -> bn [-> act], the fused block on copies of the same modules);
    slope None: no activation (a BatchNorm alone, fused as slope 1)."""
    conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = conv_cls(3, 5, 3, 2, 1, bias=conv_bias, dtype=torch.float64)
    bn = nn.BatchNorm2d(5, dtype=torch.float64)
    randomise_bn(bn)
    acts = [] if slope is None else [nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)]
    eager = nn.Sequential(conv, bn, *acts)
    cls = ConvTranspose2dBNAct if transposed else Conv2dBNAct
    fused = cls.from_modules(copy.deepcopy(conv), copy.deepcopy(bn),
                             1.0 if slope is None else slope)
    return eager, fused


@pytest.mark.parametrize("kind", PENALTIES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("slope,conv_bias", [(0.2, False), (0.0, True), (None, True)])
def test_penalty_through_one_block(kind, train, transposed, slope, conv_bias):
    torch.manual_seed(0)
    eager, fused = _block_pair(transposed, slope, conv_bias)
    eager.train(train), fused.train(train)
    grads = _check(fused, eager, (4, 3, 6, 7), kind, torch.float64)
    # with an activation, eager's BatchNorm bias gets zeros (through the activation's
    # slope); without one it gets None
    assert (grads["1.bias"] is None) == (slope is None)


@pytest.mark.parametrize("kind", PENALTIES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_penalty_through_batchnormact2d(kind, train, slope):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, dtype=torch.float64)
    randomise_bn(bn)
    fused = BatchNormAct2d(5, negative_slope=slope, dtype=torch.float64)
    fused.load_state_dict(bn.state_dict())
    act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    eager = nn.Sequential(bn, act)
    eager.train(train), fused.train(train)

    grads = _check(fused, eager, (4, 5, 3, 4), kind, torch.float64)
    assert "0.bias" in _zero_grads(grads)
