"""BiasAct: StyleGAN's biased activation (`fastgan.functional.bias_act`) as a module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastgan import functional
from fastgan.ops import bias_act_reference


class BiasAct(nn.Module):
    """`act(x + bias, alpha) * gain`, clamped to [-clamp, clamp] when `clamp` is given:
    `fastgan.functional.bias_act` with a learnable bias of `num_features` values along
    dimension `dim` (initialised to `bias_init`), or no bias when `num_features` is None.
    `act` is one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish;
    `alpha` and `gain` default to the activation's own (lrelu: 0.2 and sqrt(2)).
    """

    def __init__(self, num_features: int | None = None, act: str = "linear",
                 alpha: float | None = None, gain: float | None = None,
                 clamp: float | None = None, dim: int = 1, bias_init: float = 0.0) -> None:
        super().__init__()
        # the non-tensor arguments are checked now, not at the first call
        bias_act_reference.check_args(torch.empty(0), None, dim, act, alpha, gain, clamp)
        self.act, self.alpha, self.gain, self.clamp, self.dim = act, alpha, gain, clamp, dim
        self.num_features = num_features
        if num_features is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.full([int(num_features)], float(bias_init)))

    def forward(self, x: Tensor) -> Tensor:
        return functional.bias_act(x, self.bias, self.dim, self.act, self.alpha, self.gain,
                                   self.clamp)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, act={self.act!r}"
        for name in ("alpha", "gain", "clamp"):
            if getattr(self, name) is not None:
                s += f", {name}={getattr(self, name)}"
        return s + (f", dim={self.dim}" if self.dim != 1 else "")


__all__ = ["BiasAct"]
