"""Functional API of fastgan's fused ops."""

from __future__ import annotations

from torch import Tensor

from fastgan.ops import bn_act as _bn_act


def batch_norm_act(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                   weight: Tensor | None = None, bias: Tensor | None = None,
                   training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                   negative_slope: float = 0.2) -> Tensor:
    """`leaky_relu(batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
    eps), negative_slope)` as one fused op; `negative_slope=0` is ReLU.

    Same semantics as torch.nn.functional.batch_norm: in training (or when the running
    stats are None) batch statistics normalise, and running stats, when given, are
    updated in place with `momentum` and the unbiased variance. Statistics are computed
    in fp32 (fp64 for fp64 input). Backward saves only `x` and per-channel statistics.
    """
    return _bn_act.batch_norm_act(x, running_mean, running_var, weight, bias, training,
                                  momentum, eps, negative_slope)


__all__ = ["batch_norm_act"]
