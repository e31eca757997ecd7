"""Fused BatchNorm2d + LeakyReLU: validation, reference, registration, backend choice.

The compiled op (csrc/bn_act.cpp) is functional:
    fastgan::bn_act_forward(x, weight, bias, running_mean, running_var, training, eps,
                            negative_slope) -> (y, mean, var)
returns the output and the per-channel statistics used (fp32, fp64 for fp64 input);
the running-stats update is applied here, exactly as nn.BatchNorm2d does it.
Backward saves only the input and the statistics, and recomputes x_hat and the
activation mask (fastgan::bn_act_backward). With create_graph=True the backward is
a differentiable composite of torch ops, so double backward works. Autograd is
registered on the op (torch.library.register_autograd: what torch.compile and opcheck
see); eager callers with gradients go through _EagerAutograd, a plain
torch.autograd.Function with the same setup and backward and a fraction of the
per-call cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan import _backend, _ext

OP = "bn_act"
_DIMS = (0, 2, 3)


# ---------------------------------------------------------------------------
# Validation (clear errors, naming the argument)

def check_args(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None, bias: Tensor | None, training: bool,
               momentum: float, eps: float, negative_slope: float) -> None:
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
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dim() != 1 or t.shape[0] != C:
            raise ValueError(f"batch_norm_act: {name} must have shape ({C},) to match the "
                             f"input's {C} channels, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"batch_norm_act: {name} must be floating-point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"batch_norm_act: {name} is on {t.device} but input is on {x.device}")
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


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# Reference: plain torch ops, differentiable to any order. The test oracle and the
# `reference` backend.

def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x.to(_acc_dtype(x)), dim=_DIMS, correction=0)
    return mean, var


def _normalize_act(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None,
                   bias: Tensor | None, eps: float, negative_slope: float) -> Tensor:
    acc = _acc_dtype(x)
    xhat = (x.to(acc) - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None]
    z = xhat
    if weight is not None:
        z = z * weight.to(acc)[:, None, None]
    if bias is not None:
        z = z + bias.to(acc)[:, None, None]
    return torch.nn.functional.leaky_relu(z, negative_slope).to(x.dtype)


def reference_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                      running_mean: Tensor | None, running_var: Tensor | None,
                      use_batch_stats: bool, eps: float,
                      negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var) with the same meaning as fastgan::bn_act_forward's outputs."""
    acc = _acc_dtype(x)
    if use_batch_stats:
        mean, var = _batch_stats(x)
    else:
        mean, var = running_mean.to(acc), running_var.to(acc)
    y = _normalize_act(x, mean, var, weight, bias, eps, negative_slope)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)
    return y, mean, var


def update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                         momentum: float, count: int) -> None:
    """nn.BatchNorm2d's update: biased var normalises, unbiased var is tracked."""
    if HAVE_UPDATE_OP:
        torch.ops.fastgan.bn_act_update_running_stats_(running_mean, running_var, mean, var,
                                                       momentum, count)
        return
    with torch.no_grad():
        unbiased = var * (count / (count - 1))
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _composite_backward(grad_out: Tensor, x: Tensor, weight: Tensor | None,
                        bias: Tensor | None, mean: Tensor, var: Tensor, training: bool,
                        eps: float, negative_slope: float):
    """The backward formula in differentiable torch ops (for create_graph=True).

    In training the statistics are recomputed from x so that their dependence on x
    is part of the graph; the activation mask is piecewise constant.
    """
    acc = _acc_dtype(x)
    if training:
        mean, var = _batch_stats(x)
    invstd = torch.rsqrt(var + eps)[:, None, None]
    xhat = (x.to(acc) - mean[:, None, None]) * invstd
    w = weight.to(acc)[:, None, None] if weight is not None else None
    z = xhat * w if w is not None else xhat
    if bias is not None:
        z = z + bias.to(acc)[:, None, None]
    dz = grad_out.to(acc) * torch.where(z > 0, z.new_ones(()), negative_slope)  # slope in acc
    sum_dz = dz.sum(_DIMS)
    sum_dz_xhat = (dz * xhat).sum(_DIMS)
    g = dz
    if training:
        m = x.numel() // x.shape[1]
        g = dz - sum_dz[:, None, None] / m - xhat * (sum_dz_xhat[:, None, None] / m)
    gx = g * invstd * (w if w is not None else 1.0)
    gw = sum_dz_xhat.to(weight.dtype) if weight is not None else None
    gb = sum_dz.to(bias.dtype) if bias is not None else None
    return gx.to(x.dtype), gw, gb


