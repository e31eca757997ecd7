"""fastgan ops: one module per op (registration, autograd, fake kernels, backend choice,
pure-PyTorch reference)."""

from fastgan.ops import bn_act
from fastgan.ops import gan_loss

__all__ = ["bn_act"]
__all__ += ["gan_loss"]
