"""upfirdn2d: StyleGAN's upsample, pad, FIR-filter, downsample; backend choice, the
compiled op's registration, and the helpers.

The compiled op (csrc/upfirdn2d.cpp) is
    fastgan::upfirdn2d(x, f, up, down, padding, flip_filter, gain) -> y
with a 2-D filter, up / down as [x, y] and padding as [x0, x1, y0, y1]. A separable
(1-D) filter runs as two calls, along x then along y, each with sqrt(gain), as NVlabs'
plugin does. Its autograd (C++, beside the schema) keeps only the filter: the gradient is
an upfirdn2d of the incoming gradient, so gradients of any order run the kernels. The
`triton` backend (fastgan/ops/upfirdn2d_triton.py, kernels/upfirdn2d.py) has the same
schema; the `reference` backend is fastgan/ops/upfirdn2d_reference.py (a zero-stuffed
depthwise convolution), where the checks, `setup_filter` and the argument parsers live.
`filter2d`, `upsample2d` and `downsample2d` are upfirdn2d calls with NVlabs' padding
rules, here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fastgan import _backend, _ext
from fastgan.ops import upfirdn2d_reference as reference
from fastgan.ops.upfirdn2d_reference import (check_args, get_filter_size, parse_padding,
                                             parse_scaling, setup_filter)

OP = "upfirdn2d"


def out_size(x: Tensor, fh: int, fw: int, up, down, padding) -> tuple[int, int]:
    """(OH, OW) of an upfirdn2d call with a (fh, fw) filter (csrc/upfirdn2d_checks.h)."""
    oh = (x.shape[2] * up[1] + padding[2] + padding[3] - fh) // down[1] + 1
    ow = (x.shape[3] * up[0] + padding[0] + padding[1] - fw) // down[0] + 1
    return oh, ow


def _register_compiled() -> None:
    @torch.library.register_fake("fastgan::upfirdn2d")
    def _(x, f, up, down, padding, flip_filter, gain):
        oh, ow = out_size(x, f.shape[0], f.shape[1], up, down, padding)
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format
        return x.new_empty((x.shape[0], x.shape[1], oh, ow)).contiguous(memory_format=fmt)


KERNELS: tuple[str, ...] = ()
if _ext.ext_loaded() and hasattr(torch.ops.fastgan, "upfirdn2d"):
    _register_compiled()
    KERNELS = ("cpu", "cuda") if _ext.build_info().get("cuda") else ("cpu",)
    _op = torch.ops.fastgan.upfirdn2d.default
if _backend.triton_installed():  # registered on first use: fastgan/ops/upfirdn2d_triton.py
    KERNELS += ("triton",)


def _triton_op():
    from fastgan.ops import upfirdn2d_triton  # imports triton; registers the op once
    return upfirdn2d_triton.triton_upfirdn2d


def upfirdn2d(x: Tensor, f: Tensor | None, up: Any = 1, down: Any = 1, padding: Any = 0,
              flip_filter: bool = False, gain: float = 1) -> Tensor:
    """See fastgan.functional.upfirdn2d."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = check_args(x, f, up, down, padding,
                                                                   gain)
    backend = _backend.select(OP, x.device, KERNELS)
    if backend == "reference":
        return reference.upfirdn2d(x, f, up, down, padding, flip_filter, gain)
    op = _triton_op() if backend == "triton" else _op
    flip, gain = bool(flip_filter), float(gain)
    if f is None:
        f = torch.ones(1, 1, device=x.device)
    f = f.to(x.device)
    if f.ndim == 1:  # separable: along x, then along y
        g = math.sqrt(gain)
        x = op(x, f.unsqueeze(0), [upx, 1], [downx, 1], [px0, px1, 0, 0], flip, g)
        return op(x, f.unsqueeze(1), [1, upy], [1, downy], [0, 0, py0, py1], flip, g)
    return op(x, f, [upx, upy], [downx, downy], [px0, px1, py0, py1], flip, gain)


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


__all__ = ["KERNELS", "OP", "downsample2d", "filter2d", "get_filter_size", "out_size",
           "parse_padding", "parse_scaling", "setup_filter", "upfirdn2d", "upsample2d"]
