"""upfirdn2d: StyleGAN's upsample, pad, FIR-filter, downsample, and its helpers.

Only the `reference` backend exists so far (fastgan/ops/upfirdn2d_reference.py, plain
torch ops): this front is where the backend choice, the registered op and its fake kernels
will go when the C++/Triton/CUDA kernels land (issue 23). Until then every call runs the
reference, whatever `fastgan.use_backend` says. `setup_filter` and the argument parsers live with
the reference; `filter2d`, `upsample2d` and `downsample2d` are `upfirdn2d` calls with
NVlabs' padding rules, here.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fastgan.ops import upfirdn2d_reference as reference
from fastgan.ops.upfirdn2d_reference import (get_filter_size, parse_padding, parse_scaling,
                                             setup_filter)

OP = "upfirdn2d"


def upfirdn2d(x: Tensor, f: Tensor | None, up: Any = 1, down: Any = 1, padding: Any = 0,
              flip_filter: bool = False, gain: float = 1) -> Tensor:
    """See fastgan.functional.upfirdn2d. Runs the reference (the only backend so far)."""
    return reference.upfirdn2d(x, f, up, down, padding, flip_filter, gain)


def filter2d(x: Tensor, f: Tensor | None, padding: Any = 0, flip_filter: bool = False,
             gain: float = 1) -> Tensor:
    """FIR-filter `x`, padded so that the output has the input's size; `padding` (relative
    to the output, negative crops) is added to that."""
    px0, px1, py0, py1 = parse_padding(padding, "filter2d")
    fw, fh = get_filter_size(f, "filter2d")
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain)


def upsample2d(x: Tensor, f: Tensor | None, up: Any = 2, padding: Any = 0,
               flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Upsample `x` by `up` with the FIR filter `f`, padded so that the output is `up`
    times the input; `padding` (relative to the output) is added to that. The gain is
    multiplied by up_x * up_y, which keeps the mean of a constant image."""
    upx, upy = parse_scaling(up, "up", "upsample2d")
    px0, px1, py0, py1 = parse_padding(padding, "upsample2d")
    fw, fh = get_filter_size(f, "upsample2d")
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2,
         py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=[upx, upy], padding=p, flip_filter=flip_filter,
                     gain=gain * upx * upy)


def downsample2d(x: Tensor, f: Tensor | None, down: Any = 2, padding: Any = 0,
                 flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Downsample `x` by `down` with the FIR filter `f`, padded so that the output is the
    input divided by `down`; `padding` (relative to the input) is added to that."""
    downx, downy = parse_scaling(down, "down", "downsample2d")
    px0, px1, py0, py1 = parse_padding(padding, "downsample2d")
    fw, fh = get_filter_size(f, "downsample2d")
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
         py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=[downx, downy], padding=p, flip_filter=flip_filter,
                     gain=gain)


__all__ = ["OP", "downsample2d", "filter2d", "get_filter_size", "parse_padding",
           "parse_scaling", "setup_filter", "upfirdn2d", "upsample2d"]
