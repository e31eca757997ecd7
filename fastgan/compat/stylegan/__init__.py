"""StyleGAN-family ops without plugin builds: a drop-in for NVlabs' `torch_utils.ops`.

    from fastgan.compat.stylegan import bias_act, upfirdn2d   # instead of torch_utils.ops

gives modules with the functions, arguments (`impl=` is accepted and ignored), defaults
and module attributes of NVlabs' StyleGAN2-ADA / StyleGAN3 `bias_act` and `upfirdn2d`
(which R3GAN uses too). Or, before an unmodified checkout's own imports:

    import fastgan.compat.stylegan
    fastgan.compat.stylegan.install()
    import training.networks_stylegan2   # its torch_utils.ops.bias_act is fastgan's

Both run on fastgan's kernels (C++ CPU, Triton, CUDA; the backend fastgan selects), with
no JIT build.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

from fastgan.compat.stylegan import bias_act, upfirdn2d

# the checkout's module name -> the module that replaces it
REPLACED: dict[str, ModuleType] = {
    "torch_utils.ops.bias_act": bias_act,
    "torch_utils.ops.upfirdn2d": upfirdn2d,
}
# their parents: the checkout's own when it is on sys.path, else empty packages
PARENTS = ("torch_utils", "torch_utils.ops")


class _Loader(importlib.abc.Loader):
    """Loads a replaced name as fastgan's module object itself (one module, two names)."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.own_spec = module.__spec__

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        module.__spec__ = self.own_spec  # the import system set it to the alias's spec


class _EmptyPackageLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module

    def exec_module(self, module) -> None:
        pass


class StyleGANFinder(importlib.abc.MetaPathFinder):
    """Finds `torch_utils.ops.bias_act` / `.upfirdn2d` as fastgan's modules, before any
    other finder; finds `torch_utils` and `torch_utils.ops` as empty packages only when
    no other finder does (a checkout on sys.path keeps its own)."""

    def find_spec(self, fullname, path, target=None):
        module = REPLACED.get(fullname)
        if module is not None:
            return importlib.machinery.ModuleSpec(fullname, _Loader(module))
        if fullname in PARENTS:
            if importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
                return None  # the checkout's package
            spec = importlib.machinery.ModuleSpec(fullname, _EmptyPackageLoader(),
                                                  is_package=True)
            spec.submodule_search_locations = []
            return spec
        return None


def install() -> None:
    """Makes `torch_utils.ops.bias_act` and `torch_utils.ops.upfirdn2d` resolve to
    fastgan's modules for the rest of the process, with or without a StyleGAN checkout
    on sys.path, so the checkout's CUDA plugins are never built. Call it before the
    checkout's imports; names already imported from the originals are replaced in
    sys.modules and on their parent package, but a client module that bound the original
    earlier keeps it. Calling it again does nothing."""
    if not any(isinstance(f, StyleGANFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, StyleGANFinder())
    for name, module in REPLACED.items():
        if name in sys.modules and sys.modules[name] is not module:
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)


__all__ = ["bias_act", "install", "StyleGANFinder", "upfirdn2d"]
