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


def out_format(t: Tensor, dim: int, per_channel: bool) -> torch.memory_format:
    """The memory format the kernels give their elementwise output: t's own when they walk
    it in place (contiguous; 4-D channels_last with the bias along dim 1 or no bias),
    contiguous otherwise (csrc/bias_act_checks.h, layout_of)."""
    cl = (t.ndim == 4 and not t.is_contiguous()
          and t.is_contiguous(memory_format=torch.channels_last))
    return torch.channels_last if cl and (not per_channel or dim == 1) else torch.contiguous_format


# ---------------------------------------------------------------------------
# Registration of the compiled op: fake kernels (autograd is in csrc/bias_act.cpp).

def _register_compiled() -> None:
    @torch.library.register_fake("fastgan::bias_act_forward")
    def _(x, b, dim, act, alpha, gain, clamp):
        return torch.empty_like(x, memory_format=out_format(x, dim, b is not None))

    @torch.library.register_fake("fastgan::bias_act_backward")
    def _(grad, ref, b, dim, act, alpha, gain, clamp, order, output_mask):
        per_channel = b is not None or output_mask[1]
        fmt = out_format(grad, dim, per_channel)
        if ref is not None and ref.stride() != grad.stride():
            fmt = torch.contiguous_format
        gx = (torch.empty_like(grad, memory_format=fmt) if output_mask[0]
              else grad.new_empty((0,)))
        dtype = b.dtype if b is not None else grad.dtype
        gb = grad.new_empty((grad.shape[dim],) if output_mask[1] else (0,), dtype=dtype)
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


__all__ = ["ACTIVATIONS", "Activation", "KERNELS", "OP", "bias_act", "out_format"]
