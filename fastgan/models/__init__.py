"""The models `fastgan train` builds; also used by the tests, the benchmarks and the examples.
`fastgan.models.Generator` / `Discriminator` are the DCGAN pair (`dcgan.py`);
`fastgan.models.r3gan` holds an R3GAN-style pair on the StyleGAN-family ops."""

from fastgan.models import r3gan
from fastgan.models.dcgan import Discriminator, Generator, spectral_norm_, weights_init

__all__ = ["Generator", "Discriminator", "weights_init", "spectral_norm_", "r3gan"]
