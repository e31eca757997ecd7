"""DCGAN generator and discriminator for square images of any power-of-two size >= 16.

pytorch/examples' dcgan (main.py) at 64x64, generalised: the generator starts from a 4x4
map of `ngf * size/8` channels and doubles the resolution while it halves the channels
down to `ngf`, then to `nc`; the discriminator mirrors it. Plain torch layers in an
nn.Sequential named `main`, so `fastgan.convert` fuses them and, at 64x64, the
state_dict keys are the original script's (main.0.weight, main.1.running_mean, ...).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrizations

from fastgan.models.conditional import LabelledSequential, Projection, check_labels
from fastgan.nn import ConditionalBatchNormAct2d


def weights_init(m: nn.Module) -> None:
    """pytorch/examples' init: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm weights."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _doublings(image_size: int) -> int:
    """log2(image_size) - 2: the stride-2 layers between a 4x4 map and the image."""
    if (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 16
            or image_size & (image_size - 1)):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size!r}")
    return image_size.bit_length() - 3


def _bn_relu(ch: int, num_classes: int) -> list[nn.Module]:
    if num_classes:  # the class's own scale and shift after the batch statistics
        return [ConditionalBatchNormAct2d(ch, num_classes, negative_slope=0.0)]
    return [nn.BatchNorm2d(ch), nn.ReLU(True)]


class Generator(nn.Module):
    """(N, nz, 1, 1) noise -> (N, nc, image_size, image_size) image in [-1, 1].

    With `num_classes` > 0, class-conditional: forward(noise, labels), each BatchNorm ->
    ReLU a ConditionalBatchNormAct2d (in a LabelledSequential `main`)."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64,
                 num_classes: int = 0) -> None:
        super().__init__()
        n = _doublings(image_size)
        self.nz, self.num_classes = nz, num_classes
        ch = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False),
                                   *_bn_relu(ch, num_classes)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       *_bn_relu(ch // 2, num_classes)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = (LabelledSequential if num_classes else nn.Sequential)(*layers)

    def forward(self, input: Tensor, labels: Tensor | None = None) -> Tensor:
        if not self.num_classes and labels is None:
            return self.main(input)
        check_labels(labels, input.shape[0], self.num_classes, "dcgan.Generator")
        return self.main(input, labels)


class Discriminator(nn.Module):
    """(N, nc, image_size, image_size) image -> (N,) probability of being real
    (a logit with `sigmoid=False`, which the fused GAN loss wants).

    With `num_classes` > 0 (and sigmoid=False), class-conditional: forward(images, labels)
    adds a projection of the last 4x4 features, summed over positions, to the logit."""

    def __init__(self, ndf: int = 64, nc: int = 3, sigmoid: bool = True,
                 image_size: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        if num_classes and sigmoid:
            raise ValueError("Discriminator: a conditional discriminator outputs logits "
                             "(sigmoid=False)")
        self.num_classes = num_classes
        n = _doublings(image_size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, inplace=True)]
        ch = ndf
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        last = nn.Conv2d(ch, 1, 4, 1, 0, bias=False)
        if num_classes:  # the last conv apart: the projection reads the features it reads
            self.main = nn.Sequential(*layers)
            self.last = last
            self.projection = Projection(num_classes, ch)
            return
        layers.append(last)
        if sigmoid:
            layers.append(nn.Sigmoid())
        self.main = nn.Sequential(*layers)

    def forward(self, input: Tensor, labels: Tensor | None = None) -> Tensor:
        if not self.num_classes and labels is None:
            return self.main(input).view(-1, 1).squeeze(1)
        check_labels(labels, input.shape[0], self.num_classes, "dcgan.Discriminator")
        h = self.main(input)
        return self.last(h).flatten() + self.projection(h.sum((2, 3)), labels)


def spectral_norm_(module: nn.Module) -> nn.Module:
    """Put torch's spectral-norm parametrization on every Conv2d/ConvTranspose2d/Linear of
    `module`, in place (Miyato et al. 2018); `fastgan.convert` keeps it."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            parametrizations.spectral_norm(m)
    return module


__all__ = ["Generator", "Discriminator", "weights_init", "spectral_norm_"]
