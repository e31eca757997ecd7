"""fastgan.convert on the classic DCGAN pair: what is fused, state_dict and checkpoints,
training parity with eager (Adam + BCELoss as in pytorch/examples), gradient penalty,
torch.compile, channels_last, and the saved-activation memory of the generator."""

from __future__ import annotations

import copy
import io
import logging
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.bench.common import saved_tensor_bytes
from fastgan.bench.explicit_dcgan import ExplicitDiscriminator, ExplicitGenerator, copy_weights
from fastgan.models import Discriminator, Generator, weights_init
from fastgan.nn import FusedSequential


def _close_scaled(a, b, tol=1e-3):
    """fp32 gradients: convolutions in another memory format round differently."""
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


def _pair(ngf=8, ndf=8, nz=100):
    G, D = Generator(nz, ngf), Discriminator(ndf)
    G.apply(weights_init), D.apply(weights_init)
    return G, D


def test_report_and_structure(caplog):
    G, D = _pair()
    with caplog.at_level(logging.INFO, logger="fastgan"):
        Gc, rep = fastgan.convert(G, report=True)
    assert len(rep.fused) == 4 and "4 block(s) fused" in caplog.text
    assert all("ConvTranspose2d -> BatchNorm2d -> ReLU" in f for f in rep.fused)
    Dc, rep = fastgan.convert(D, report=True)
    assert len(rep.fused) == 3 and all("Conv2d -> BatchNorm2d -> LeakyReLU" in f for f in rep.fused)
    assert type(Gc.main) is FusedSequential and type(G.main) is nn.Sequential  # not in place
    assert isinstance(Gc.main[0], nn.ConvTranspose2d) and isinstance(Gc.main[1], nn.BatchNorm2d)
    assert fastgan.convert(G, inplace=True) is G and type(G.main) is FusedSequential


def test_state_dict_checkpoints_and_init():
    G, D = _pair()
    for m in (G, D):
        c = fastgan.convert(m)
        assert list(c.state_dict()) == list(m.state_dict())
        for k, v in m.state_dict().items():
            assert torch.equal(c.state_dict()[k], v)
        # checkpoint round trip both ways
        buf = io.BytesIO()
        torch.save(c.state_dict(), buf)
        fresh = copy.deepcopy(m).apply(weights_init)
        fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        fastgan.convert(fresh).load_state_dict(m.state_dict())
        # whole-model pickling, and class-name based init still finds Conv and BatchNorm
        c2 = pickle.loads(pickle.dumps(c))
        assert list(c2.state_dict()) == list(m.state_dict())
        torch.manual_seed(3)
        m.apply(weights_init)
        torch.manual_seed(3)
        c.apply(weights_init)
        for k, v in m.state_dict().items():
            assert torch.equal(c.state_dict()[k], v), k


