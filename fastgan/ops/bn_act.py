"""Fused BatchNorm2d + LeakyReLU: backend choice, and the compiled op's registration.

The compiled op (csrc/bn_act.cpp) is functional:
    fastgan::bn_act_forward(x, weight, bias, running_mean, running_var, training, eps,
                            negative_slope) -> (y, mean, var)
returns the output and the per-channel statistics used (fp32, fp64 for fp64 input);
the running-stats update is applied here, exactly as nn.BatchNorm2d does it. Its
autograd is registered in C++ next to the schema: backward saves only the input and the
statistics and recomputes x_hat and the activation mask (fastgan::bn_act_backward),
and with create_graph=True that backward is itself differentiable, so double backward
(gradient penalties) works. What is registered here are the fake kernels.

This module is where the backend is chosen (forward_with_stats); what it chose is
returned, so that a recomputation (fastgan.nn.recompute, through normalize_act) runs on
the same one. Checks and the reference are in fastgan/ops/bn_act_reference.py; the
`triton` backend in fastgan/ops/bn_act_triton.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan import _backend, _ext
from fastgan.ops.bn_act_reference import (acc_dtype, check_args, out_format,
                                          reference_forward)

OP = "bn_act"


# ---------------------------------------------------------------------------
# Registration of the compiled op: fake kernels (autograd is in csrc/bn_act.cpp).

def _register_fake_kernels() -> None:
    @torch.library.register_fake("fastgan::bn_act_forward")
    def _(x, weight, bias, running_mean, running_var, training, eps, negative_slope):
        C = x.shape[1]
        y = torch.empty_like(x, memory_format=out_format(x))
        return y, x.new_empty((C,), dtype=acc_dtype(x)), x.new_empty((C,), dtype=acc_dtype(x))

    @torch.library.register_fake("fastgan::bn_act_update_running_stats_")
    def _(running_mean, running_var, mean, var, momentum, count):
        return None

    @torch.library.register_fake("fastgan::bn_act_backward")
    def _(grad_out, x, weight, bias, mean, var, training, eps, negative_slope, output_mask):
        C = x.shape[1]
        gx = (torch.empty_like(x, memory_format=out_format(x)) if output_mask[0]
              else x.new_empty((0,)))
        wdt = weight.dtype if weight is not None else x.dtype
        bdt = bias.dtype if bias is not None else x.dtype
        gw = x.new_empty((C if output_mask[1] and weight is not None else 0,), dtype=wdt)
        gb = x.new_empty((C if output_mask[2] and bias is not None else 0,), dtype=bdt)
        return gx, gw, gb


KERNELS: tuple[str, ...] = ()
_compiled = _ext.ext_loaded() and hasattr(torch.ops.fastgan, "bn_act_forward")
if _compiled:
    _register_fake_kernels()
    KERNELS = ("cpu", "cuda") if _ext.build_info().get("cuda") else ("cpu",)
    _forward = torch.ops.fastgan.bn_act_forward.default
    _update = torch.ops.fastgan.bn_act_update_running_stats_.default
    _eager = _ext._C.bn_act_eager
_ON_DEVICE = ("cpu", "cuda")  # the compiled backends
if _backend.triton_installed():  # registered on first use: fastgan/ops/bn_act_triton.py
    KERNELS += ("triton",)


def _triton_forward():
    from fastgan.ops import bn_act_triton  # imports triton; registers the ops once
    return bn_act_triton.triton_bn_act_forward


def _run(backend: str, x: Tensor, weight: Tensor | None, bias: Tensor | None,
         running_mean: Tensor | None, running_var: Tensor | None, use_batch_stats: bool,
         eps: float, negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """The forward op of `backend` (its autograd included)."""
    if backend == "reference":
        fn = reference_forward
    elif backend == "triton":
        fn = _triton_forward()
    else:
        fn = _forward
    return fn(x, weight, bias, running_mean, running_var, use_batch_stats, eps, negative_slope)


# ---------------------------------------------------------------------------
# The op as the rest of fastgan calls it.

def update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                         momentum: float, count: int) -> None:
    """nn.BatchNorm2d's update: biased var normalises, unbiased var is tracked."""
    if _compiled:
        _update(running_mean, running_var, mean, var, momentum, count)
        return
    with torch.no_grad():
        unbiased = var * (count / (count - 1))
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def module_args(bn: torch.nn.BatchNorm2d) -> tuple[Tensor | None, Tensor | None, bool, float]:
    """nn.BatchNorm2d.forward's bookkeeping for a module `bn`: (running_mean, running_var,
    use batch statistics, momentum factor). In training it increments
    num_batches_tracked, and momentum=None gives the cumulative average 1/n."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn_training = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return (bn.running_mean if track else None, bn.running_var if track else None, bn_training,
            factor)


def forward_with_stats(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                       weight: Tensor | None, bias: Tensor | None, training: bool,
                       momentum: float, eps: float,
                       negative_slope: float) -> tuple[Tensor, Tensor, Tensor, str]:
    """batch_norm_act, also returning the statistics used (mean, biased var; fp32, or
    fp64 for fp64 input) and the backend that ran (pass it to normalize_act to recompute
    the output bitwise)."""
    check_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
               negative_slope)
    backend = _backend.select(OP, x.device, KERNELS)
    if backend in _ON_DEVICE and not torch.compiler.is_compiling():
        # what the lines below do, in one C++ call (fastgan._C.bn_act_eager)
        return (*_eager(x, weight, bias, running_mean, running_var, training, momentum, eps,
                        negative_slope), backend)
    use_batch_stats = training or running_mean is None
    stats = (None, None) if use_batch_stats else (running_mean, running_var)
    y, mean, var = _run(backend, x, weight, bias, *stats, use_batch_stats, eps, negative_slope)
    if training and running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(), momentum,
                             x.numel() // x.shape[1])
    return y, mean, var, backend


def normalize_act(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None,
                  bias: Tensor | None, eps: float, negative_slope: float,
                  backend: str) -> Tensor:
    """`leaky_relu((x - mean) / sqrt(var + eps) * weight + bias)` on `backend`, without
    autograd: with the statistics and backend forward_with_stats returned, bitwise the
    output it returned."""
    with torch.no_grad():
        return _run(backend, x, weight, bias, mean, var, False, eps, negative_slope)[0]


def batch_norm_act(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                   weight: Tensor | None = None, bias: Tensor | None = None,
                   training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                   negative_slope: float = 0.2) -> Tensor:
    """Fused `leaky_relu(batch_norm(x, ...), negative_slope)` (see fastgan.functional)."""
    return forward_with_stats(x, running_mean, running_var, weight, bias, training, momentum,
                              eps, negative_slope)[0]


__all__ = ["KERNELS", "batch_norm_act", "check_args", "forward_with_stats", "module_args",
           "normalize_act", "reference_forward", "update_running_stats"]