# ---------------------------------------------------------------------------
# Registration of the compiled op: fake kernels and autograd.

def _out_format(x: Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def make_autograd(backward_op):
    """(setup_context, backward) for a bn_act forward op whose backward kernel is
    `backward_op` (same schema as fastgan::bn_act_backward). Saves the input and the
    statistics only; create_graph=True goes through the differentiable composite."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, _rm, _rv, training, eps, negative_slope = inputs
        _y, mean, var = output
        ctx.save_for_backward(x, weight, bias, mean, var)
        ctx.training, ctx.eps, ctx.negative_slope = training, eps, negative_slope
        ctx.mark_non_differentiable(mean, var)

    def backward(ctx, grad_out, _gmean, _gvar):
        x, weight, bias, mean, var = ctx.saved_tensors
        need = ctx.needs_input_grad
        if grad_out is None:
            return (None,) * 8
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable
            gx, gw, gb = _composite_backward(grad_out, x, weight, bias, mean, var,
                                             ctx.training, ctx.eps, ctx.negative_slope)
        else:
            mask = [bool(need[0]), bool(need[1] and weight is not None),
                    bool(need[2] and bias is not None)]
            gx, gw, gb = backward_op(grad_out, x, weight, bias, mean, var, ctx.training,
                                     ctx.eps, ctx.negative_slope, mask)
        return (gx if need[0] else None,
                gw if need[1] and weight is not None else None,
                gb if need[2] and bias is not None else None,
                None, None, None, None, None)

    return setup_context, backward


def _register_compiled() -> None:
    @torch.library.register_fake("fastgan::bn_act_forward")
    def _(x, weight, bias, running_mean, running_var, training, eps, negative_slope):
        C = x.shape[1]
        y = torch.empty_like(x, memory_format=_out_format(x))
        return y, x.new_empty((C,), dtype=_acc_dtype(x)), x.new_empty((C,), dtype=_acc_dtype(x))

    @torch.library.register_fake("fastgan::bn_act_update_running_stats_")
    def _(running_mean, running_var, mean, var, momentum, count):
        return None

    @torch.library.register_fake("fastgan::bn_act_backward")
    def _(grad_out, x, weight, bias, mean, var, training, eps, negative_slope, output_mask):
        C = x.shape[1]
        gx = (torch.empty_like(x, memory_format=_out_format(x)) if output_mask[0]
              else x.new_empty((0,)))
        wdt = weight.dtype if weight is not None else x.dtype
        bdt = bias.dtype if bias is not None else x.dtype
        gw = x.new_empty((C if output_mask[1] and weight is not None else 0,), dtype=wdt)
        gb = x.new_empty((C if output_mask[2] and bias is not None else 0,), dtype=bdt)
        return gx, gw, gb

    setup_context, backward = make_autograd(torch.ops.fastgan.bn_act_backward)
    torch.library.register_autograd("fastgan::bn_act_forward", backward,
                                    setup_context=setup_context)

    class EagerAutograd(torch.autograd.Function):
        """The same autograd as the registration above, for eager callers: the op's
        registered autograd wrapper costs ~40 us per call in Python (torch.library's
        fill_defaults alone ~17 us), a visible share of a small layer's step."""

        # forward(ctx, ...) rather than a separate setup_context: with one, apply() binds
        # its arguments through inspect.signature on every call (~40 us)
        @staticmethod
        def forward(ctx, *inputs):
            with torch._C._AutoDispatchBelowAutograd():
                out = torch.ops.fastgan.bn_act_forward.default(*inputs)
            setup_context(ctx, inputs, out)
            return out

    EagerAutograd.backward = staticmethod(backward)
    global _EagerAutograd
    _EagerAutograd = EagerAutograd


KERNELS: tuple[str, ...] = ()
HAVE_UPDATE_OP = False
_EagerAutograd = None  # set by _register_compiled
_train_eager = None  # fastgan._C.bn_act_train_eager: forward_with_stats' eager fast path
if _ext.ext_loaded() and hasattr(torch.ops.fastgan, "bn_act_forward"):
    _register_compiled()
    HAVE_UPDATE_OP = True
    if hasattr(_ext._C, "bn_act_train_eager"):
        _ext._C.bn_act_set_composite(_composite_backward)
        _train_eager = _ext._C.bn_act_train_eager
    KERNELS = ("cpu", "cuda") if _ext.build_info().get("cuda") else ("cpu",)
if _backend._triton_installed():  # registered on first use: fastgan/ops/bn_act_triton.py
    KERNELS += ("triton",)


def _triton_forward():
    from fastgan.ops import bn_act_triton  # imports triton; registers the ops once
    return bn_act_triton.triton_bn_act_forward


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


def forward_with_stats(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                       weight: Tensor | None, bias: Tensor | None, training: bool,
                       momentum: float, eps: float, negative_slope: float,
                       contiguous_out: bool = False) -> tuple[Tensor, Tensor, Tensor, str]:
    """batch_norm_act, also returning the statistics used (mean, biased var; fp32, or
    fp64 for fp64 input) and the backend that ran (blocks recompute with the same one).
    `contiguous_out`: y NCHW-contiguous whatever x's layout (the CPU kernel writes a
    channels_last x's output so directly on the eager fast path)."""
    fast = _train_eager
    if fast is not None and not torch.compiler.is_compiling():
        # the common case in one C++ call (csrc/bn_act_eager.cpp), else None
        out = fast(x, weight, bias, running_mean, running_var, training, momentum, eps,
                   negative_slope, _backend._stack, contiguous_out)
        if out is not None:
            return out[0], out[1], out[2], x.device.type
    check_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
               negative_slope)
    use_batch_stats = training or running_mean is None
    backend = _backend.select(OP, x.device, KERNELS)
    rm = None if use_batch_stats else running_mean
    rv = None if use_batch_stats else running_var
    if backend == "reference":
        y, mean, var = reference_forward(x, weight, bias, rm, rv, use_batch_stats, eps,
                                         negative_slope)
    elif backend == "triton":
        y, mean, var = _triton_forward()(x, weight, bias, rm, rv, use_batch_stats, eps,
                                         negative_slope)
    elif (torch.is_grad_enabled() and not torch.compiler.is_compiling()
          and (x.requires_grad or (weight is not None and weight.requires_grad)
               or (bias is not None and bias.requires_grad))):
        y, mean, var = _EagerAutograd.apply(x, weight, bias, rm, rv, use_batch_stats, eps,
                                            negative_slope)
    elif torch.compiler.is_compiling():
        y, mean, var = torch.ops.fastgan.bn_act_forward(x, weight, bias, rm, rv, use_batch_stats,
                                                        eps, negative_slope)
    else:  # nothing to differentiate: past the registered autograd wrapper (~25 us)
        with torch._C._AutoDispatchBelowAutograd():
            y, mean, var = torch.ops.fastgan.bn_act_forward.default(
                x, weight, bias, rm, rv, use_batch_stats, eps, negative_slope)
    if training and running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(), momentum,
                             x.numel() // x.shape[1])
    if contiguous_out:
        y = y.contiguous()
    return y, mean, var, backend


def batch_norm_act(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                   weight: Tensor | None = None, bias: Tensor | None = None,
                   training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                   negative_slope: float = 0.2) -> Tensor:
    """Fused `leaky_relu(batch_norm(x, ...), negative_slope)` (see fastgan.functional)."""
    return forward_with_stats(x, running_mean, running_var, weight, bias, training, momentum,
                              eps, negative_slope)[0]
