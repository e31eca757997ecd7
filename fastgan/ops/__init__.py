"""fastgan ops: one module per op (registration, autograd, fake kernels, backend choice,
pure-PyTorch reference)."""

from fastgan.ops import bn_act

__all__ = ["bn_act"]
