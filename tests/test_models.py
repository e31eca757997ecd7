"""The DCGAN pair of `fastgan train`: every power-of-two size, pytorch/examples' layout at
64x64, and fastgan.convert fuses it with the same outputs; the R3GAN-style pair on the
fused StyleGAN ops against the reference."""

from __future__ import annotations

import pytest
import torch

import fastgan
from fastgan.models import Discriminator, Generator, spectral_norm_, weights_init

# pytorch/examples dcgan's state_dict keys at 64x64 (checkpoints of the original script load)
G64_KEYS = [f"main.{i}.{k}" for i in (1, 4, 7, 10) for k in
            ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
G64_KEYS += [f"main.{i}.weight" for i in (0, 3, 6, 9, 12)]


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("nc", [1, 3])
def test_shapes(size, nc):
    G = Generator(nz=10, ngf=4, nc=nc, image_size=size)
    D = Discriminator(ndf=4, nc=nc, sigmoid=False, image_size=size)
    x = G(torch.randn(3, 10, 1, 1))
    assert x.shape == (3, nc, size, size) and x.abs().max() <= 1
    assert D(x).shape == (3,)
    # one BatchNorm per hidden layer: log2(size) - 2 in G, log2(size) - 3 in D
    n = size.bit_length() - 3
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules()) == n
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()) == n - 1


def test_64_keeps_the_original_layout():
    G = Generator()
    assert sorted(G.state_dict()) == sorted(G64_KEYS)
    assert G.main[0].out_channels == 512 and Discriminator().main[-2].in_channels == 512


@pytest.mark.parametrize("size", [15, 24, 8, 0])
def test_bad_size(size):
    with pytest.raises(ValueError, match="power of two"):
        Generator(image_size=size)


@pytest.mark.parametrize("sn", [False, True])
def test_convert_fuses_every_block(sn):
    G = Generator(nz=10, ngf=4, nc=1, image_size=32).apply(weights_init)
    D = Discriminator(ndf=4, nc=1, sigmoid=False, image_size=32).apply(weights_init)
    if sn:
        spectral_norm_(D)
    Gf, rep_g = fastgan.convert(G, report=True)
    Df, rep_d = fastgan.convert(D, report=True)
    assert len(rep_g.fused) == 3 and len(rep_d.fused) == 2 and not rep_d.skipped
    z = torch.randn(5, 10, 1, 1)
    torch.testing.assert_close(Gf(z), G(z), rtol=1e-5, atol=1e-5)
    x = torch.randn(5, 1, 32, 32)
    torch.testing.assert_close(Df(x), D(x), rtol=1e-5, atol=1e-5)


