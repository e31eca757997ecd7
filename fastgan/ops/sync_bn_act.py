"""Synchronized BatchNorm2d + LeakyReLU: statistics merged over a torch.distributed group.

The training forward is built from three differentiable pieces, so that autograd derives
the backward and the double backward (gradient penalties) from them:

    local = _LocalSums(x)                        # (2C + 1,) fp64: [sum x, sum x^2, count]
    total = all_reduce(local, "sum", group)      # torch.distributed._functional_collectives
    mean, var = merge(total)                     # a few ops on C values
    y = _NormAct(x, mean, var, weight, bias)     # fastgan's fused op, statistics given

- Forward: one all-reduce of 2C + 1 values per layer (per-channel sums and one count).
  Ranks may hold different batch sizes, or none: the merge weights each by its count.
- Backward: autograd runs _NormAct's backward (the op's backward on the chosen backend,
  fastgan.ops.bn_act.backward, in its "statistics given" form: one pass over x and dy
  that also returns the per-channel sums from which the gradients w.r.t. mean and var
  follow), then the
  all-reduce's backward, which is itself one all-reduce of 2C + 1 values, then
  _LocalSums' backward (gx += a_c + b_c * (x - mean_c), per channel). That is
  nn.SyncBatchNorm's structure: one collective each way, per-channel values only.
- Double backward: each piece's backward is differentiable when autograd records a
  graph (create_graph=True; the op's backward then takes its differentiable form), and
  the collective's backward is a collective with its own autograd, so second
  derivatives cross ranks exactly as first ones do.

Numerics: each rank computes its own mean and biased variance in the accumulation type
(fp32, fp64 for fp64 input) with torch.var_mean (Welford), then sends n * mean and
n * (var + mean^2) in fp64. The merge var = S2 / N - mean^2 loses about
1e-16 * (mean / std)^2 relatively, below what fp32 (or bf16/fp16) data can resolve for
any offset up to mean / std ~ 1e8 (an fp32 value is itself only known to 6e-8 * |mean|).
All ranks receive bitwise the same totals, so their statistics and running statistics
are identical.

The collective must be reached by every rank of the group, forward and backward, in the
same order (as with nn.SyncBatchNorm): every rank calls the layer, and every rank
backpropagates through it when one does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from fastgan import _backend
from fastgan.ops import bn_act
from fastgan.ops.bn_act_reference import acc_dtype, check_args

_DIMS = (0, 2, 3)


def group_size(process_group=None) -> int:
    """Ranks in `process_group` (the default group when None) that this process shares
    statistics with: 1 without torch.distributed, and also when this rank is not a
    member of the group (then it normalises with its own statistics)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    group = process_group if process_group is not None else dist.group.WORLD
    n = dist.get_world_size(group)
    return n if n > 0 else 1


def _c(t: Tensor) -> Tensor:
    return t[:, None, None]


