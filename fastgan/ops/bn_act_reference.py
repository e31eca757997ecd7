"""Fused BatchNorm2d + LeakyReLU: argument checks and the pure-PyTorch reference.

What every backend of the op shares, in a module that imports no backend:
fastgan/ops/bn_act.py (backend choice, the compiled op) and fastgan/ops/bn_act_triton.py
(the Triton op) both import it. The reference is plain torch ops, differentiable to any
order: the test oracle, the `reference` backend, and the second derivative of the
Triton op. negative_slope = 1 is the identity (a BatchNorm without activation).
"""

from __future__ import annotations

import torch
from torch import Tensor

DIMS = (0, 2, 3)


def check_args(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None, bias: Tensor | None, training: bool,
               momentum: float, eps: float, negative_slope: float) -> None:
    """Raises a clear error (naming the argument) for anything the op does not accept."""
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm_act: input must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"batch_norm_act: input must be 4-D (N, C, H, W), got {x.dim()}-D "
                         f"input of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"batch_norm_act: input must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"batch_norm_act: input is empty (shape {tuple(x.shape)})")
    C = x.shape[1]
    per_channel, device = (C,), x.device
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.shape != per_channel:
            raise ValueError(f"batch_norm_act: {name} must have shape ({C},) to match the "
                             f"input's {C} channels, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"batch_norm_act: {name} must be floating-point, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"batch_norm_act: {name} is on {t.device} but input is on {device}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_act: running_mean and running_var must both be given or "
                         "both be None")
    if training and x.numel() // C <= 1:
        raise ValueError(f"batch_norm_act: expected more than 1 value per channel when "
                         f"training, got input of shape {tuple(x.shape)}")
    if eps <= 0:
        raise ValueError(f"batch_norm_act: eps must be > 0, got {eps}")
    if negative_slope < 0:
        raise ValueError(f"batch_norm_act: negative_slope must be >= 0 (0 is ReLU), got "
                         f"{negative_slope}")
    if training and running_mean is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm_act: momentum must be in [0, 1], got {momentum}")


def acc_dtype(x: Tensor) -> torch.dtype:
    """The statistics' dtype: fp64 for fp64 input, else fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def out_format(x: Tensor) -> torch.memory_format:
    """The layout of the op's output and input gradient: channels_last for a (strictly)
    channels_last input, else NCHW."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def reference_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                      running_mean: Tensor | None, running_var: Tensor | None,
                      use_batch_stats: bool, eps: float,
                      negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var) with the same meaning as fastgan::bn_act_forward's outputs."""
    acc = acc_dtype(x)
    if use_batch_stats:
        var, mean = torch.var_mean(x.to(acc), dim=DIMS, correction=0)
    else:
        mean, var = running_mean.to(acc), running_var.to(acc)
    z = (x.to(acc) - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None]
    if weight is not None:
        z = z * weight.to(acc)[:, None, None]
    if bias is not None:
        z = z + bias.to(acc)[:, None, None]
    if negative_slope != 1.0:
        z = torch.nn.functional.leaky_relu(z, negative_slope)
    return z.to(x.dtype).contiguous(memory_format=out_format(x)), mean, var


def reference_backward(grad_out: Tensor, x: Tensor, weight: Tensor | None,
                       bias: Tensor | None, mean: Tensor, var: Tensor, training: bool,
                       eps: float, negative_slope: float
                       ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of reference_forward's y (given `grad_out`) w.r.t. x, weight and bias, as
    a differentiable graph (create_graph): the op's backward for double backward. In
    training the statistics are recomputed from x (`mean` and `var` are not used)."""
    present = [t for t in (x, weight, bias) if t is not None]
    leaves = [t if t.requires_grad else t.detach().requires_grad_() for t in present]
    with torch.enable_grad():
        args = iter(leaves)
        xi = next(args)
        wi = next(args) if weight is not None else None
        bi = next(args) if bias is not None else None
        y = reference_forward(xi, wi, bi, mean, var, training, eps, negative_slope)[0]
        grads = iter(torch.autograd.grad(y, leaves, grad_out, create_graph=True))
    gx = next(grads)
    gw = next(grads) if weight is not None else None
    gb = next(grads) if bias is not None else None
    return gx, gw, gb

__all__ = ["check_args", "acc_dtype", "out_format", "reference_forward", "reference_backward",
           "DIMS"]
