"""The `triton` backend of the fused conditional BatchNorm2d + LeakyReLU op.

Registers, with torch.library.triton_op (so torch.compile traces into the kernels),
    fastgan::triton_cbn_act_forward   fastgan::cbn_act_forward without the running-statistics
                                      update (`forward` below adds it)
    fastgan::triton_cbn_act_backward  same schema and semantics as fastgan::cbn_act_backward
with the kernels of fastgan.kernels.cbn_act (and bn_act's batch statistics,
fastgan.kernels.bn_act.batch_stats), and the autograd of the forward: save the input,
scale, shift and the statistics, recompute in backward; with create_graph=True the
backward is the reference's, differentiated by autograd.

Imported on first use by fastgan/ops/cbn_act.py (it imports triton), never by
`import fastgan`. Under TRITON_INTERPRET=1 the kernels run on CPU tensors (tests only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan.kernels import bn_act as BK
from fastgan.kernels import cbn_act as K
from fastgan.ops.bn_act_reference import acc_dtype, update_running_stats
from fastgan.ops.cbn_act_reference import check_args, reference_backward

FORWARD = "fastgan::triton_cbn_act_forward"
BACKWARD = "fastgan::triton_cbn_act_backward"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(name: str, x: Tensor, scale: Tensor, shift: Tensor, mean: Tensor | None,
           var: Tensor | None, training: bool, eps: float, negative_slope: float) -> None:
    check_args(x, scale, shift, mean, var, training, 0.0, eps, negative_slope)
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name}: input dtype must be float32, float16, bfloat16 or float64, "
                        f"got {x.dtype}")
    if not training and (mean is None or var is None):
        raise ValueError(f"{name}: eval mode (training=False) needs running_mean and "
                         "running_var")


@torch.library.triton_op(
    FORWARD, mutates_args=(),
    schema="(Tensor input, Tensor scale, Tensor shift, Tensor? running_mean, "
           "Tensor? running_var, bool training, float eps, float negative_slope) "
           "-> (Tensor, Tensor, Tensor)")
def triton_cbn_act_forward(input: Tensor, scale: Tensor, shift: Tensor,
                           running_mean: Tensor | None, running_var: Tensor | None,
                           training: bool, eps: float, negative_slope: float):
    _check(FORWARD, input, scale, shift, running_mean, running_var, training, eps,
           negative_slope)
    acc = acc_dtype(input)
    if training:
        x = input.contiguous(memory_format=torch.channels_last if K.channels_last(input)
                             else torch.contiguous_format)
        mean, var = BK.batch_stats(x)
    else:
        x = input
        mean = running_mean.to(acc, copy=True).contiguous()
        var = running_var.to(acc, copy=True).contiguous()
    return K.forward(x, scale, shift, mean, var, eps, negative_slope), mean, var


@torch.library.triton_op(
    BACKWARD, mutates_args=(),
    schema="(Tensor grad_out, Tensor input, Tensor scale, Tensor shift, Tensor mean, "
           "Tensor var, bool training, float eps, float negative_slope, bool[3] output_mask) "
           "-> (Tensor, Tensor, Tensor)")
def triton_cbn_act_backward(grad_out: Tensor, input: Tensor, scale: Tensor, shift: Tensor,
                            mean: Tensor, var: Tensor, training: bool, eps: float,
                            negative_slope: float, output_mask: list[bool]):
    _check(BACKWARD, input, scale, shift, mean, var, False, eps, negative_slope)
    if grad_out.shape != input.shape or grad_out.dtype != input.dtype:
        raise ValueError(f"{BACKWARD}: grad_out must match input's shape {tuple(input.shape)} "
                         f"and dtype {input.dtype}, got {tuple(grad_out.shape)} "
                         f"{grad_out.dtype}")
    return K.backward(grad_out, input, scale, shift, mean, var, training, eps, negative_slope,
                      output_mask)


def _setup_context(ctx, inputs, output):
    x, scale, shift, _rm, _rv, training, eps, negative_slope = inputs
    _y, mean, var = output
    ctx.save_for_backward(x, scale, shift, mean, var)
    ctx.training, ctx.eps, ctx.negative_slope = training, eps, negative_slope
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx, grad_out, _gmean, _gvar):
    x, scale, shift, mean, var = ctx.saved_tensors
    need = ctx.needs_input_grad
    args = (x, scale, shift, mean, var, ctx.training, ctx.eps, ctx.negative_slope)
    if grad_out is None:
        gx = gs = gb = None
    elif torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        gx, gs, gb = reference_backward(grad_out, *args)
    else:
        gx, gs, gb = triton_cbn_act_backward(grad_out, *args, [need[0], need[1], need[2]])
    return (gx if need[0] else None, gs if need[1] else None, gb if need[2] else None,
            None, None, None, None, None)


triton_cbn_act_forward.register_autograd(_backward, setup_context=_setup_context)


def forward(input: Tensor, scale: Tensor, shift: Tensor, running_mean: Tensor | None,
            running_var: Tensor | None, training: bool, momentum: float, eps: float,
            negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """The backend's forward with fastgan::cbn_act_forward's signature and semantics: the
    triton op, then in training the running-statistics update (outside the op:
    torch.library registers autograd for functional ops only)."""
    if not training:
        return triton_cbn_act_forward(input, scale, shift, running_mean, running_var, False,
                                      eps, negative_slope)
    y, mean, var = triton_cbn_act_forward(input, scale, shift, None, None, True, eps,
                                          negative_slope)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(), momentum,
                             input.numel() // input.shape[1])
    return y, mean, var
