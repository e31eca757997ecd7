"""A chain of conv -> BatchNorm -> activation blocks through the fused convolutions.

Block i's convolution reads block i-1's pre-normalisation output z and applies that
block's BatchNorm + activation in its prologue (fastgan.ops.conv_bn_act); its epilogue
gives the batch statistics of its own z. The per-channel scale and shift of a BatchNorm
are computed here from those statistics with plain (differentiable) torch ops on C-sized
vectors, so autograd carries the BatchNorm backward: the gradients of the statistics
flow into the producing convolution's backward. No normalised activation is written,
forward or backward, except the chain's output (affine_act: one elementwise pass).

Saved for backward: each block's input and z, that is one activation-sized tensor per
block (z_i is block i+1's input), plus per-channel vectors.

Taken when fastgan.ops.conv_bn_act.chain_enabled(x) says so: by FusedSequential
(fastgan/nn/sequential.py) for each stretch of blocks with the plain convolution after it,
and by fastgan/nn/blocks.py: run_blocks for the blocks of a traced model's run and for a
lone block module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastgan.ops import bn_act as bn_ops
from fastgan.ops.conv_bn_act import affine_act, conv_bn_act


def chainable(conv: nn.Module, bn: nn.Module | None = None) -> bool:
    """Whether a convolution (and the BatchNorm after it, if any) is what the fused
    convolution computes: groups=1, zero padding given as numbers, a BatchNorm2d (or
    BatchNormAct2d) that is not synchronised across processes."""
    return (isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.groups == 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and (bn is None or (isinstance(bn, nn.BatchNorm2d)
                                and not hasattr(bn, "process_group"))))


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _conv(x: Tensor, conv: nn.Module, dtype: torch.dtype, scale: Tensor | None,
          shift: Tensor | None, slope_in: float, stats: bool, *epilogue):
    transposed = isinstance(conv, nn.ConvTranspose2d)
    return conv_bn_act(x, _cast(conv.weight, dtype), _cast(conv.bias, dtype), scale, shift,
                       slope_in, transposed, conv.stride, conv.padding,
                       conv.output_padding if transposed else (0, 0), conv.dilation, stats,
                       *epilogue)


def _affine(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """The BatchNorm as per-channel scale and shift (differentiable in all four)."""
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(scale.dtype)
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(shift.dtype)
    return scale, shift


def fused_chain(x: Tensor, blocks: list[tuple[nn.Module, nn.BatchNorm2d, float]],
                tail: nn.Module | None = None) -> Tensor:
    """leaky(bn(conv(...))) of each (conv, bn, negative_slope) in turn, as eager computes
    it (running statistics and num_batches_tracked updated likewise), then the plain
    convolution `tail` if given (it reads the last block's output through its prologue,
    so that output is never written). The result is channels_last.

    Inference (a BatchNorm on its running statistics, no autograd) takes the epilogue
    instead: the block's convolution writes its activated output directly, as a
    BatchNorm folded into it would."""
    dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):  # the convolutions' autocast dtype
        dtype = torch.get_autocast_dtype(x.device.type)
    x = _cast(x, dtype)
    scale = shift = None
    slope_in = 0.0
    for conv, bn, slope in blocks:
        running_mean, running_var, use_batch, momentum = bn_ops.module_args(bn)
        if not use_batch and not torch.is_grad_enabled():
            x = _conv(x, conv, dtype, scale, shift, slope_in, False,
                      *_affine(bn, running_mean, running_var), slope)[0]
            scale = shift = None
            continue
        z, mean, var = _conv(x, conv, dtype, scale, shift, slope_in, use_batch)
        if use_batch:
            if running_mean is not None:
                bn_ops.update_running_stats(running_mean, running_var, mean.detach(),
                                            var.detach(), momentum, z.numel() // z.shape[1])
        else:
            mean, var = running_mean.to(mean.dtype), running_var.to(var.dtype)
        scale, shift = _affine(bn, mean, var)
        x, slope_in = z, slope
    if tail is not None:
        return _conv(x, tail, dtype, scale, shift, slope_in, False)[0]
    return x if scale is None else affine_act(x, scale, shift, slope_in)


__all__ = ["chainable", "fused_chain"]
