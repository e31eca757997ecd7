"""BatchNormAct2d: nn.BatchNorm2d followed by LeakyReLU, as one fused op."""

from __future__ import annotations

from torch import Tensor, nn

from fastgan.ops import bn_act as _bn_act


class BatchNormAct2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d(num_features, ...)` then `nn.LeakyReLU(negative_slope)`, fused.

    A subclass of nn.BatchNorm2d with the same parameters, buffers and state_dict, so
    checkpoints load both ways and code that looks for BatchNorm modules finds it.
    `negative_slope=0` gives ReLU.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 negative_slope: float = 0.2, device=None, dtype=None) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        if negative_slope < 0:
            raise ValueError(f"BatchNormAct2d: negative_slope must be >= 0, got {negative_slope}")
        self.negative_slope = float(negative_slope)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        rm, rv, bn_training, factor = _bn_act.module_args(self)
        return _bn_act.batch_norm_act(input, rm, rv, self.weight, self.bias, bn_training, factor,
                                      self.eps, self.negative_slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", negative_slope={self.negative_slope}"


__all__ = ["BatchNormAct2d"]
