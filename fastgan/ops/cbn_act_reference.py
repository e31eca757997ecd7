"""Conditional BatchNorm2d + LeakyReLU: argument checks and the pure-PyTorch reference.

The op normalises with batch statistics exactly as nn.BatchNorm2d(affine=False) (the
running-statistics rule is bn_act's: bn_act_reference.update_running_stats), then applies
a per-sample affine: y = leaky_relu(x_hat * scale[n, c] + shift[n, c], negative_slope),
scale and shift (N, C). What every backend shares, in a module that imports no backend:
fastgan/ops/cbn_act.py and fastgan/ops/cbn_act_triton.py both import it. The reference is
plain torch ops, differentiable to any order: the test oracle, the `reference` backend
and the second derivative of the Triton op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan.ops.bn_act_reference import DIMS, acc_dtype, out_format, update_running_stats

NAME = "conditional_batch_norm_act"


def check_args(x: Tensor, scale: Tensor, shift: Tensor, running_mean: Tensor | None,
               running_var: Tensor | None, training: bool, momentum: float, eps: float,
               negative_slope: float) -> None:
    """Raises a clear error (naming the argument) for anything the op does not accept."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{NAME}: input must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{NAME}: input must be 4-D (N, C, H, W), got {x.dim()}-D input of "
                         f"shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{NAME}: input must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{NAME}: input is empty (shape {tuple(x.shape)})")
    N, C = x.shape[:2]
    for name, t, shape in (("scale", scale, (N, C)), ("shift", shift, (N, C)),
                           ("running_mean", running_mean, (C,)),
                           ("running_var", running_var, (C,))):
        if t is None:
            if name in ("scale", "shift"):
                raise TypeError(f"{NAME}: {name} must be a Tensor of shape {shape}, got None")
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{NAME}: {name} must be a Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            what = "(batch, channels)" if len(shape) == 2 else "(channels,)"
            raise ValueError(f"{NAME}: {name} must have shape {shape} {what} to match input "
                             f"of shape {tuple(x.shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{NAME}: {name} must be floating-point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{NAME}: {name} is on {t.device} but input is on {x.device}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{NAME}: running_mean and running_var must both be given or both "
                         "be None")
    if training and x.numel() // C <= 1:
        raise ValueError(f"{NAME}: expected more than 1 value per channel when training, got "
                         f"input of shape {tuple(x.shape)}")
    if eps <= 0:
        raise ValueError(f"{NAME}: eps must be > 0, got {eps}")
    if negative_slope < 0:
        raise ValueError(f"{NAME}: negative_slope must be >= 0 (0 is ReLU), got "
                         f"{negative_slope}")
    if training and running_mean is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{NAME}: momentum must be in [0, 1], got {momentum}")


def _normalize_act(x: Tensor, scale: Tensor, shift: Tensor, mean: Tensor | None,
                   var: Tensor | None, negative_slope: float,
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): with the given statistics, or the batch's when they are None."""
    acc = acc_dtype(x)
    xa = x.to(acc)
    if mean is None:
        var, mean = torch.var_mean(xa, dim=DIMS, correction=0)
    else:
        mean, var = mean.to(acc), var.to(acc)
    xhat = (xa - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None]
    z = xhat * scale.to(acc)[:, :, None, None] + shift.to(acc)[:, :, None, None]
    if negative_slope != 1.0:
        z = torch.nn.functional.leaky_relu(z, negative_slope)
    return z.to(x.dtype).contiguous(memory_format=out_format(x)), mean, var


def reference_forward(x: Tensor, scale: Tensor, shift: Tensor, running_mean: Tensor | None,
                      running_var: Tensor | None, training: bool, momentum: float, eps: float,
                      negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var) as fastgan::cbn_act_forward's outputs, with its in-place update of the
    running statistics in training."""
    if not training:
        return _normalize_act(x, scale, shift, running_mean, running_var, negative_slope, eps)
    y, mean, var = _normalize_act(x, scale, shift, None, None, negative_slope, eps)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(), momentum,
                             x.numel() // x.shape[1])
    return y, mean, var


def reference_backward(grad_out: Tensor, x: Tensor, scale: Tensor, shift: Tensor, mean: Tensor,
                       var: Tensor, training: bool, eps: float,
                       negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of reference_forward's y (given `grad_out`) w.r.t. x, scale and shift, as
    differentiable functions of every argument (create_graph). In training the statistics
    are recomputed from x; otherwise `mean` and `var` are constants of y."""
    stats = (None, None) if training else (mean, var)

    def y_of(xi: Tensor, si: Tensor, bi: Tensor) -> Tensor:
        return _normalize_act(xi, si, bi, *stats, negative_slope, eps)[0]

    _, vjp = torch.func.vjp(y_of, x, scale, shift)
    return vjp(grad_out)


__all__ = ["NAME", "check_args", "reference_backward", "reference_forward"]
