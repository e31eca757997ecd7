"""fastgan: fused PyTorch kernels for GANs.

    import fastgan
    y = fastgan.functional.batch_norm_act(x, rm, rv, w, b, training=True, momentum=0.1,
                                          eps=1e-5, negative_slope=0.2)
    block = fastgan.nn.BatchNormAct2d(64, negative_slope=0.2)
    cbn = fastgan.nn.ConditionalBatchNormAct2d(256, num_classes=10, negative_slope=0.0)
    y = cbn(x, labels)                  # class-conditional BatchNorm + ReLU, fused
    with fastgan.use_backend("reference"): ...
    netG = fastgan.convert(netG)        # fused Conv/ConvT -> BatchNorm2d -> (Leaky)ReLU runs
    fid = fastgan.metrics.frechet_distance(mu1, sigma1, mu2, sigma2)

The engine's subpackages (data, metrics, train), the drop-ins (compat) and the Triton
kernels are imported on first use, so `import fastgan` costs no more than the kernels' API.

See README.md and docs/ARCHITECTURE.md.
"""

from fastgan import _ext  # noqa: F401  (loads fastgan._C once, warns if it cannot)
from fastgan import functional, models, nn, ops
from fastgan._backend import available_backends, backend_status, use_backend
from fastgan._ext import FastganWarning
from fastgan.convert import ConversionReport, convert

__version__ = "0.1.0"

# Imported on first attribute access (PEP 562): heavier than the kernels' API, and not
# every user needs them.
_LAZY_SUBMODULES = frozenset({"bench", "compat", "data", "kernels", "metrics", "train"})


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also binds it here
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)


__all__ = ["convert", "ConversionReport", "functional", "models", "nn", "ops", "use_backend",
           "available_backends", "backend_status", "FastganWarning", "__version__"]
