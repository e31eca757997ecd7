"""The `triton` backend of the fused-convolution ops (the fully fused block on the GPU).

Registers, with torch.library.triton_op (torch.compile traces into the kernels):
    fastgan::triton_conv_bn_act(input, weight, bias, scale, shift, negative_slope,
        transposed, stride, padding, output_padding, dilation, stats) -> (z, mean, var)
        z = conv(leaky(input * scale + shift)) + bias, Conv2d or ConvTranspose2d, and
        with `stats` z's per-channel batch mean and biased variance from the epilogue
    fastgan::triton_conv_bn_act_backward  its gradients, given those of (z, mean, var)
    fastgan::triton_affine_act(z, scale, shift, negative_slope) -> leaky(z * scale + shift)
    fastgan::triton_affine_act_backward
with the kernels of fastgan.kernels.conv_bn_act, and their autograd: the forward saves
its input and its output z (the next block's input: one tensor per block) and the
per-channel vectors; backward recomputes the activation in the GEMM prologues. With
create_graph=True the backward is the reference composite's, differentiated by
autograd (double backward for gradient penalties).

Imported on first use by fastgan/ops/conv_bn_act.py (it imports triton).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan.kernels import conv_bn_act as K
from fastgan.ops.conv_bn_act_reference import (check_conv_args, reference_affine_act,
                                               reference_conv_bn_act)

CONV = "fastgan::triton_conv_bn_act"
CONV_BACKWARD = "fastgan::triton_conv_bn_act_backward"
AFFINE = "fastgan::triton_affine_act"
AFFINE_BACKWARD = "fastgan::triton_affine_act_backward"


@torch.library.triton_op(
    CONV, mutates_args=(),
    schema="(Tensor input, Tensor weight, Tensor? bias, Tensor? scale, Tensor? shift, "
           "float negative_slope, bool transposed, int[2] stride, int[2] padding, "
           "int[2] output_padding, int[2] dilation, bool stats, Tensor? out_scale=None, "
           "Tensor? out_shift=None, float out_slope=0.0) -> (Tensor, Tensor, Tensor)")
def triton_conv_bn_act(input: Tensor, weight: Tensor, bias: Tensor | None, scale: Tensor | None,
                       shift: Tensor | None, negative_slope: float, transposed: bool,
                       stride: list[int], padding: list[int], output_padding: list[int],
                       dilation: list[int], stats: bool, out_scale: Tensor | None = None,
                       out_shift: Tensor | None = None, out_slope: float = 0.0):
    check_conv_args(CONV, input, weight, bias, scale, shift, transposed, stride, padding,
                    output_padding, dilation, stats, out_scale, out_shift)
    return K.forward(input, weight, bias, scale, shift, negative_slope, transposed, stride,
                     padding, output_padding, dilation, stats, out_scale, out_shift, out_slope)


@torch.library.triton_op(
    CONV_BACKWARD, mutates_args=(),
    schema="(Tensor grad_out, Tensor? grad_mean, Tensor? grad_var, Tensor input, "
           "Tensor weight, Tensor? scale, Tensor? shift, float negative_slope, Tensor out, "
           "Tensor mean, bool transposed, int[2] stride, int[2] padding, int[2] dilation, "
           "bool has_bias, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
def triton_conv_bn_act_backward(grad_out: Tensor, grad_mean: Tensor | None,
                                grad_var: Tensor | None, input: Tensor, weight: Tensor,
                                scale: Tensor | None, shift: Tensor | None,
                                negative_slope: float, out: Tensor, mean: Tensor,
                                transposed: bool, stride: list[int], padding: list[int],
                                dilation: list[int], has_bias: bool, output_mask: list[bool]):
    if out.numel() > 0 and grad_out.shape != out.shape:
        raise ValueError(f"{CONV_BACKWARD}: grad_out must have the output's shape "
                         f"{tuple(out.shape)}, got {tuple(grad_out.shape)}")
    return K.backward(grad_out, grad_mean, grad_var, input, weight, scale, shift,
                      negative_slope, out, mean, transposed, stride, padding, dilation,
                      has_bias, output_mask)


def _partials(fn, primals: list[Tensor], grads):
    """Vector-Jacobian products of fn at `primals`, as differentiable functions of them
    and of `grads` (double backward). torch.func.vjp takes the primals as independent
    variables: the partial derivatives. autograd.grad would give total derivatives
    instead where one argument is computed from another (a block's scale and shift are
    functions of its input's batch statistics)."""
    outs, vjp = torch.func.vjp(fn, *primals)
    if isinstance(outs, tuple):
        grads = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads))
    return vjp(grads)


def _dtype(t: Tensor | None) -> torch.dtype | None:
    return None if t is None else t.dtype


