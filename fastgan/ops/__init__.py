"""fastgan ops. Per op: <op>.py (backend choice, the compiled op's fake kernels; its
autograd is in C++ next to the schema), <op>_reference.py (argument checks and the
pure-PyTorch reference, shared by every backend), <op>_triton.py (the Triton backend,
imported on first use)."""

from fastgan.ops import bias_act
from fastgan.ops import bn_act
from fastgan.ops import cbn_act
from fastgan.ops import gan_loss
from fastgan.ops import upfirdn2d

__all__ = ["bn_act"]
__all__ += ["gan_loss"]
__all__ += ["bias_act", "upfirdn2d"]
__all__ += ["cbn_act"]
