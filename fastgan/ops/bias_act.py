"""bias_act: StyleGAN's bias + activation + gain + clamp.

Only the `reference` backend exists so far (fastgan/ops/bias_act_reference.py, plain torch
ops): this front is where the backend choice, the registered op and its fake kernels will
go when the C++/Triton/CUDA kernels land (issue 23). Until then every call runs the
reference, whatever `fastgan.use_backend` says.
"""

from __future__ import annotations

from torch import Tensor

from fastgan.ops import bias_act_reference as reference
from fastgan.ops.bias_act_reference import ACTIVATIONS, Activation

OP = "bias_act"


def bias_act(x: Tensor, b: Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None) -> Tensor:
    """See fastgan.functional.bias_act. Runs the reference (the only backend so far)."""
    return reference.bias_act(x, b, dim, act, alpha, gain, clamp)


__all__ = ["ACTIVATIONS", "Activation", "OP", "bias_act"]
