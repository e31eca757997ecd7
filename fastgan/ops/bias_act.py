"""bias_act: StyleGAN's bias + activation + gain + clamp; backend choice and the compiled
op's registration.

The compiled op (csrc/bias_act.cpp) is
    fastgan::bias_act_forward(x, b, dim, act, alpha, gain, clamp) -> y
    fastgan::bias_act_backward(grad, ref, b, dim, act, alpha, gain, clamp, order,
                               output_mask) -> (grad_x, grad_b)
with alpha and gain resolved to numbers and clamp < 0 meaning no clamp. Its autograd is
in C++ beside the schemas: the forward keeps one tensor for backward (y, or x for swish,
or nothing for an unclamped linear), the backward computes grad_x and grad_b in one pass,
and gradients of gradients (R1 penalties) run the kernels too. The `triton` backend
(fastgan/ops/bias_act_triton.py, kernels/bias_act.py) has the same schemas and autograd;
the `reference` backend is fastgan/ops/bias_act_reference.py (plain torch ops), where the
argument checks live too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan import _backend, _ext
from fastgan.ops import bias_act_reference as reference
from fastgan.ops.bias_act_reference import ACTIVATIONS, Activation, check_args

OP = "bias_act"


def empty_as(t: Tensor) -> Tensor:
    """An uninitialised tensor laid out as the kernels lay out their elementwise outputs:
    with t's strides when t is dense and non-overlapping (any memory format, walked in
    place: csrc/bias_act_checks.h, memory_view), contiguous otherwise."""
    order = sorted(range(t.ndim), key=lambda d: -t.stride(d))
    dense = t.permute(order).is_contiguous() if t.ndim else True
    if dense:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


# ---------------------------------------------------------------------------
# Registration of the compiled op: fake kernels (autograd is in csrc/bias_act.cpp).

def _register_compiled() -> None:
    @torch.library.register_fake("fastgan::bias_act_forward")
    def _(x, b, dim, act, alpha, gain, clamp):
        return empty_as(x)

    @torch.library.register_fake("fastgan::bias_act_backward")
    def _(grad, ref, b, dim, act, alpha, gain, clamp, order, output_mask):
        gx = empty_as(grad) if output_mask[0] else grad.new_empty((0,))
        gb = (b.new_empty((grad.shape[dim],)) if output_mask[1] and b is not None
              else grad.new_empty((0,)))
        return gx, gb


KERNELS: tuple[str, ...] = ()
if _ext.ext_loaded() and hasattr(torch.ops.fastgan, "bias_act_forward"):
    _register_compiled()
    KERNELS = ("cpu", "cuda") if _ext.build_info().get("cuda") else ("cpu",)
    _forward = torch.ops.fastgan.bias_act_forward.default
if _backend.triton_installed():  # registered on first use: fastgan/ops/bias_act_triton.py
    KERNELS += ("triton",)


def _triton_forward():
    from fastgan.ops import bias_act_triton  # imports triton; registers the ops once
    return bias_act_triton.triton_bias_act_forward


# ---------------------------------------------------------------------------
# The op as the rest of fastgan calls it.

def bias_act(x: Tensor, b: Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None) -> Tensor:
    """See fastgan.functional.bias_act."""
    dim, spec = check_args(x, b, dim, act, alpha, gain, clamp)
    backend = _backend.select(OP, x.device, KERNELS)
    if backend == "reference":
        return reference.bias_act(x, b, dim, act, alpha, gain, clamp)
    if b is not None and b.dtype != x.dtype:  # as the reference: the bias in x's dtype
        b = b.to(x.dtype)
    args = (x, b, dim, act, float(spec.def_alpha if alpha is None else alpha),
            float(spec.def_gain if gain is None else gain),
            -1.0 if clamp is None else float(clamp))
    if backend == "triton":
        return _triton_forward()(*args)
    return _forward(*args)


__all__ = ["ACTIVATIONS", "Activation", "KERNELS", "OP", "bias_act", "empty_as"]
