"""Fused BatchNorm2d + LeakyReLU: the op as the rest of fastgan calls it, and its backend choice.

Every backend's forward has one schema, aten::native_batch_norm's plus the slope:

    bn_act_forward(x, weight, bias, running_mean(a!)?, running_var(b!)?, training, momentum,
                   eps, negative_slope) -> (y, mean, var)

training=True normalises with the batch statistics and, when running statistics are
given, updates them in place in the same call (nn.BatchNorm2d's rule); training=False
normalises with the running statistics. mean and var are the statistics used (biased
var; fp32, fp64 for fp64 input). The backends:

    cpu, cuda   fastgan::bn_act_forward / bn_act_backward: csrc/bn_act.cpp (schemas, the
                one C++ autograd), csrc/bn_act.h (kernel, then the running-statistics
                update), kernels in csrc/cpu/ and csrc/cuda/; fake kernels registered here
    triton      fastgan::triton_bn_act_forward / _backward: fastgan/ops/bn_act_triton.py
                (its `forward` adds the update: triton ops with autograd are functional)
    reference   reference_forward / reference_backward: fastgan/ops/bn_act_reference.py
                (also the argument checks and the running-statistics rule in torch ops)

The backend is chosen here, once per call (forward_with_stats), which returns with the
output a `Recompute`: the same output again from the same input, on the same backend
(fastgan.nn.recompute keeps the input and that instead of the output), so the backend
never leaves this module. `backward` is the op's backward on a given backend
(fastgan/ops/sync_bn_act.py differentiates through it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan import _backend, _ext
from fastgan.ops.bn_act_reference import (acc_dtype, check_args, out_format,
                                          reference_backward, reference_forward,
                                          update_running_stats)

OP = "bn_act"


# ---------------------------------------------------------------------------
# The compiled op: fake kernels (schemas and autograd are in csrc/bn_act.cpp).

def _register_fake_kernels() -> None:
    @torch.library.register_fake("fastgan::bn_act_forward")
    def _(x, weight, bias, running_mean, running_var, training, momentum, eps, negative_slope):
        C = x.shape[1]
        y = torch.empty_like(x, memory_format=out_format(x))
        return y, x.new_empty((C,), dtype=acc_dtype(x)), x.new_empty((C,), dtype=acc_dtype(x))

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
    _compiled_forward = torch.ops.fastgan.bn_act_forward.default
    _compiled_backward = torch.ops.fastgan.bn_act_backward.default
    # the same op, called from C++ without torch.ops' boxed call (csrc/fastgan.cpp)
    _eager = _ext.fast_path("bn_act_eager")
_ON_DEVICE = ("cpu", "cuda")  # the compiled backends
if _backend.triton_installed():  # registered on first use: fastgan/ops/bn_act_triton.py
    KERNELS += ("triton",)


def _triton():
    from fastgan.ops import bn_act_triton  # imports triton; registers the ops once
    return bn_act_triton


def _forward_op(backend: str):
    """The forward op of `backend` (its autograd included)."""
    if backend == "reference":
        return reference_forward
    if backend == "triton":
        return _triton().forward
    return _compiled_forward


# ---------------------------------------------------------------------------
# The op as the rest of fastgan calls it.

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


def normalize_act(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None,
                  bias: Tensor | None, eps: float, negative_slope: float,
                  backend: str) -> Tensor:
    """`leaky_relu((x - mean) / sqrt(var + eps) * weight + bias)` on `backend`, without
    autograd: the forward with the statistics given."""
    with torch.no_grad():
        return _forward_op(backend)(x, weight, bias, mean, var, False, 0.0, eps,
                                    negative_slope)[0]


class Recompute:
    """A forward's output, computed again from its input: the statistics the forward
    used, its affine parameters (detached) and the backend that ran, so that the result
    is bitwise the output it returned."""

    __slots__ = ("mean", "var", "weight", "bias", "eps", "slope", "backend")

    def __init__(self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
                 eps: float, slope: float, backend: str) -> None:
        self.mean, self.var = mean.detach(), var.detach()
        # the affine parameters it reads (detached: they share the parameters' version
        # counters, which fastgan.nn.recompute checks)
        self.weight = weight.detach() if weight is not None else None
        self.bias = bias.detach() if bias is not None else None
        self.eps, self.slope, self.backend = eps, slope, backend

    def __call__(self, x: Tensor) -> Tensor:
        return normalize_act(x, self.mean, self.var, self.weight, self.bias, self.eps,
                             self.slope, self.backend)


def _forward(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
             weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
             eps: float, negative_slope: float) -> tuple[Tensor, Tensor, Tensor, str]:
    """(y, mean, var, the backend that ran): the checks, the backend choice, the op."""
    check_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
               negative_slope)
    backend = _backend.select(OP, x.device, KERNELS)
    op = (_eager if backend in _ON_DEVICE and not torch.compiler.is_compiling()
          else _forward_op(backend))
    y, mean, var = op(x, weight, bias, running_mean, running_var,
                      training or running_mean is None, momentum, eps, negative_slope)
    return y, mean, var, backend


def forward_with_stats(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                       weight: Tensor | None, bias: Tensor | None, training: bool,
                       momentum: float, eps: float,
                       negative_slope: float) -> tuple[Tensor, Recompute]:
    """batch_norm_act, also returning how to compute its output again (Recompute)."""
    y, mean, var, backend = _forward(x, running_mean, running_var, weight, bias, training,
                                     momentum, eps, negative_slope)
    return y, Recompute(mean, var, weight, bias, eps, negative_slope, backend)


def batch_norm_act(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                   weight: Tensor | None = None, bias: Tensor | None = None,
                   training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                   negative_slope: float = 0.2) -> Tensor:
    """Fused `leaky_relu(batch_norm(x, ...), negative_slope)` (see fastgan.functional)."""
    return _forward(x, running_mean, running_var, weight, bias, training, momentum, eps,
                    negative_slope)[0]


def backward(grad_out: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None,
             mean: Tensor, var: Tensor, training: bool, eps: float, negative_slope: float,
             output_mask: list[bool], backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of the forward on `backend`; with training=False, for the
    statistics given (their own gradients are the caller's). With grad mode on
    (create_graph=True) the result is differentiable in every tensor argument, mean and
    var included: the compiled op's C++ autograd takes its differentiable form; the Triton
    and reference backends the reference's."""
    if backend == "reference" or (backend == "triton" and torch.is_grad_enabled()):
        return reference_backward(grad_out, x, weight, bias, mean, var, training, eps,
                                  negative_slope)
    op = _triton().triton_bn_act_backward if backend == "triton" else _compiled_backward
    return op(grad_out, x, weight, bias, mean, var, training, eps, negative_slope, output_mask)


__all__ = ["KERNELS", "OP", "Recompute", "backward", "batch_norm_act", "check_args",
           "forward_with_stats", "module_args", "normalize_act", "reference_forward",
           "update_running_stats"]
