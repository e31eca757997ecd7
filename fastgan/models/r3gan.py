"""R3GAN-style generator and discriminator (Huang, Gokaslan, Kuleshov and Tompkin, "The GAN
is dead; long live the GAN! A Modern GAN Baseline", NeurIPS 2024), sized for 32x32 images on
a CPU.

The design, as the paper describes it: no normalisation anywhere; residual blocks of
1x1 -> grouped 3x3 -> 1x1 convolutions with a bias + LeakyReLU (fastgan's fused `bias_act`)
after the first two; fix-up initialisation (the last convolution of each block starts at
zero, the others are scaled down with the number of blocks, so every block starts as the
identity); [1, 2, 1] FIR resampling (fastgan's `upfirdn2d`) in the transitions between
resolutions, with a 1x1 convolution where the width changes; a learned 4x4 basis modulated
by a linear map of z at the generator's input, and a 4x4 depthwise basis followed by a
linear layer at the discriminator's output. Class-conditional with `num_classes` > 0, as
R3GAN conditions: an embedding of the class joins z in G, and D's head projects onto the
class's embedding.

Both run on whichever backend fastgan selects for `bias_act` and `upfirdn2d` (the fused
kernels by default, the plain-PyTorch reference with `fastgan.use_backend("reference")`), so
the same model measures the kernels against eager (bench/bench_stylegan.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastgan import functional as FG
from fastgan.models.conditional import Projection, check_labels
from fastgan.nn import BiasAct

_SLOPE = 0.2
_ACT_GAIN = math.sqrt(2.0 / (1.0 + _SLOPE ** 2))  # keeps the variance through LeakyReLU


def _msr_init(weight: Tensor, gain: float) -> Tensor:
    """He (MSR) initialisation scaled by `gain`: std = gain / sqrt(fan_in)."""
    fan_in = weight.shape[1] * weight[0][0].numel()
    with torch.no_grad():
        return weight.normal_(0.0, gain / math.sqrt(fan_in))


def _conv(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)


class ResidualBlock(nn.Module):
    """x + conv1x1(act(conv3x3_grouped(act(conv1x1(x))))), act = bias + LeakyReLU(0.2)."""

    def __init__(self, channels: int, cardinality: int, expansion: int, num_blocks: int) -> None:
        super().__init__()
        wide = channels * expansion
        if wide % cardinality:
            raise ValueError(f"ResidualBlock: channels * expansion ({wide}) must be divisible "
                             f"by cardinality ({cardinality})")
        self.conv1, self.act1 = _conv(channels, wide), BiasAct(wide, "lrelu", _SLOPE, 1.0)
        self.conv2 = _conv(wide, wide, 3, groups=cardinality)
        self.act2 = BiasAct(wide, "lrelu", _SLOPE, 1.0)
        self.conv3 = _conv(wide, channels)
        # fix-up: the branch's variance shrinks with the number of blocks (3 convolutions per
        # block: num_blocks ** (-1 / (2 * 3 - 2))), and its last convolution starts at zero
        scale = num_blocks ** (-1.0 / 4.0)
        _msr_init(self.conv1.weight, _ACT_GAIN * scale)
        _msr_init(self.conv2.weight, _ACT_GAIN * scale)
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


class _Resample(nn.Module):
    """[1, 2, 1] FIR up- or downsampling by 2, and a 1x1 convolution where the width changes
    (after upsampling in G, before downsampling in D, so it runs at the lower resolution)."""

    def __init__(self, cin: int, cout: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.register_buffer("filter", FG.setup_filter([1, 2, 1]), persistent=False)
        self.conv = _conv(cin, cout) if cin != cout else None
        if self.conv is not None:
            _msr_init(self.conv.weight, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            if self.conv is not None:
                x = self.conv(x)
            return FG.upsample2d(x, self.filter)
        x = FG.downsample2d(x, self.filter)
        return self.conv(x) if self.conv is not None else x


def widths_for(image_size: int, width: int) -> tuple[int, ...]:
    """Widths per resolution from 4x4 up to image_size (a power of two >= 4): 2 * width at
    the two lowest resolutions, width above (`fastgan train --arch r3gan`, --ngf / --ndf)."""
    stages = max(1, int(image_size).bit_length() - 2)  # 4, 8, ..., image_size
    return tuple(2 * width if i < 2 else width for i in range(stages))


class Generator(nn.Module):
    """z (N, nz) or (N, nz, 1, 1) -> images (N, nc, 4 * 2 ** (len(widths) - 1), ...),
    widths per resolution from 4x4 up (default 32x32)."""

    def __init__(self, nz: int = 64, widths: tuple[int, ...] = (128, 128, 64, 64),
                 blocks_per_stage: int = 1, cardinality: int = 8, expansion: int = 2,
                 nc: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        self.nz, self.num_classes = nz, num_classes
        total = blocks_per_stage * len(widths)
        self.basis = nn.Parameter(torch.randn(widths[0], 4, 4))
        # conditional: an embedding of the class, N(0, 1) like z, joins z (R3GAN's design)
        self.embed = nn.Embedding(num_classes, nz) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight)
        self.project = nn.Linear(nz * (2 if num_classes else 1), widths[0], bias=False)
        _msr_init(self.project.weight, 1.0)
        stages = []
        for i, w in enumerate(widths):
            layers = [] if i == 0 else [_Resample(widths[i - 1], w, up=True)]
            layers += [ResidualBlock(w, cardinality, expansion, total)
                       for _ in range(blocks_per_stage)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.to_rgb = nn.Conv2d(widths[-1], nc, 1)
        _msr_init(self.to_rgb.weight, 1.0)
        nn.init.zeros_(self.to_rgb.bias)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        z = z.flatten(1)
        if self.embed is not None or labels is not None:
            check_labels(labels, z.shape[0], self.num_classes, "r3gan.Generator")
            z = torch.cat([z, self.embed(labels).to(z.dtype)], 1)
        x = self.basis.unsqueeze(0) * self.project(z).unsqueeze(-1).unsqueeze(-1)
        return self.to_rgb(self.stages(x))


class Discriminator(nn.Module):
    """images (N, nc, H, W) -> logits (N,), widths per resolution from the image's down to
    4x4 (default 32x32 in)."""

    def __init__(self, widths: tuple[int, ...] = (64, 64, 128, 128), blocks_per_stage: int = 1,
                 cardinality: int = 8, expansion: int = 2, nc: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        total = blocks_per_stage * len(widths)
        self.from_rgb = nn.Conv2d(nc, widths[0], 1, bias=False)
        _msr_init(self.from_rgb.weight, _ACT_GAIN)
        self.from_rgb_act = BiasAct(widths[0], "lrelu", _SLOPE, 1.0)
        stages = []
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [ResidualBlock(w, cardinality, expansion, total)
                                       for _ in range(blocks_per_stage)]
            if i + 1 < len(widths):
                layers.append(_Resample(w, widths[i + 1], up=False))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        c = widths[-1]
        self.basis = nn.Conv2d(c, c, 4, groups=c, bias=False)  # 4x4 depthwise, to 1x1
        _msr_init(self.basis.weight, 1.0)
        # conditional: the head maps to c features projected on the class's embedding
        self.head = nn.Linear(c, c if num_classes else 1, bias=False)
        _msr_init(self.head.weight, 1.0)
        self.projection = Projection(num_classes, c) if num_classes else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.head(self.basis(self.stages(self.from_rgb_act(self.from_rgb(x)))).flatten(1))
        if self.projection is None and labels is None:
            return h.squeeze(1)
        check_labels(labels, x.shape[0], self.num_classes, "r3gan.Discriminator")
        return self.projection(h, labels)


__all__ = ["Discriminator", "Generator", "ResidualBlock", "widths_for"]
