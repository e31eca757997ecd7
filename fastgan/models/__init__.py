"""Reference models used by the tests, the benchmarks and the examples."""

from fastgan.models.dcgan import Discriminator, Generator, weights_init

__all__ = ["Generator", "Discriminator", "weights_init"]
