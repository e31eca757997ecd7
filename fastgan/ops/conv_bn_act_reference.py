"""Checks and the pure-PyTorch reference of the fused-convolution ops (conv_bn_act,
affine_act): the oracle of the tests and the double-backward path of the Triton ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.to(_acc(x)).view(1, -1, 1, 1)


def reference_affine_act(z: Tensor, scale: Tensor, shift: Tensor,
                         negative_slope: float) -> Tensor:
    """leaky(z * scale + shift) per channel, in the accumulation type, rounded to z's dtype."""
    u = z.to(_acc(z)) * _per_channel(scale, z) + _per_channel(shift, z)
    return F.leaky_relu(u, negative_slope).to(z.dtype)


def reference_conv_bn_act(input: Tensor, weight: Tensor, bias: Tensor | None,
                          scale: Tensor | None, shift: Tensor | None, negative_slope: float,
                          transposed: bool, stride, padding, output_padding, dilation,
                          stats: bool, out_scale: Tensor | None = None,
                          out_shift: Tensor | None = None,
                          out_slope: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(z, mean, var) of conv(affine_act(input, scale, shift)) (no prologue when scale is
    None), with z's per-channel mean and biased variance when `stats` (else empty); with
    out_scale, affine_act(z, out_scale, out_shift, out_slope) in place of z."""
    a = input if scale is None else reference_affine_act(input, scale, shift, negative_slope)
    if transposed:
        z = F.conv_transpose2d(a, weight, bias, stride, padding, output_padding, 1, dilation)
    else:
        z = F.conv2d(a, weight, bias, stride, padding, dilation)
    acc = _acc(input)
    if out_scale is not None:
        z = reference_affine_act(z, out_scale, out_shift, out_slope)
    if not stats:
        return z, input.new_empty((0,), dtype=acc), input.new_empty((0,), dtype=acc)
    zf = z.to(acc)
    return z, zf.mean((0, 2, 3)), zf.var((0, 2, 3), unbiased=False)


def check_conv_args(name: str, input: Tensor, weight: Tensor, bias: Tensor | None,
                    scale: Tensor | None, shift: Tensor | None, transposed: bool, stride,
                    padding, output_padding, dilation, stats: bool,
                    out_scale: Tensor | None = None, out_shift: Tensor | None = None) -> None:
    """Clear errors for what the kernels do not take (they would read out of bounds)."""
    if input.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"{name}: input and weight must be 4-D, got input "
                         f"{tuple(input.shape)} and weight {tuple(weight.shape)}")
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"{name}: input dtype must be float32, float16, bfloat16 or float64, "
                        f"got {input.dtype}")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise TypeError(f"{name}: weight and bias must have the input's dtype {input.dtype}, "
                        f"got weight {weight.dtype}"
                        + (f" and bias {bias.dtype}" if bias is not None else ""))
    c_in = weight.shape[0] if transposed else weight.shape[1]
    c_out = weight.shape[1] if transposed else weight.shape[0]
    if input.shape[1] != c_in:
        raise ValueError(f"{name}: input has {input.shape[1]} channels, the weight "
                         f"{tuple(weight.shape)} expects {c_in} (groups=1 only)")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"{name}: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    if (scale is None) != (shift is None):
        raise ValueError(f"{name}: scale and shift go together (the prologue), got "
                         f"scale {'None' if scale is None else 'a tensor'} and shift "
                         f"{'None' if shift is None else 'a tensor'}")
    if scale is not None and (scale.shape != (c_in,) or shift.shape != (c_in,)):
        raise ValueError(f"{name}: scale and shift must have shape ({c_in},), got "
                         f"{tuple(scale.shape)} and {tuple(shift.shape)}")
    for arg, v, lo in (("stride", stride, 1), ("padding", padding, 0),
                       ("output_padding", output_padding, 0), ("dilation", dilation, 1)):
        if len(v) != 2 or min(v) < lo:
            raise ValueError(f"{name}: {arg} must be two ints >= {lo}, got {list(v)}")
    if (out_scale is None) != (out_shift is None):
        raise ValueError(f"{name}: out_scale and out_shift go together (the epilogue)")
    if out_scale is not None and (out_scale.shape != (c_out,) or out_shift.shape != (c_out,)
                                  or stats):
        raise ValueError(f"{name}: out_scale and out_shift must have shape ({c_out},) and "
                         f"come without stats, got {tuple(out_scale.shape)}, "
                         f"{tuple(out_shift.shape)}, stats={stats}")
    if stats and input.shape[0] == 0:
        raise ValueError(f"{name}: batch statistics need a non-empty batch, got input "
                         f"{tuple(input.shape)}")
