"""Bias + activation + gain + clamp (StyleGAN's `bias_act`): argument checks and the
pure-PyTorch reference.

Semantics are those of NVlabs' `torch_utils.ops.bias_act` (StyleGAN2-ADA, StyleGAN3):

    y = act(x + b, alpha) * gain, then clamped to [-clamp, clamp] when clamp >= 0

with `b` broadcast along dimension `dim` of `x`. `alpha` is used by `lrelu` only (its
negative slope); the other activations are fixed (elu's alpha is 1, selu has its own
constants, softplus is torch's with threshold 20) as in NVlabs' kernels. `alpha=None` and
`gain=None` take the activation's defaults (`ACTIVATIONS[act].def_alpha / .def_gain`).

The reference is plain torch ops, so autograd gives gradients of any order; it computes in
`x`'s dtype (the bias is cast to it) and returns a tensor of `x`'s shape and dtype. It
imports no backend: the test oracle and the `reference` backend.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Activation(NamedTuple):
    """One activation of `bias_act`: the function `func(x, alpha)`, its default alpha and
    gain, NVlabs' kernel index (`cuda_idx`), which saved tensor its gradient reads
    (`ref`: '' none, 'x' the input, 'y' the output) and whether its second derivative is
    nonzero (`has_2nd_grad`)."""

    func: Callable[[Tensor, float], Tensor]
    def_alpha: float
    def_gain: float
    cuda_idx: int
    ref: str
    has_2nd_grad: bool


_SQRT2 = math.sqrt(2.0)

ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, alpha: x, 0.0, 1.0, 1, "", False),
    "relu": Activation(lambda x, alpha: F.relu(x), 0.0, _SQRT2, 2, "y", False),
    "lrelu": Activation(lambda x, alpha: F.leaky_relu(x, alpha), 0.2, _SQRT2, 3, "y", False),
    "tanh": Activation(lambda x, alpha: torch.tanh(x), 0.0, 1.0, 4, "y", True),
    "sigmoid": Activation(lambda x, alpha: torch.sigmoid(x), 0.0, 1.0, 5, "y", True),
    "elu": Activation(lambda x, alpha: F.elu(x), 0.0, 1.0, 6, "y", True),
    "selu": Activation(lambda x, alpha: F.selu(x), 0.0, 1.0, 7, "y", True),
    "softplus": Activation(lambda x, alpha: F.softplus(x), 0.0, 1.0, 8, "y", True),
    "swish": Activation(lambda x, alpha: torch.sigmoid(x) * x, 0.0, _SQRT2, 9, "x", True),
}


# ---------------------------------------------------------------------------
# Validation (clear one-line errors, naming the argument)

def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_args(x: Tensor, b: Tensor | None, dim: int, act: str, alpha: float | None,
               gain: float | None, clamp: float | None) -> tuple[int, Activation]:
    """Checks the arguments; returns (`dim` made non-negative, the activation)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"bias_act: x must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"bias_act: x must be a floating-point tensor (float16, bfloat16, "
                        f"float32 or float64), got {x.dtype}")
    spec = ACTIVATIONS.get(act) if isinstance(act, str) else None
    if spec is None:
        raise ValueError(f"bias_act: unknown act {act!r}; expected one of "
                         + ", ".join(repr(a) for a in ACTIVATIONS))
    for name, v in (("alpha", alpha), ("gain", gain), ("clamp", clamp)):
        if v is not None and not _is_number(v):
            raise TypeError(f"bias_act: {name} must be a number or None, got "
                            f"{type(v).__name__}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be >= 0 or None, got {clamp}")
    if b is None:
        return dim, spec
    if not isinstance(b, Tensor):
        raise TypeError(f"bias_act: b must be a Tensor or None, got {type(b).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act: dim must be an int in [{-x.ndim}, {x.ndim}) for "
                         f"{x.ndim}-D x, got {dim!r}")
    dim = dim % x.ndim
    if b.ndim != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f"bias_act: b must have shape ({x.shape[dim]},) to match dimension "
                         f"dim={dim} of x (shape {tuple(x.shape)}), got shape {tuple(b.shape)}")
    if not b.is_floating_point():
        raise TypeError(f"bias_act: b must be a floating-point tensor, got {b.dtype}")
    if b.device != x.device:
        raise ValueError(f"bias_act: b is on {b.device} but x is on {x.device}")
    return dim, spec


# ---------------------------------------------------------------------------
# Reference: plain torch ops, differentiable to any order.

def bias_act(x: Tensor, b: Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None) -> Tensor:
    """`act(x + b, alpha) * gain`, clamped to [-clamp, clamp] (see the module docstring)."""
    dim, spec = check_args(x, b, dim, act, alpha, gain, clamp)
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    y = spec.func(x, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-float(clamp), float(clamp))
    return y


__all__ = ["Activation", "ACTIVATIONS", "bias_act", "check_args"]
