"""SNGAN/BigGAN-style ResNet generator and discriminator for square images of any
power-of-two size >= 16 (Miyato et al., "Spectral Normalization for GANs", ICLR 2018, its
CIFAR-10 ResNet; the same blocks as BigGAN's).

Generator: z -> a linear map to a 4x4 map -> one up-block per doubling -> BatchNorm, ReLU,
3x3 conv to the image, tanh. An up-block is pre-activation: BatchNorm -> ReLU -> nearest
2x upsampling -> 3x3 conv -> BatchNorm -> ReLU -> 3x3 conv, plus a shortcut of upsampling
and a 1x1 conv. The unconditional generator keeps these layers in plain nn.Sequentials, so
`fastgan.convert` fuses them: the first BN -> ReLU as a pre-activation pair, the
conv -> BN -> ReLU as a block. The conditional one (`num_classes` > 0) replaces every
BatchNorm -> ReLU with fastgan's ConditionalBatchNormAct2d (statistics of the batch, then
the class's own scale and shift; de Vries et al. 2017, as SNGAN and BigGAN condition G).

Discriminator: down-blocks (ReLU -> 3x3 conv -> ReLU -> 3x3 conv -> 2x2 average pooling,
shortcut 1x1 conv -> pooling; the first block without the leading ReLU) down to 8x8, two
more blocks at 8x8, then ReLU, a sum over positions and a linear logit, plus the class
projection when conditional (Miyato and Koyama 2018). Spectral norm on request
(`fastgan train --spectral-norm`), as SNGAN uses it.

Widths: `ngf` for every generator block, `ndf` for every discriminator block (SNGAN's
CIFAR model is ngf=256, ndf=128; fastgan's default 64 keeps a CPU run practical).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastgan.models.conditional import LabelledSequential, Projection, check_labels
from fastgan.nn import ConditionalBatchNormAct2d


def _doublings(image_size: int) -> int:
    if (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 16
            or image_size & (image_size - 1)):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size!r}")
    return image_size.bit_length() - 3


def _conv(cin: int, cout: int, k: int, gain: float) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    nn.init.xavier_uniform_(conv.weight, gain)  # SNGAN's init: sqrt(2) inside, 1 outside
    nn.init.zeros_(conv.bias)
    return conv


def _norm_act(ch: int, num_classes: int) -> list[nn.Module]:
    """BatchNorm -> ReLU: two plain layers (fused by convert), or one conditional op."""
    if num_classes:
        return [ConditionalBatchNormAct2d(ch, num_classes, negative_slope=0.0)]
    return [nn.BatchNorm2d(ch), nn.ReLU()]


def _run(seq: nn.Sequential, x: Tensor, labels: Tensor | None) -> Tensor:
    return seq(x) if labels is None else seq(x, labels)


class UpBlock(nn.Module):
    """The generator's pre-activation residual block, 2x nearest upsampling."""

    def __init__(self, cin: int, cout: int, num_classes: int = 0) -> None:
        super().__init__()
        seq = LabelledSequential if num_classes else nn.Sequential
        g = math.sqrt(2.0)
        self.residual = seq(*_norm_act(cin, num_classes), nn.Upsample(scale_factor=2),
                            _conv(cin, cout, 3, g), *_norm_act(cout, num_classes),
                            _conv(cout, cout, 3, g))
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), _conv(cin, cout, 1, 1.0))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return _run(self.residual, x, labels) + self.shortcut(x)


class DownBlock(nn.Module):
    """The discriminator's residual block: [ReLU] -> conv -> ReLU -> conv [-> avg pool]."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool = False) -> None:
        super().__init__()
        g = math.sqrt(2.0)
        pool = [nn.AvgPool2d(2)] if down else []
        lead = [] if first else [nn.ReLU()]  # the image itself is not activated
        self.residual = nn.Sequential(*lead, _conv(cin, cout, 3, g), nn.ReLU(),
                                      _conv(cout, cout, 3, g), *pool)
        # SNGAN's first block pools before its 1x1 shortcut conv, the others after
        short = [_conv(cin, cout, 1, 1.0)] if cin != cout or down else []
        self.shortcut = nn.Sequential(*(pool + short if first else short + pool))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class Generator(nn.Module):
    """z (N, nz) or (N, nz, 1, 1) [and labels (N,)] -> (N, nc, image_size, image_size)."""

    def __init__(self, nz: int = 128, ngf: int = 64, nc: int = 3, image_size: int = 32,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.nz, self.num_classes = nz, num_classes
        self.ngf = ngf
        self.project = nn.Linear(nz, ngf * 16)
        nn.init.xavier_uniform_(self.project.weight)
        nn.init.zeros_(self.project.bias)
        self.blocks = nn.ModuleList(UpBlock(ngf, ngf, num_classes)
                                    for _ in range(_doublings(image_size)))
        seq = LabelledSequential if num_classes else nn.Sequential
        self.to_image = seq(*_norm_act(ngf, num_classes), _conv(ngf, nc, 3, 1.0), nn.Tanh())

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(labels, z.shape[0], self.num_classes, "resnet.Generator")
        x = self.project(z.flatten(1)).view(-1, self.ngf, 4, 4)
        for block in self.blocks:
            x = block(x, labels)
        return _run(self.to_image, x, labels)


class Discriminator(nn.Module):
    """(N, nc, image_size, image_size) [and labels (N,)] -> logits (N,)."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 32,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        downs = _doublings(image_size) - 1  # to 8x8
        blocks = [DownBlock(nc, ndf, down=True, first=True)]
        blocks += [DownBlock(ndf, ndf, down=True) for _ in range(downs - 1)]
        blocks += [DownBlock(ndf, ndf, down=False) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks, nn.ReLU())
        self.head = nn.Linear(ndf, 1)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.projection = Projection(num_classes, ndf) if num_classes else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(labels, x.shape[0], self.num_classes, "resnet.Discriminator")
        h = self.blocks(x).sum((2, 3))
        out = self.head(h).squeeze(1)
        return out if self.projection is None else out + self.projection(h, labels)


__all__ = ["Generator", "Discriminator", "UpBlock", "DownBlock"]