class _LocalSums(torch.autograd.Function):
    """x (N, C, H, W) -> fp64 [n * mean_c (C), n * (var_c + mean_c^2) (C), n (1)], where
    n is this rank's count per channel and mean, var its biased statistics (Welford)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        C = x.shape[1]
        n = x.numel() // C if C else 0
        acc = acc_dtype(x)
        if n == 0:
            mean = x.new_zeros((C,), dtype=acc)
            sums = x.new_zeros((2 * C,), dtype=torch.float64)
        else:
            var, mean = torch.var_mean(x.to(acc), dim=_DIMS, correction=0)
            m64 = mean.double()
            sums = torch.cat([m64 * n, (var.double() + m64 * m64) * n])
        ctx.save_for_backward(x)
        ctx.mean = mean  # a constant in backward: see there
        return torch.cat([sums, sums.new_full((1,), float(n))])

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        C = x.shape[1]
        acc = acc_dtype(x)
        g_sum, g_sq = g[:C], g[C:2 * C]
        # d/dx = g_sum + 2 g_sq x, written around the local mean so that fp32 does not
        # cancel two large terms when |mean| >> std; the local mean drops out exactly,
        # so treating it as a constant keeps the second derivatives exact too
        a = (g_sum + 2 * g_sq * ctx.mean.double()).to(acc)
        b = (2 * g_sq).to(acc)
        gx = torch.addcmul(_c(a), x.to(acc) - _c(ctx.mean), _c(b))
        return gx.to(x.dtype)


class _NormAct(torch.autograd.Function):
    """y = normalize_act(x, mean, var, weight, bias), differentiable in all five (mean and
    var are the merged statistics; their gradients are per-channel sums the fused
    backward kernel returns anyway). weight / bias None: affine=False."""

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None,
                bias: Tensor | None, eps: float, negative_slope: float, backend: str) -> Tensor:
        ctx.save_for_backward(x, mean, var, weight, bias)
        ctx.eps, ctx.negative_slope, ctx.backend = eps, negative_slope, backend
        if x.numel() == 0:  # a rank without samples still takes part in the collectives
            return x.clone()
        w, b = _affine(weight, bias, mean)
        return bn_act.normalize_act(x, mean, var, w, b, eps, negative_slope, backend)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, mean, var, weight, bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        w, b = _affine(weight, bias, mean)
        if x.numel() == 0:
            gx, gw, gb = torch.zeros_like(x), torch.zeros_like(w), torch.zeros_like(b)
        else:  # with create_graph=True, differentiable in every input, mean and var too
            gx, gw, gb = bn_act.backward(g, x, w, b, mean, var, False, ctx.eps,
                                         ctx.negative_slope, [bool(need[0]), True, True],
                                         ctx.backend)
        # y depends on mean through -w * invstd per element and on var through
        # -w * x_hat * invstd^2 / 2: sums of the same dz as the affine gradients
        acc = mean.dtype
        invstd = torch.rsqrt(var + ctx.eps)
        w_acc = w.to(acc)
        g_mean = -w_acc * invstd * gb.to(acc)
        g_var = -0.5 * w_acc * invstd * invstd * gw.to(acc)
        return (gx if need[0] else None, g_mean if need[1] else None,
                g_var if need[2] else None, gw if need[3] else None,
                gb if need[4] else None, None, None, None)


def _affine(weight: Tensor | None, bias: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """weight and bias, with ones / zeros for affine=False: the fused kernels return the
    sums the statistics' gradients need only for an affine they are given."""
    w = weight if weight is not None else torch.ones_like(like)
    b = bias if bias is not None else torch.zeros_like(like)
    return w, b


def _check(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
           weight: Tensor | None, bias: Tensor | None, momentum: float, eps: float,
           negative_slope: float) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = f"{x.dim()}-D input of shape {tuple(x.shape)}" if isinstance(x, Tensor) \
            else type(x).__name__
        raise ValueError(f"sync_batch_norm_act: input must be 4-D (N, C, H, W), got {got}")
    # the shared checks, on a stand-in for a rank without samples
    probe = x if x.numel() else x.new_zeros((1, *x.shape[1:]))
    check_args(probe, running_mean, running_var, weight, bias, False, momentum, eps,
               negative_slope)
    if running_mean is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"sync_batch_norm_act: momentum must be in [0, 1], got {momentum}")


def sync_batch_norm_act(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                        weight: Tensor | None, bias: Tensor | None, momentum: float, eps: float,
                        negative_slope: float, process_group=None
                        ) -> tuple[Tensor, bn_act.Recompute]:
    """Training-mode `leaky_relu(batch_norm(x))` with the batch statistics of the whole
    `process_group` (the default group when None); every rank must call it.

    Returns (y, how to compute y again from x: fastgan.ops.bn_act.Recompute, with the
    merged statistics and the backend that ran). Running statistics, when given, are
    updated in place with the merged mean and the unbiased variance of the global count,
    identically on every rank (fastgan.ops.bn_act.update_running_stats; the count is
    read on the host, a synchronisation on CUDA)."""
    _check(x, running_mean, running_var, weight, bias, momentum, eps, negative_slope)
    import torch.distributed._functional_collectives as fc

    group = process_group if process_group is not None else dist.group.WORLD
    C = x.shape[1]
    acc = acc_dtype(x)
    total = fc.all_reduce(_LocalSums.apply(x), "sum", group)
    if isinstance(total, fc.AsyncCollectiveTensor):  # a plain tensor (autograd kept), now:
        total = total.wait()  # the statistics are needed at once, and saved-tensor hooks
        # (fastgan.nn.recompute) cannot look into the wrapper
    s1, s2, count = total[:C], total[C:2 * C], total[2 * C]
    mean64 = s1 / count
    var64 = (s2 / count - mean64 * mean64).clamp_min(0.0)
    mean, var = mean64.to(acc), var64.to(acc)
    backend = _backend.select(bn_act.OP, x.device, bn_act.KERNELS)
    y = _NormAct.apply(x, mean, var, weight, bias, eps, negative_slope, backend)
    if running_mean is not None:
        # count > 1 over the group, or the unbiased variance is undefined (as in eager)
        bn_act.update_running_stats(running_mean, running_var, mean64.detach(), var64.detach(),
                                    momentum, int(count))
    return y, bn_act.Recompute(mean, var, weight, bias, eps, negative_slope, backend)


__all__ = ["sync_batch_norm_act", "group_size"]