def _conv_setup_context(ctx, inputs, output):
    (x, weight, bias, scale, shift, slope, transposed, stride, padding, output_padding,
     dilation, stats, out_scale, _out_shift, _out_slope) = inputs
    if out_scale is not None:
        raise RuntimeError(f"{CONV}: out_scale (the inference epilogue) has no backward; "
                           "call it without autograd (torch.no_grad()), or apply the "
                           "BatchNorm in the next convolution's prologue")
    z, mean, _var = output
    # z is read back only for the gradient of var (the statistics' term); without stats
    # it is not saved, and may be modified in place (an inplace LeakyReLU after it)
    ctx.save_for_backward(x, weight, bias, scale, shift, z if stats else None, mean)
    ctx.out_shape = z.shape
    ctx.args = (slope, transposed, stride, padding, output_padding, dilation, stats)


def _conv_backward(ctx, grad_z, grad_mean, grad_var):
    x, weight, bias, scale, shift, z, mean = ctx.saved_tensors
    slope, transposed, stride, padding, output_padding, dilation, stats = ctx.args
    need = ctx.needs_input_grad
    present = (True, True, bias is not None, scale is not None, shift is not None)
    mask = [bool(need[i]) and present[i] for i in range(5)]
    if grad_z is None:
        grad_z = x.new_zeros(ctx.out_shape)
    if z is None:
        z = x.new_empty((0,))
    if torch.is_grad_enabled():  # create_graph=True: differentiate the reference
        ins = (x, weight, bias, scale, shift)

        def ref(*present):
            it = iter(present)
            args = [next(it) if m else t for t, m in zip(ins, mask)]
            return reference_conv_bn_act(*args, slope, transposed, stride, padding,
                                         output_padding, dilation, stats)
        grads = iter(_partials(ref, [t for t, m in zip(ins, mask) if m],
                               (grad_z, grad_mean, grad_var)))
        res = [next(grads) if m else None for m in mask]
        return (*res, *[None] * 10)
    gx, gw, gb, gs, gt = triton_conv_bn_act_backward(
        grad_z, grad_mean if stats else None, grad_var if stats else None, x, weight, scale,
        shift, slope, z, mean, transposed, stride, padding, dilation, bias is not None, mask)
    dtypes = (x.dtype, weight.dtype, weight.dtype, _dtype(scale), _dtype(shift))
    res = [g.to(dt) if m else None for g, m, dt in zip((gx, gw, gb, gs, gt), mask, dtypes)]
    return (*res, *[None] * 10)


triton_conv_bn_act.register_autograd(_conv_backward, setup_context=_conv_setup_context)


@torch.library.triton_op(
    AFFINE, mutates_args=(),
    schema="(Tensor z, Tensor scale, Tensor shift, float negative_slope) -> Tensor")
def triton_affine_act(z: Tensor, scale: Tensor, shift: Tensor, negative_slope: float) -> Tensor:
    if z.dim() != 4 or scale.shape != (z.shape[1],) or shift.shape != (z.shape[1],):
        raise ValueError(f"{AFFINE}: z must be 4-D and scale, shift of shape "
                         f"({z.shape[1] if z.dim() > 1 else '?'},), got z {tuple(z.shape)}, "
                         f"scale {tuple(scale.shape)}, shift {tuple(shift.shape)}")
    return K.affine_act(z, scale, shift, negative_slope)


@torch.library.triton_op(
    AFFINE_BACKWARD, mutates_args=(),
    schema="(Tensor grad_out, Tensor z, Tensor scale, Tensor shift, float negative_slope) "
           "-> (Tensor, Tensor, Tensor)")
def triton_affine_act_backward(grad_out: Tensor, z: Tensor, scale: Tensor, shift: Tensor,
                               negative_slope: float):
    return K.affine_act_backward(grad_out, z, scale, shift, negative_slope)


def _affine_setup_context(ctx, inputs, output):
    z, scale, shift, slope = inputs
    ctx.save_for_backward(z, scale, shift)
    ctx.slope = slope


def _affine_backward(ctx, grad_y):
    z, scale, shift = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        need = ctx.needs_input_grad[:3]
        ins = (z, scale, shift)

        def ref(*present):
            it = iter(present)
            return reference_affine_act(*[next(it) if m else t for t, m in zip(ins, need)],
                                        ctx.slope)
        grads = iter(_partials(ref, [t for t, m in zip(ins, need) if m], grad_y))
        return (*[next(grads) if m else None for m in need], None)
    gz, gs, gt = triton_affine_act_backward(grad_y, z, scale, shift, ctx.slope)
    need = ctx.needs_input_grad
    return (gz if need[0] else None, gs.to(scale.dtype) if need[1] else None,
            gt.to(shift.dtype) if need[2] else None, None)


triton_affine_act.register_autograd(_affine_backward, setup_context=_affine_setup_context)