@pytest.mark.parametrize("style", ["sequential", "explicit"])
def test_dcgan_training_tracks_eager(style):
    """pytorch/examples' loop: D on real and fake.detach(), then G; Adam(2e-4, (0.5, 0.999)).
    `explicit`: the same pair calling its layers from forward() (the torch.fx path)."""
    torch.manual_seed(0)
    G, D = _pair(ngf=8, ndf=8)
    if style == "explicit":  # same weights, so the same tolerances apply
        G = copy_weights(ExplicitGenerator(100, 8), G)
        D = copy_weights(ExplicitDiscriminator(8), D)
    (Gc, rep_g), (Dc, rep_d) = fastgan.convert(G, report=True), fastgan.convert(D, report=True)
    assert len(rep_g.fused) == 4 and len(rep_d.fused) == 3
    data = torch.randn(6, 8, 3, 64, 64).tanh()
    noise = torch.randn(6, 8, 100, 1, 1)
    crit = nn.BCELoss()

    def train(netG, netD):
        optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        losses = []
        for real, z in zip(data, noise):
            netD.zero_grad()
            out = netD(real)
            errD_real = crit(out, torch.ones_like(out))
            errD_real.backward()
            fake = netG(z)
            out = netD(fake.detach())
            errD_fake = crit(out, torch.zeros_like(out))
            errD_fake.backward()
            optD.step()
            netG.zero_grad()
            out = netD(fake)
            errG = crit(out, torch.ones_like(out))
            errG.backward()
            optG.step()
            losses.append(((errD_real + errD_fake).item(), errG.item()))
        return losses

    le, lc = train(G, D), train(Gc, Dc)
    for (de, ge), (dc, gc) in zip(le, lc):
        assert abs(dc - de) <= 1e-3 * abs(de) and abs(gc - ge) <= 1e-3 * abs(ge), (le, lc)
    # Adam moves a weight by ~lr per step whatever the gradient's size, so where a
    # gradient is rounding-sized the two runs may step in opposite directions: up to
    # 2 * lr * steps apart (fp32 convolutions in channels_last round differently).
    for k, v in G.state_dict().items():
        torch.testing.assert_close(Gc.state_dict()[k], v, rtol=1e-3, atol=2 * 2e-4 * len(data))
    # eval sampling after training (BatchNorm folded into the convolutions)
    G.eval(), Gc.eval()
    with torch.no_grad():
        torch.testing.assert_close(Gc(noise[0]), G(noise[0]), rtol=1e-3, atol=2e-4)


@pytest.mark.parametrize("penalty", ["r1", "wgan-gp"])
def test_gradient_penalty(penalty):
    torch.manual_seed(0)
    D = Discriminator(ndf=8, sigmoid=False)
    D.apply(weights_init)
    Dc = fastgan.convert(D)
    real, fake = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)

    def run(net):
        net.zero_grad()
        if penalty == "r1":
            x = real.clone().requires_grad_()
        else:
            a = torch.rand(4, 1, 1, 1)
            x = (a * real + (1 - a) * fake).requires_grad_()
        out = net(x)
        g, = torch.autograd.grad(out.sum(), x, create_graph=True)
        norm = g.flatten(1).norm(dim=1)
        pen = (norm ** 2).mean() if penalty == "r1" else ((norm - 1) ** 2).mean()
        (out.mean() + 10 * pen).backward()
        return pen.detach(), [p.grad.clone() for p in net.parameters()]

    torch.manual_seed(1)
    pe, ge = run(D)
    torch.manual_seed(1)
    pc, gc = run(Dc)
    torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-7)
    for a, b in zip(gc, ge):
        _close_scaled(a, b)


def test_compile_fullgraph_converted_generator():
    torch._dynamo.reset()
    G, _ = _pair(ngf=4)
    Gc = fastgan.convert(G)
    compiled = torch.compile(copy.deepcopy(Gc), fullgraph=True)
    z = torch.randn(4, 100, 1, 1)
    ye, yc = G(z), compiled(z)
    torch.testing.assert_close(yc, ye, rtol=1e-4, atol=1e-5)
    ye.square().sum().backward()
    yc.square().sum().backward()
    for pe, pc in zip(G.parameters(), compiled.parameters()):
        _close_scaled(pc.grad, pe.grad)


def test_channels_last_end_to_end():
    G, D = _pair()
    Gc = fastgan.convert(G).to(memory_format=torch.channels_last)
    Dc = fastgan.convert(D).to(memory_format=torch.channels_last)
    z = torch.randn(4, 100, 1, 1).contiguous(memory_format=torch.channels_last)
    img = Gc(z)
    assert img.is_contiguous(memory_format=torch.channels_last)
    Dc(img).sum().backward()
    w = Gc.main[3].weight
    assert w.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(img, G(z), rtol=1e-4, atol=1e-5)
    # NCHW in, NCHW out (inference runs the convolutions in channels_last internally)
    Gn = fastgan.convert(G).eval()
    z = torch.randn(4, 100, 1, 1)
    with torch.no_grad():
        out = Gn(z)
        assert out.is_contiguous()
        torch.testing.assert_close(out, G.eval()(z), rtol=1e-4, atol=1e-5)


