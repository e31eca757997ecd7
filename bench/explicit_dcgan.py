"""The DCGAN pair of fastgan.models written the other common way: layers as attributes,
called one by one from forward() (no nn.Sequential). fastgan.convert fuses these through
torch.fx (fastgan.nn.traced); the benchmarks time that path against eager and
torch.compile. Same layers, shapes and parameter order as Generator / Discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ExplicitGenerator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        chans = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        self.convs = nn.ModuleList(
            nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False)
            for i, (cin, cout) in enumerate(zip(chans, chans[1:])))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in chans[1:])
        self.to_rgb = nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        x = z
        for conv, bn in zip(self.convs, self.bns):
            x = F.relu(bn(conv(x)), inplace=True)
        return torch.tanh(self.to_rgb(x))


class ExplicitDiscriminator(nn.Module):
    def __init__(self, ndf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.from_rgb = nn.Conv2d(nc, ndf, 4, 2, 1, bias=False)
        chans = [ndf, ndf * 2, ndf * 4, ndf * 8]
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 4, 2, 1, bias=False)
                                   for cin, cout in zip(chans, chans[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in chans[1:])
        self.head = nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.from_rgb(x), 0.2, inplace=True)
        for conv, bn in zip(self.convs, self.bns):
            x = F.leaky_relu(bn(conv(x)), 0.2, inplace=True)
        return torch.sigmoid(self.head(x)).view(-1, 1).squeeze(1)


def copy_weights(dst: nn.Module, src: nn.Module) -> nn.Module:
    """Loads src's (the nn.Sequential model's) convolutions and BatchNorms into dst's, in
    order, so that both pairs start from the same weights; returns dst."""
    def layers(m, kinds):
        return [x for x in m.modules() if isinstance(x, kinds)]

    for kinds in ((nn.Conv2d, nn.ConvTranspose2d), (nn.BatchNorm2d,)):
        a, b = layers(dst, kinds), layers(src, kinds)
        assert len(a) == len(b), (len(a), len(b))
        for x, y in zip(a, b):
            x.load_state_dict(y.state_dict())
    return dst
