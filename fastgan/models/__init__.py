"""The models `fastgan train` builds; also used by the tests, the benchmarks and the examples.
`fastgan.models.Generator` / `Discriminator` are the DCGAN pair (`dcgan.py`);
`fastgan.models.resnet` the SNGAN/BigGAN-style ResNet pair; `fastgan.models.r3gan` an
R3GAN-style pair on the StyleGAN-family ops. Each is class-conditional with
`num_classes` > 0 (`conditional.py`: what they share)."""

from fastgan.models import r3gan, resnet
from fastgan.models.conditional import num_classes
from fastgan.models.dcgan import Discriminator, Generator, spectral_norm_, weights_init

__all__ = ["Generator", "Discriminator", "weights_init", "spectral_norm_", "r3gan", "resnet",
           "num_classes"]