def test_nchw_training_runs_channels_last_inside():
    """Training a converted multi-layer Sequential on the CPU with NCHW input: the layers
    run in channels_last, the caller sees NCHW output and NCHW gradients, and values and
    gradients match eager."""
    torch.manual_seed(0)
    G, D = _pair()
    Gc, Dc = fastgan.convert(G), fastgan.convert(D)
    z = torch.randn(4, 100, 1, 1)
    img = torch.randn(4, 3, 64, 64, requires_grad=True)
    imgc = img.detach().clone().requires_grad_()
    fake, fakec = G(z), Gc(z)
    assert fakec.is_contiguous() and fakec.shape == fake.shape
    torch.testing.assert_close(fakec, fake, rtol=1e-4, atol=1e-5)
    out, outc = D(img) + D(fake).mean(), Dc(imgc) + Dc(fakec).mean()
    torch.testing.assert_close(outc, out, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    outc.sum().backward()
    assert imgc.grad.is_contiguous()
    _close_scaled(imgc.grad, img.grad)
    for (name, p), pc in zip(list(G.named_parameters()) + list(D.named_parameters()),
                             list(Gc.parameters()) + list(Dc.parameters())):
        assert pc.grad.stride() == p.stride(), name  # gradients keep the parameters' layout
        _close_scaled(pc.grad, p.grad)


@pytest.mark.parametrize("change", ["inplace", "optimizer", "new_parameter", "load_state_dict",
                                    "data_clamp"])
def test_weight_changes_are_seen(change):
    """Whatever way a weight changes between calls (WGAN's clipping goes through .data,
    which keeps the version counter), the next forward uses the new values."""
    torch.manual_seed(0)
    _, D = _pair()
    Dc = fastgan.convert(copy.deepcopy(D))
    x = torch.randn(4, 3, 64, 64)
    Dc(x).sum().backward()
    with torch.no_grad():
        Dc(x)
    conv = Dc.main[2]
    if change == "inplace":
        with torch.no_grad():
            conv.weight.mul_(-2.0)
    elif change == "optimizer":
        torch.optim.SGD(Dc.parameters(), lr=10.0).step()
    elif change == "new_parameter":
        conv.weight = nn.Parameter(torch.randn_like(conv.weight) * 0.05)
    elif change == "load_state_dict":
        sd = {k: v * 0.5 if k.endswith("weight") else v for k, v in D.state_dict().items()}
        Dc.load_state_dict(sd)
    else:
        for p in Dc.parameters():
            p.data.clamp_(-0.01, 0.01)
    D.load_state_dict(Dc.state_dict())
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(Dc(x), D(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("style", ["sequential", "explicit"])
def test_bf16_autocast(style):
    torch.manual_seed(0)
    G, D = _pair()
    if style == "explicit":
        G, D = copy_weights(ExplicitGenerator(100, 8), G), copy_weights(ExplicitDiscriminator(8), D)
    Gc, Dc = fastgan.convert(G), fastgan.convert(D)
    z = torch.randn(4, 100, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ye, yc = D(G(z)), Dc(Gc(z))
    ref = copy.deepcopy(D).double()(copy.deepcopy(G).double()(z.double()))
    assert yc.dtype == ye.dtype
    assert (yc.double() - ref).abs().max() <= 2 * (ye.double() - ref).abs().max() + 1e-3
    yc.float().sum().backward()


def test_not_converted():
    hooked = nn.Conv2d(3, 4, 3)
    hooked.register_forward_hook(lambda *a: None)
    seq = nn.Sequential(hooked, nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3), nn.LeakyReLU(0.2),          # no BatchNorm: left
                        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))           # no act: slope 1
    c, rep = fastgan.convert(seq, report=True)
    assert len(rep.fused) == 1 and "[5, 6]" in rep.fused[0]
    assert any("hooks" in s for s in rep.skipped)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(c(x), seq(x))


def test_generator_saved_activation_memory():
    """Saved activation bytes, training mode, batch 64, weights excluded: <= 0.55x eager
    (eager keeps the conv output and the BN output of every block; fastgan one of them)."""
    torch.manual_seed(0)
    G = Generator(100, 64)
    Gc = fastgan.convert(G)
    z = torch.randn(64, 100, 1, 1)
    eager = saved_tensor_bytes(lambda: G(z), tuple(G.parameters()))
    fused = saved_tensor_bytes(lambda: Gc(z), tuple(Gc.parameters()))
    block_outputs = 64 * 4 * (512 * 4 * 4 + 256 * 8 * 8 + 128 * 16 * 16 + 64 * 32 * 32)
    assert eager >= 2 * block_outputs  # conv output + BN/ReLU output per block
    assert fused <= 0.55 * eager, (fused, eager, fused / eager)
    # the floor: one conv output per block + the Tanh output + the noise + per-channel stats
    tanh_out, noise = 64 * 3 * 64 * 64 * 4, z.nbytes
    assert fused - block_outputs - tanh_out - noise < 64 * 1024


@pytest.mark.parametrize("style", ["sequential", "explicit"])
def test_spectral_norm_power_iteration_runs_once_per_call(style):
    """A spectral-normalised conv (torch.nn.utils.parametrizations) advances its power
    iteration on every read of `.weight` in training: a converted model must read it
    exactly as often as eager does, or its u/v vectors, and so its weights, drift."""
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    seq = nn.Sequential(spectral_norm(nn.Conv2d(3, 16, 4, 2, 1)), nn.BatchNorm2d(16),
                        nn.LeakyReLU(0.2), spectral_norm(nn.Conv2d(16, 32, 4, 2, 1)),
                        nn.BatchNorm2d(32), nn.LeakyReLU(0.2))
    if style == "sequential":
        m = seq
    else:
        class Explicit(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.b1, self.c2, self.b2 = seq[0], seq[1], seq[3], seq[4]

            def forward(self, x):
                return F.leaky_relu(self.b2(self.c2(F.leaky_relu(self.b1(self.c1(x)), 0.2))),
                                    0.2)
        m = Explicit()
    c, rep = fastgan.convert(m, report=True)
    assert len(rep.fused) == 2, rep
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-5)
    for k, v in m.state_dict().items():  # u and v of both power iterations included
        torch.testing.assert_close(c.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    m.eval(), c.eval()
    torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-5)


def test_pre_activation_batchnorm_relu():
    """A pre-activation residual branch (BN -> ReLU with no convolution before it in the
    Sequential, as in SNGAN/BigGAN generators): the BN -> ReLU pairs are fused, and
    outputs, gradients and running statistics match eager in training and eval."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Upsample(scale_factor=2),
                        nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.Conv2d(5, 5, 3, padding=1), nn.Tanh(),
                        nn.BatchNorm2d(5), nn.LeakyReLU(0.1))
    c, rep = fastgan.convert(seq, report=True)
    assert len(rep.fused) == 3, rep.fused
    assert "[0, 1] BatchNorm2d -> ReLU" in rep.fused[0]
    assert "[8, 9] BatchNorm2d -> LeakyReLU" in rep.fused[2]
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64)
    seq, c = seq.double(), c.double()
    for train in (True, False):
        seq.train(train), c.train(train)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = seq(xa), c(xb)
        torch.testing.assert_close(yb, ya)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xb.grad, xa.grad)
        for pa, pb in zip(seq.parameters(), c.parameters()):
            torch.testing.assert_close(pb.grad, pa.grad)
            pa.grad = pb.grad = None
        for ba, bb in zip(seq.buffers(), c.buffers()):
            torch.testing.assert_close(bb, ba)
