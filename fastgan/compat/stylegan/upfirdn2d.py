"""NVlabs' `torch_utils.ops.upfirdn2d` (StyleGAN2-ADA, StyleGAN3) on fastgan's op: the same
functions, arguments (`impl=` accepted and ignored) and defaults, and the helpers that
StyleGAN's conv2d_resample imports, `_get_filter_size(f)` -> (fw, fh) and
`_parse_padding(padding)` -> (x0, x1, y0, y1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastgan import functional
from fastgan.ops.upfirdn2d import get_filter_size, parse_padding, parse_scaling

# NVlabs' names for them (underscored there, but read by other modules of StyleGAN)
_get_filter_size = get_filter_size
_parse_padding = parse_padding
_parse_scaling = parse_scaling


def setup_filter(f: Any, device: torch.device = torch.device("cpu"), normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> Tensor:
    """A float32 FIR filter for `upfirdn2d` (fastgan.functional.setup_filter)."""
    return functional.setup_filter(f, device, normalize, flip_filter, gain, separable)


def upfirdn2d(x: Tensor, f: Tensor | None, up: Any = 1, down: Any = 1, padding: Any = 0,
              flip_filter: bool = False, gain: float = 1, impl: str = "cuda") -> Tensor:
    """Upsample, pad, FIR-filter and downsample (fastgan.functional.upfirdn2d). `impl` is
    ignored."""
    return functional.upfirdn2d(x, f, up, down, padding, flip_filter, gain)


def filter2d(x: Tensor, f: Tensor | None, padding: Any = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = "cuda") -> Tensor:
    """FIR filtering keeping the size (fastgan.functional.filter2d). `impl` is ignored."""
    return functional.filter2d(x, f, padding, flip_filter, gain)


def upsample2d(x: Tensor, f: Tensor | None, up: Any = 2, padding: Any = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = "cuda") -> Tensor:
    """FIR upsampling (fastgan.functional.upsample2d). `impl` is ignored."""
    return functional.upsample2d(x, f, up, padding, flip_filter, gain)


def downsample2d(x: Tensor, f: Tensor | None, down: Any = 2, padding: Any = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = "cuda") -> Tensor:
    """FIR downsampling (fastgan.functional.downsample2d). `impl` is ignored."""
    return functional.downsample2d(x, f, down, padding, flip_filter, gain)


__all__ = ["downsample2d", "filter2d", "setup_filter", "upfirdn2d", "upsample2d"]
