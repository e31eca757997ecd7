"""The DCGAN pair of `fastgan train`: every power-of-two size, pytorch/examples' layout at
64x64, and fastgan.convert fuses it with the same outputs."""

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
