"""fastgan: fused PyTorch kernels for GANs.

    import fastgan
    y = fastgan.functional.batch_norm_act(x, rm, rv, w, b, training=True, momentum=0.1,
                                          eps=1e-5, negative_slope=0.2)
    block = fastgan.nn.BatchNormAct2d(64, negative_slope=0.2)
    with fastgan.use_backend("reference"): ...
    netG = fastgan.convert(netG)        # fused Conv/ConvT -> BatchNorm2d -> (Leaky)ReLU runs

See README.md and docs/ARCHITECTURE.md.
"""

from fastgan import _ext  # noqa: F401  (loads fastgan._C once, warns if it cannot)
from fastgan import functional, models, nn, ops
from fastgan._backend import available_backends, backend_status, use_backend
from fastgan._ext import FastganWarning
from fastgan.convert import ConversionReport, convert

__version__ = "0.1.0"

__all__ = ["convert", "ConversionReport", "functional", "models", "nn", "ops", "use_backend",
           "available_backends", "backend_status", "FastganWarning", "__version__"]
