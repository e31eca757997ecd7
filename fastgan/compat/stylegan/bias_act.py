"""NVlabs' `torch_utils.ops.bias_act` (StyleGAN2-ADA, StyleGAN3) on fastgan's op: the same
function, arguments (`impl=` accepted and ignored), defaults and `activation_funcs`
(entries with `.func`, `.def_alpha`, `.def_gain`, `.cuda_idx`, `.ref`, `.has_2nd_grad`,
readable as attributes or keys)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fastgan import functional
from fastgan.ops.bias_act import ACTIVATIONS, Activation


class EasyDict(dict):
    """A dict whose keys read as attributes too (what dnnlib.EasyDict does)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


def _entry(spec: Activation) -> EasyDict:
    def func(x: Tensor, alpha: float = spec.def_alpha, **_: Any) -> Tensor:
        return spec.func(x, float(alpha))

    return EasyDict(func=func, def_alpha=spec.def_alpha, def_gain=spec.def_gain,
                    cuda_idx=spec.cuda_idx, ref=spec.ref, has_2nd_grad=spec.has_2nd_grad)


activation_funcs: dict[str, EasyDict] = {name: _entry(s) for name, s in ACTIVATIONS.items()}


def bias_act(x: Tensor, b: Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None, impl: str = "cuda") -> Tensor:
    """Fused bias and activation: `act(x + b, alpha) * gain`, clamped to [-clamp, clamp]
    when `clamp` is given (fastgan.functional.bias_act). `impl` is ignored."""
    return functional.bias_act(x, b, dim, act, alpha, gain, clamp)


__all__ = ["activation_funcs", "bias_act", "EasyDict"]
