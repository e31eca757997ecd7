"""The `triton` backend of the fused BatchNorm2d + LeakyReLU op.

Registers, with torch.library.triton_op (so torch.compile traces into the kernels),
    fastgan::triton_bn_act_forward   fastgan::bn_act_forward without the running-statistics
                                     update (`forward` below adds it)
    fastgan::triton_bn_act_backward  same schema and semantics as fastgan::bn_act_backward
with the kernels of fastgan.kernels.bn_act, and the autograd of the forward (what the
compiled op's C++ autograd does: save the input and the statistics, recompute in
backward; with create_graph=True the backward is the reference's, differentiated by
autograd). Each triton_op is its own fake kernel: it only allocates and launches.

Imported on first use by fastgan/ops/bn_act.py (it imports triton), never by
`import fastgan`. Under TRITON_INTERPRET=1 the kernels run on CPU tensors (tests only;
fake-tensor tracing needs compiled kernels, i.e. a CUDA device).

fp64 inputs run in fp64 throughout (the accumulation type is the input's), so gradcheck
works on this backend as on the others.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan.kernels import bn_act as K
from fastgan.ops.bn_act_reference import check_args, reference_backward, update_running_stats

FORWARD = "fastgan::triton_bn_act_forward"
BACKWARD = "fastgan::triton_bn_act_backward"


def _check(name: str, x: Tensor, weight: Tensor | None, bias: Tensor | None,
           mean: Tensor | None, var: Tensor | None, training: bool, eps: float,
           negative_slope: float) -> None:
    check_args(x, mean, var, weight, bias, training, 0.0, eps, negative_slope)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"{name}: input dtype must be float32, float16, bfloat16 or float64, "
                        f"got {x.dtype}")
    if not training and (mean is None or var is None):
        raise ValueError(f"{name}: eval mode (training=False) needs running_mean and "
                         "running_var")


@torch.library.triton_op(
    FORWARD, mutates_args=(),
    schema="(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
           "Tensor? running_var, bool training, float eps, float negative_slope) "
           "-> (Tensor, Tensor, Tensor)")
def triton_bn_act_forward(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                          running_mean: Tensor | None, running_var: Tensor | None,
                          training: bool, eps: float, negative_slope: float):
    _check(FORWARD, input, weight, bias, running_mean, running_var, training, eps,
           negative_slope)
    return K.forward(input, weight, bias, running_mean, running_var, training, eps,
                     negative_slope)


@torch.library.triton_op(
    BACKWARD, mutates_args=(),
    schema="(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, Tensor mean, "
           "Tensor var, bool training, float eps, float negative_slope, bool[3] output_mask) "
           "-> (Tensor, Tensor, Tensor)")
def triton_bn_act_backward(grad_out: Tensor, input: Tensor, weight: Tensor | None,
                           bias: Tensor | None, mean: Tensor, var: Tensor, training: bool,
                           eps: float, negative_slope: float, output_mask: list[bool]):
    _check(BACKWARD, input, weight, bias, mean, var, False, eps, negative_slope)
    if grad_out.shape != input.shape or grad_out.dtype != input.dtype:
        raise ValueError(f"{BACKWARD}: grad_out must match input's shape {tuple(input.shape)} "
                         f"and dtype {input.dtype}, got {tuple(grad_out.shape)} "
                         f"{grad_out.dtype}")
    return K.backward(grad_out, input, weight, bias, mean, var, training, eps, negative_slope,
                      output_mask)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _rm, _rv, training, eps, negative_slope = inputs
    _y, mean, var = output
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.training, ctx.eps, ctx.negative_slope = training, eps, negative_slope
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx, grad_out, _gmean, _gvar):
    x, weight, bias, mean, var = ctx.saved_tensors
    need = ctx.needs_input_grad
    args = (x, weight, bias, mean, var, ctx.training, ctx.eps, ctx.negative_slope)
    if grad_out is None:
        gx = gw = gb = None
    elif torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        gx, gw, gb = reference_backward(grad_out, *args)
    else:
        mask = [need[0], need[1] and weight is not None, need[2] and bias is not None]
        gx, gw, gb = triton_bn_act_backward(grad_out, *args, mask)
    return (gx if need[0] else None, gw if need[1] and weight is not None else None,
            gb if need[2] and bias is not None else None, None, None, None, None, None)


triton_bn_act_forward.register_autograd(_backward, setup_context=_setup_context)


def forward(input: Tensor, weight: Tensor | None, bias: Tensor | None,
            running_mean: Tensor | None, running_var: Tensor | None, training: bool,
            momentum: float, eps: float, negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """The backend's forward with fastgan::bn_act_forward's signature and semantics: the
    triton op, then in training the running-statistics update. (The update is outside the
    op: torch.library registers autograd for functional ops only.)"""
    if not training:
        return triton_bn_act_forward(input, weight, bias, running_mean, running_var, False, eps,
                                     negative_slope)
    y, mean, var = triton_bn_act_forward(input, weight, bias, None, None, True, eps,
                                         negative_slope)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(), momentum,
                             input.numel() // input.shape[1])
    return y, mean, var
