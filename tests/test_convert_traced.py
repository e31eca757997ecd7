"""fastgan.convert on modules that call their layers from forward() (torch.fx path,
fastgan.nn.traced): parity in both modes, state_dict, pickling, what is refused, memory,
gradient penalty and torch.compile."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.bench.common import saved_tensor_bytes
from fastgan.models import Generator, weights_init
from fastgan.nn import traced


class CustomG(nn.Module):
    """The DCGAN generator written with explicit calls, and every activation spelling."""

    def __init__(self, nz=16, ngf=8):
        super().__init__()
        self.nz = nz
        self.c1, self.b1 = nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8)
        self.c2, self.b2 = nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4)
        self.c3, self.b3 = nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2)
        self.c4, self.b4 = nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf)
        self.act = nn.ReLU(True)
        self.out = nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False)

    def forward(self, z):
        x = F.relu(self.b1(self.c1(z)))
        x = self.b2(self.c2(x)).relu_()
        x = torch.relu(self.b3(self.c3(x)))
        x = self.act(self.b4(self.c4(x)))
        return torch.tanh(self.out(x))

    def sample(self, n):
        return self(torch.randn(n, self.nz, 1, 1))


class CustomD(nn.Module):
    """A discriminator with LeakyReLU spelled as a function, a module and in place, and a
    BatchNorm with no activation after it."""

    def __init__(self, ndf=8):
        super().__init__()
        self.inp = nn.Conv2d(3, ndf, 4, 2, 1, bias=False)
        self.c2, self.b2 = nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2)
        self.c3, self.b3 = nn.Conv2d(ndf * 2, ndf * 4, 3, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4)
        self.c4, self.b4 = nn.Conv2d(ndf * 4, ndf * 4, 3, 1, 1), nn.BatchNorm2d(ndf * 4)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.head = nn.Conv2d(ndf * 4, 1, 4, 1, 0)

    def forward(self, x):
        x = F.leaky_relu(self.inp(x), 0.2)
        x = F.leaky_relu(self.b2(self.c2(x)), negative_slope=0.2, inplace=True)
        x = self.lrelu(self.b3(self.c3(x)))
        x = x + self.b4(self.c4(x))  # no activation: fused as BatchNorm alone
        return self.head(x).flatten(1)


def _close_scaled(a, b, tol=1e-3, msg=None):
    # (a conv bias that feeds a BatchNorm has a true gradient of 0: both sides give rounding)
    scale = max(b.abs().max().item(), 1e-3)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=msg)


def _init(m, seed=0):
    torch.manual_seed(seed)
    return m.apply(weights_init)


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_traced_parity_train_and_eval(dtype):
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for m, x in ((CustomG(), torch.randn(5, 16, 1, 1)), (CustomD(), torch.randn(6, 3, 33, 31))):
        m = _init(m).to(dtype)
        x = x.to(dtype)
        c, rep = fastgan.convert(m, report=True)
        n_chains = 4 if isinstance(m, CustomG) else 3
        assert len(rep.fused) == n_chains and all("traced forward" in f for f in rep.fused), rep
        assert type(c) is not type(m) and isinstance(c, type(m))
        assert type(c).__name__ == type(m).__name__ and type(m) in (CustomG, CustomD)
        for step in range(2):  # running statistics are updated the same way
            ye, yc = m(x), c(x)
            torch.testing.assert_close(yc, ye, **tol)
            (ye.square().sum()).backward()
            (yc.square().sum()).backward()
            ge, gc = _grads(m), _grads(c)
            for k in ge:
                if dtype == torch.float64:
                    torch.testing.assert_close(gc[k], ge[k], **tol, msg=k)
                else:  # fp32 convolutions in channels_last round differently
                    _close_scaled(gc[k], ge[k], msg=k)
            m.zero_grad(), c.zero_grad()
        for k, v in m.state_dict().items():
            torch.testing.assert_close(c.state_dict()[k], v, **tol)
        m.eval(), c.eval()
        with torch.no_grad():
            torch.testing.assert_close(c(x), m(x), **tol)


def test_traced_keeps_module_identity_state_dict_and_methods():
    g = _init(CustomG())
    keys = list(g.state_dict())
    c = fastgan.convert(g, inplace=True)
    assert c is g and traced.is_traced(g)
    assert list(g.state_dict()) == keys
    assert isinstance(g.c1, nn.ConvTranspose2d) and isinstance(g.b1, nn.BatchNorm2d)
    assert g.sample(3).shape == (3, 3, 64, 64)  # other methods and attributes are kept
    # class-name based init still finds Conv and BatchNorm; checkpoints load both ways
    fresh = CustomG()
    fresh.load_state_dict(g.state_dict())
    g.load_state_dict(_init(CustomG(), seed=5).state_dict())
    torch.manual_seed(3)
    g.apply(weights_init)
    torch.manual_seed(3)
    fresh.apply(weights_init)
    for (k, v), (k2, v2) in zip(fresh.named_parameters(), g.named_parameters()):
        assert k == k2 and torch.equal(v2, v), k  # weights_init sets parameters only


def test_traced_pickle_deepcopy_and_reconvert():
    g = _init(CustomG())
    c = fastgan.convert(g)
    z = torch.randn(4, 16, 1, 1)
    ref = c(z)
    buf = io.BytesIO()
    torch.save(c, buf)
    for other in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c),
                  torch.load(io.BytesIO(buf.getvalue()), weights_only=False)):
        assert traced.is_traced(other) and isinstance(other, CustomG)
        assert other.c1.weight is not c.c1.weight
        # same parameters and running statistics as c had before its second call
        torch.testing.assert_close(other.b1.running_mean, c.b1.running_mean)
    copied = copy.deepcopy(c)
    torch.testing.assert_close(copied(z), c(z))
    assert ref.shape == (4, 3, 64, 64)
    again, rep = fastgan.convert(c, report=True)
    assert traced.is_traced(again) and not rep.skipped


class _ModeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        x = F.relu(self.b(self.c(x)))
        if self.training:
            x = x + 0.1
        return x


class _DataDependent(_ModeDependent):
    def forward(self, x):
        x = F.relu(self.b(self.c(x)))
        if x.sum() > 0:
            return x
        return -x


class _SharedConvOutput(_ModeDependent):
    def forward(self, x):
        y = self.c(x)
        return F.relu(self.b(y)) + y


class _HookedBN(_ModeDependent):
    def __init__(self):
        super().__init__()
        self.b.register_forward_hook(lambda *a: None)


class _CountsCalls(_ModeDependent):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls = self.calls + 1  # tracing runs this Python too
        return F.relu(self.b(self.c(x))) * torch.ones(1)  # a tensor constant for fx


@pytest.mark.parametrize("cls, why", [(_ModeDependent, "self.training"),
                                      (_DataDependent, "could not be traced"),
                                      (_SharedConvOutput, None), (_HookedBN, None)])
def test_traced_refusals_leave_module_unchanged(cls, why):
    torch.manual_seed(0)
    m = cls()
    c, rep = fastgan.convert(m, report=True)
    assert not rep.fused and type(c) is cls
    if why:
        assert any(why in s for s in rep.skipped), rep
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(c(x), m(x))
    assert set(vars(c)) == set(vars(m))  # no tensor constants or other leftovers


def test_tracing_leaves_attributes_as_they_were():
    m = _CountsCalls()
    c, rep = fastgan.convert(m, inplace=True, report=True)
    assert len(rep.fused) == 1 and c is m and m.calls == 0
    x = torch.randn(2, 3, 7, 7)
    y = m(x)  # the traced forward froze the counter's update (fx's rule for attributes)
    assert y.shape == (2, 4, 5, 5)


def test_trace_false_reports_and_nested_modules():
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return x + F.leaky_relu(self.bn(self.conv(x)), 0.2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(4), Block(4)])
            self.seq = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.seq(x)

    torch.manual_seed(0)
    net = Net()
    c, rep = fastgan.convert(net, report=True, trace=False)
    assert len(rep.fused) == 1 and sum("trace=False" in s for s in rep.skipped) == 2
    c, rep = fastgan.convert(net, report=True)
    assert len(rep.fused) == 3, rep
    assert any(f.startswith("blocks.0 conv -> bn -> leaky_relu") for f in rep.fused), rep
    x = torch.randn(3, 4, 9, 9)
    torch.testing.assert_close(c(x), net(x), rtol=1e-4, atol=1e-5)


def test_traced_generator_saved_activation_memory_matches_sequential():
    torch.manual_seed(0)
    g = CustomG(nz=100, ngf=16)
    seq = Generator(100, 16)
    z = torch.randn(16, 100, 1, 1)
    eager = saved_tensor_bytes(lambda: g(z), tuple(g.parameters()))
    assert eager == saved_tensor_bytes(lambda: seq(z), tuple(seq.parameters()))
    gc, sc = fastgan.convert(g), fastgan.convert(seq)
    fused = saved_tensor_bytes(lambda: gc(z), tuple(gc.parameters()))
    assert fused == saved_tensor_bytes(lambda: sc(z), tuple(sc.parameters()))
    assert fused <= 0.6 * eager  # 0.55x at batch 64, ngf 64 (test_convert)


def test_traced_gradient_penalty_and_compile():
    torch._dynamo.reset()
    d = _init(CustomD())
    c = fastgan.convert(d)
    x = torch.randn(4, 3, 32, 32)

    def r1(net):
        net.zero_grad()
        xi = x.clone().requires_grad_()
        out = net(xi)
        g, = torch.autograd.grad(out.sum(), xi, create_graph=True)
        pen = g.flatten(1).square().sum(1).mean()
        (out.mean() + pen).backward()
        return pen.detach(), _grads(net)

    pe, ge = r1(d)
    pc, gc = r1(c)
    torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-7)
    for k in ge:
        _close_scaled(gc[k], ge[k], msg=k)
    compiled = torch.compile(copy.deepcopy(c), fullgraph=True)
    ref = copy.deepcopy(d)
    torch.testing.assert_close(compiled(x), ref(x), rtol=1e-4, atol=1e-5)


class _ViewInTheMiddle(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = F.leaky_relu(self.b1(self.c1(x)), 0.2)
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.view(x.shape[0], -1))  # a view: needs the NCHW tensor


def test_traced_layouts_channels_last_inside_nchw_outside():
    """As FusedSequential: an NCHW input runs channels_last through the convolutions and
    comes back NCHW (also before a view), a channels_last model stays channels_last."""
    torch.manual_seed(0)
    g = _init(CustomG())
    c = fastgan.convert(g)
    seen = []
    c.out.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    z = torch.randn(4, 16, 1, 1, requires_grad=True)
    y = c(z)
    assert seen == [False] and y.is_contiguous()  # the last conv ran channels_last
    # hooks registered after conversion still fire (that chain then runs unfused)
    fired = []
    h = c.b2.register_forward_hook(lambda *a: fired.append(1))
    torch.testing.assert_close(c(z), g(z), rtol=1e-4, atol=1e-5)
    assert fired == [1]
    h.remove()
    y.sum().backward()
    assert z.grad.is_contiguous()
    cl = copy.deepcopy(c).to(memory_format=torch.channels_last)
    y_cl = cl(z.detach().contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    m = _ViewInTheMiddle()
    mc, rep = fastgan.convert(m, report=True)
    assert len(rep.fused) == 2
    x = torch.randn(6, 3, 16, 16)
    torch.testing.assert_close(mc(x), m(x), rtol=1e-4, atol=1e-5)