def test_r3gan_pair_same_numbers_on_every_cpu_backend():
    """The R3GAN-style pair (fastgan.models.r3gan): shapes, fix-up (every block starts as
    the identity), and one D step with R1 + R2 then a G step giving the same losses and
    parameter gradients, the same parameters included, on the fused CPU kernels as on the
    reference ops (fp64)."""
    import fastgan
    from fastgan.models import r3gan
    from fastgan.ops import bias_act as ba_ops

    backends = ["reference"] + (["cpu"] if "cpu" in ba_ops.KERNELS else [])
    results = {}
    for backend in backends:
        torch.manual_seed(0)
        G = r3gan.Generator(nz=8, widths=(16, 16, 8), cardinality=4).double()
        D = r3gan.Discriminator(widths=(8, 16, 16), cardinality=4).double()
        for block in (m for m in G.modules() if isinstance(m, r3gan.ResidualBlock)):
            x = torch.randn(2, block.conv1.in_channels, 4, 4, dtype=torch.float64)
            torch.testing.assert_close(block(x), x)  # fix-up: the identity at init
            torch.nn.init.normal_(block.conv3.weight, 0.0, 0.1)  # ... then give it a branch
        for block in (m for m in D.modules() if isinstance(m, r3gan.ResidualBlock)):
            torch.nn.init.normal_(block.conv3.weight, 0.0, 0.1)
        z = torch.randn(3, 8, dtype=torch.float64)
        real = torch.randn(3, 3, 16, 16, dtype=torch.float64)
        with fastgan.use_backend(backend):
            fake = G(z)
            assert fake.shape == (3, 3, 16, 16)
            x, f_in = real.clone().requires_grad_(), fake.detach().requires_grad_()
            r, f = D(x), D(f_in)
            assert r.shape == (3,)
            gr, gf = torch.autograd.grad((r.sum(), f.sum()), (x, f_in), create_graph=True)
            d_loss = (torch.nn.functional.softplus(-(r - f)).mean()
                      + gr.square().sum() + gf.square().sum())
            d_grads = torch.autograd.grad(d_loss, list(D.parameters()), allow_unused=True)
            g_loss = torch.nn.functional.softplus(-(D(fake) - r.detach())).mean()
            g_grads = torch.autograd.grad(g_loss, list(G.parameters()), allow_unused=True)
        results[backend] = (d_loss.detach(), g_loss.detach(), d_grads, g_grads)
    want = results["reference"]
    for backend, got in results.items():
        torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
        for a, b in zip(got[2] + got[3], want[2] + want[3]):
            assert (a is None) == (b is None), backend
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _step_grads(G, D, z, real, labels):
    """Losses and parameter gradients of one D step (hinge, R1) and one G step."""
    fake = G(z, labels)
    x = real.clone().requires_grad_()
    r, f = D(x, labels), D(fake.detach(), labels)
    (gr,) = torch.autograd.grad(r.sum(), x, create_graph=True)
    d_loss = torch.relu(1 - r).mean() + torch.relu(1 + f).mean() + gr.square().sum()
    d_grads = torch.autograd.grad(d_loss, list(D.parameters()), allow_unused=True)
    g_loss = -D(fake, labels).mean()
    g_grads = torch.autograd.grad(g_loss, list(G.parameters()), allow_unused=True)
    return [d_loss.detach(), g_loss.detach(), *d_grads, *g_grads]


@pytest.mark.parametrize("arch", ["dcgan", "resnet", "r3gan"])
@pytest.mark.parametrize("classes", [0, 4])
def test_every_arch_same_numbers_converted(arch, classes):
    """Every architecture of `fastgan train`, unconditional and class-conditional: the
    converted pair on fastgan's kernels gives the plain pair's (on the reference ops)
    losses and parameter gradients, the same parameters included, in fp64, and the same
    running statistics; a class-conditional pair's samples depend on the class."""
    from fastgan.models import r3gan, resnet

    torch.manual_seed(0)
    if arch == "dcgan":
        G, D = Generator(8, 4, 1, 16, classes), Discriminator(4, 1, False, 16, classes)
        G.apply(weights_init), D.apply(weights_init)
    elif arch == "resnet":
        G, D = resnet.Generator(8, 8, 1, 16, classes), resnet.Discriminator(8, 1, 16, classes)
    else:
        G = r3gan.Generator(8, (16, 8, 8), cardinality=4, nc=1, num_classes=classes)
        D = r3gan.Discriminator((8, 8, 16), cardinality=4, nc=1, num_classes=classes)
    for m in G.modules():  # class-dependent scales and shifts (they start at 1 and 0)
        if isinstance(m, fastgan.nn.ConditionalBatchNormAct2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.2), torch.nn.init.normal_(m.bias, 0.0, 0.2)
    G, D = G.double(), D.double()
    Gc, Dc = fastgan.convert(G), fastgan.convert(D)
    z = torch.randn(5, 8, 1, 1, dtype=torch.float64)
    real = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 3, 2]) if classes else None
    with fastgan.use_backend("reference"):
        want = _step_grads(G, D, z, real, labels)
    got = _step_grads(Gc, Dc, z, real, labels)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    for a, b in zip(list(Gc.buffers()) + list(Dc.buffers()), list(G.buffers()) + list(D.buffers())):
        torch.testing.assert_close(a, b)
    if classes:
        with torch.no_grad():
            x0 = G.eval()(z[:2], torch.tensor([0, 0]))
            x1 = G(z[:2], torch.tensor([1, 1]))
        assert not torch.allclose(x0, x1)
        with pytest.raises(ValueError, match=r"labels must be int64 of shape \(5,\)"):
            G(z, labels[:3])
        with pytest.raises(ValueError, match="needs labels"):
            D(real)
