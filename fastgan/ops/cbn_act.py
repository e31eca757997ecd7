"""Conditional BatchNorm2d + LeakyReLU: the op as the rest of fastgan calls it, and its
backend choice.

Every backend's forward has one schema, bn_act's with (N, C) per-sample scale and shift in
place of the per-channel weight and bias:

    cbn_act_forward(x, scale, shift, running_mean(a!)?, running_var(b!)?, training,
                    momentum, eps, negative_slope) -> (y, mean, var)

training=True normalises with the batch statistics and, when running statistics are
given, updates them in place in the same call (nn.BatchNorm2d's rule); training=False
normalises with the running statistics. The backends:

    cpu, cuda   fastgan::cbn_act_forward / cbn_act_backward: csrc/cbn_act.cpp (schemas, the
                one C++ autograd), kernels in csrc/cpu/kernels/cbn_act.cpp and
                csrc/cuda/cbn_act.cu; fake kernels registered here
    triton      fastgan::triton_cbn_act_forward / _backward: fastgan/ops/cbn_act_triton.py
                (its `forward` adds the running-statistics update)
    reference   fastgan/ops/cbn_act_reference.py (also the argument checks)
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan import _backend, _ext
from fastgan.ops.bn_act_reference import acc_dtype, out_format
from fastgan.ops.cbn_act_reference import check_args, reference_forward

OP = "cbn_act"


def _register_fake_kernels() -> None:
    @torch.library.register_fake("fastgan::cbn_act_forward")
    def _(x, scale, shift, running_mean, running_var, training, momentum, eps, negative_slope):
        C = x.shape[1]
        y = torch.empty_like(x, memory_format=out_format(x))
        return y, x.new_empty((C,), dtype=acc_dtype(x)), x.new_empty((C,), dtype=acc_dtype(x))

    @torch.library.register_fake("fastgan::cbn_act_backward")
    def _(grad_out, x, scale, shift, mean, var, training, eps, negative_slope, output_mask):
        gx = (torch.empty_like(x, memory_format=out_format(x)) if output_mask[0]
              else x.new_empty((0,)))
        gs = x.new_empty(tuple(scale.shape) if output_mask[1] else (0,), dtype=scale.dtype)
        gb = x.new_empty(tuple(shift.shape) if output_mask[2] else (0,), dtype=shift.dtype)
        return gx, gs, gb


KERNELS: tuple[str, ...] = ()
_compiled = _ext.ext_loaded() and hasattr(torch.ops.fastgan, "cbn_act_forward")
if _compiled:
    _register_fake_kernels()
    KERNELS = ("cpu", "cuda") if _ext.build_info().get("cuda") else ("cpu",)
    _compiled_forward = torch.ops.fastgan.cbn_act_forward.default
if _backend.triton_installed():  # registered on first use: fastgan/ops/cbn_act_triton.py
    KERNELS += ("triton",)


def _forward_op(backend: str):
    """The forward op of `backend` (its autograd included)."""
    if backend == "reference":
        return reference_forward
    if backend == "triton":
        from fastgan.ops import cbn_act_triton  # imports triton; registers the ops once
        return cbn_act_triton.forward
    return _compiled_forward


def conditional_batch_norm_act(x: Tensor, scale: Tensor, shift: Tensor,
                               running_mean: Tensor | None = None,
                               running_var: Tensor | None = None, training: bool = True,
                               momentum: float = 0.1, eps: float = 1e-5,
                               negative_slope: float = 0.0) -> Tensor:
    """Fused `leaky_relu(batch_norm(x, running_mean, running_var, None, None, training,
    momentum, eps) * scale[:, :, None, None] + shift[:, :, None, None], negative_slope)`
    (see fastgan.functional)."""
    check_args(x, scale, shift, running_mean, running_var, training, momentum, eps,
               negative_slope)
    backend = _backend.select(OP, x.device, KERNELS)
    # without running statistics the batch's normalise, as in F.batch_norm
    return _forward_op(backend)(x, scale, shift, running_mean, running_var,
                                training or running_mean is None, momentum, eps,
                                negative_slope)[0]


__all__ = ["KERNELS", "OP", "check_args", "conditional_batch_norm_act", "reference_forward"]
