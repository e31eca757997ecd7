"""The models `fastgan train` builds; also used by the tests, the benchmarks and the examples."""

from fastgan.models.dcgan import Discriminator, Generator, spectral_norm_, weights_init

__all__ = ["Generator", "Discriminator", "weights_init", "spectral_norm_"]
