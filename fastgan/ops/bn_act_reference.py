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


def update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                         momentum: float, count: int) -> None:
    """nn.BatchNorm2d's update, in place: running = (1 - momentum) * running + momentum *
    batch, with the unbiased variance (var * count / (count - 1)) tracked. The rule of
    every path written in torch ops (this reference, the Triton op, the fused chain,
    synchronized BatchNorm); the compiled op applies it in C++ in the same call as its
    kernel (csrc/bn_act.h: update_running_stats)."""
    with torch.no_grad():
        unbiased = var * (count / (count - 1))
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _normalize_act(x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor | None,
                   var: Tensor | None, negative_slope: float,
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): with the given statistics, or the batch's when they are None."""
    acc = acc_dtype(x)
    if mean is None:
        var, mean = torch.var_mean(x.to(acc), dim=DIMS, correction=0)
    else:
        mean, var = mean.to(acc), var.to(acc)
    z = (x.to(acc) - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None]
    if weight is not None:
        z = z * weight.to(acc)[:, None, None]
    if bias is not None:
        z = z + bias.to(acc)[:, None, None]
    if negative_slope != 1.0:
        z = torch.nn.functional.leaky_relu(z, negative_slope)
    return z.to(x.dtype).contiguous(memory_format=out_format(x)), mean, var


def reference_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                      running_mean: Tensor | None, running_var: Tensor | None,
                      training: bool, momentum: float, eps: float,
                      negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var) with the same meaning as fastgan::bn_act_forward's outputs, and its
    in-place update of the running statistics in training."""
    if not training:
        return _normalize_act(x, weight, bias, running_mean, running_var, negative_slope, eps)
    y, mean, var = _normalize_act(x, weight, bias, None, None, negative_slope, eps)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(), momentum,
                             x.numel() // x.shape[1])
    return y, mean, var


def reference_backward(grad_out: Tensor, x: Tensor, weight: Tensor | None,
                       bias: Tensor | None, mean: Tensor, var: Tensor, training: bool,
                       eps: float, negative_slope: float
                       ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of reference_forward's y (given `grad_out`) w.r.t. x, weight and bias, as
    differentiable functions of every argument (create_graph; the op's double backward).
    In training the statistics are recomputed from x (`mean` and `var` are not used);
    otherwise `mean` and `var` are constants of y, and the results partial derivatives
    (torch.func.vjp: where mean and var are themselves computed from x, as synchronized
    BatchNorm's are, autograd.grad would follow them back to x)."""
    present = [t for t in (x, weight, bias) if t is not None]
    stats = (None, None) if training else (mean, var)

    def y_of(*args: Tensor) -> Tensor:
        it = iter(args)
        xi = next(it)
        wi = next(it) if weight is not None else None
        bi = next(it) if bias is not None else None
        return _normalize_act(xi, wi, bi, *stats, negative_slope, eps)[0]

    _, vjp = torch.func.vjp(y_of, *present)  # (its own autograd level: runs under no_grad)
    grads = iter(vjp(grad_out))
    gx = next(grads)
    gw = next(grads) if weight is not None else None
    gb = next(grads) if bias is not None else None
    return gx, gw, gb

__all__ = ["check_args", "acc_dtype", "out_format", "reference_forward", "reference_backward",
           "update_running_stats", "DIMS"]
