"""Upsample, pad, FIR-filter, downsample (StyleGAN's `upfirdn2d`): argument checks, the
filter helpers and the pure-PyTorch reference.

Semantics are those of NVlabs' `torch_utils.ops.upfirdn2d` (StyleGAN2-ADA, StyleGAN3),
per channel of an (N, C, H, W) input:

1. upsample by inserting `up - 1` zeros after each pixel;
2. pad with zeros (`padding`, relative to the upsampled image; negative values crop);
3. convolve with the FIR filter `f` (a true convolution, i.e. the filter is flipped,
   unless `flip_filter`), keeping only outputs whose footprint lies inside the padded
   image; a 1-D filter is separable (applied along x, then y), a 2-D one is (fh, fw);
4. downsample by keeping every `down`-th pixel.

`up`, `down` are an int or [x, y]; `padding` an int, [x, y] or [x0, x1, y0, y1]. `gain`
scales the result (a separable filter takes sqrt(gain) per pass). Per axis, the output
size is (in * up + pad0 + pad1 - taps) // down + 1.

The reference is plain torch ops (zero insertion by reshape + pad, a depthwise
convolution strided by `down`), so autograd gives gradients of any order. It computes in
`x`'s dtype (the filter is cast to it) and imports no backend: the test oracle and the
`reference` backend.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------
# Argument parsing (clear one-line errors, naming the argument)

def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_scaling(scaling: int | Sequence[int], name: str = "up",
                  op: str = "upfirdn2d") -> tuple[int, int]:
    """`up` / `down` as (x, y): an int >= 1 or a pair [x, y] of them."""
    pair = [scaling, scaling] if _is_int(scaling) else scaling
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(_is_int(s) and s >= 1 for s in pair)):
        raise ValueError(f"{op}: {name} must be an int >= 1 or a pair [x, y] of them, "
                         f"got {scaling!r}")
    return int(pair[0]), int(pair[1])


def parse_padding(padding: int | Sequence[int],
                  op: str = "upfirdn2d") -> tuple[int, int, int, int]:
    """`padding` as (x0, x1, y0, y1): an int, [x, y] or [x0, x1, y0, y1] of ints."""
    if _is_int(padding):
        padding = [padding, padding]
    if (not isinstance(padding, (list, tuple)) or len(padding) not in (2, 4)
            or not all(_is_int(p) for p in padding)):
        raise ValueError(f"{op}: padding must be an int, [x, y] or [x0, x1, y0, y1] of ints, "
                         f"got {padding!r}")
    if len(padding) == 2:
        px, py = padding
        return int(px), int(px), int(py), int(py)
    return tuple(int(p) for p in padding)  # type: ignore[return-value]


def get_filter_size(f: Tensor | None, op: str = "upfirdn2d") -> tuple[int, int]:
    """(width, height) of a filter: None is 1x1, a 1-D filter of n taps is n x n."""
    if f is None:
        return 1, 1
    if not isinstance(f, Tensor) or f.ndim not in (1, 2):
        got = f"{f.ndim}-D tensor" if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"{op}: f must be a 1-D (separable) or 2-D (fh, fw) filter tensor "
                         f"or None, got {got}")
    fw, fh = int(f.shape[-1]), int(f.shape[0])
    if fw < 1 or fh < 1:
        raise ValueError(f"{op}: f is empty (shape {tuple(f.shape)})")
    return fw, fh


def check_args(x: Tensor, f: Tensor | None, up: Any, down: Any, padding: Any,
               gain: float) -> tuple[tuple[int, int], tuple[int, int],
                                     tuple[int, int, int, int]]:
    """Checks the arguments; returns (up, down, padding) parsed."""
    if not isinstance(x, Tensor):
        raise TypeError(f"upfirdn2d: x must be a Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be 4-D (N, C, H, W), got {x.ndim}-D of shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"upfirdn2d: x must be a floating-point tensor, got {x.dtype}")
    fw, fh = get_filter_size(f)
    if f is not None:
        if not f.is_floating_point():
            raise TypeError(f"upfirdn2d: f must be a floating-point tensor, got {f.dtype}")
        if f.requires_grad:
            raise ValueError("upfirdn2d: f must not require grad (gradients flow to x only); "
                             "pass f.detach()")
    upx, upy = parse_scaling(up, "up")
    downx, downy = parse_scaling(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise TypeError(f"upfirdn2d: gain must be a number, got {type(gain).__name__}")
    h, w = x.shape[2], x.shape[3]
    ph, pw = h * upy + py0 + py1, w * upx + px0 + px1
    if pw < fw or ph < fh:
        raise ValueError(f"upfirdn2d: f ({fh}x{fw}) is larger than the upsampled, padded image "
                         f"({ph}x{pw} from x {h}x{w}, up={[upx, upy]}, "
                         f"padding={[px0, px1, py0, py1]})")
    return (upx, upy), (downx, downy), (px0, px1, py0, py1)


# ---------------------------------------------------------------------------
# Reference: plain torch ops, differentiable to any order.

def upfirdn2d(x: Tensor, f: Tensor | None, up: Any = 1, down: Any = 1, padding: Any = 0,
              flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Upsample, pad, FIR-filter and downsample `x` (see the module docstring)."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = check_args(x, f, up, down, padding,
                                                                   gain)
    n, c, h, w = x.shape
    if upx > 1 or upy > 1:  # each pixel followed by up - 1 zeros, per axis
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)
    if px0 > 0 or px1 > 0 or py0 > 0 or py1 > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if px0 < 0 or px1 < 0 or py0 < 0 or py1 < 0:
        # negative pads crop, by slicing after padding: F.pad cannot crop more than the
        # side it pads from
        h, w = x.shape[2], x.shape[3]
        x = x[:, :, max(-py0, 0):h - max(-py1, 0), max(-px0, 0):w - max(-px1, 0)]
    if f is None:
        f = torch.ones(1, 1)
    f = f.to(device=x.device, dtype=x.dtype) * float(gain) ** (f.ndim / 2)
    if not flip_filter:  # conv2d correlates: flipping makes it a convolution
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f.expand(c, 1, *f.shape).contiguous()
        return F.conv2d(x, weight, stride=(downy, downx), groups=c)
    taps = f.shape[0]
    x = F.conv2d(x, f.reshape(1, 1, 1, taps).expand(c, 1, 1, taps).contiguous(),
                 stride=(1, downx), groups=c)
    return F.conv2d(x, f.reshape(1, 1, taps, 1).expand(c, 1, taps, 1).contiguous(),
                    stride=(downy, 1), groups=c)


def setup_filter(f: Any, device: torch.device | str = "cpu", normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> Tensor:
    """A float32 FIR filter for `upfirdn2d` from a tensor, array, list, scalar or None
    (identity): normalised to unit DC gain (`normalize`), flipped (`flip_filter`), scaled
    by `gain` overall. A 1-D filter stays 1-D (separable) when `separable`, or by default
    when it has 8 taps or more; otherwise it becomes its outer product, (n, n)."""
    t = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if t.ndim not in (0, 1, 2) or t.numel() == 0:
        raise ValueError(f"setup_filter: f must be a non-empty scalar, 1-D or 2-D filter, "
                         f"got shape {tuple(t.shape)}")
    t = t.reshape(1) if t.ndim == 0 else t.detach().clone()
    if separable is None:
        separable = t.ndim == 1 and t.numel() >= 8
    if t.ndim == 1 and not separable:
        t = torch.outer(t, t)
    if t.ndim != (1 if separable else 2):
        raise ValueError("setup_filter: a 2-D filter cannot be made separable "
                         f"(separable=True, f of shape {tuple(t.shape)})")
    if normalize:
        t = t / t.sum()
    if flip_filter:
        t = t.flip(list(range(t.ndim)))
    t = t * (gain ** (t.ndim / 2))
    return t.to(device=device)


__all__ = ["check_args", "get_filter_size", "parse_padding", "parse_scaling", "setup_filter",
           "upfirdn2d"]
